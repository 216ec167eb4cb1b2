"""Write the fields of view that the DeepProfiler reference is computed on.

Deterministic (seeded). Needs only numpy and tifffile (plus Pillow or imagecodecs to decode
the LZW-compressed real sample), so it runs in either venv.

Sites (all 5 Cell Painting channels, one single-page uncompressed TIFF per channel):

* ``synth-520x696``   uint16, H=520 W=696 (non-square: catches H/W swaps); its locations
  CSV has an extra column and Y before X, so readers must select columns by name.
* ``synth-flat-520x696`` uint16, same size; ER is constant and AGP all zero, exercising the
  ``max - min + eps`` normalisation of flat crops (and of zero-filled border crops).
* ``synth-1080x1080`` uint16 with saturated pixels in Mito.
* ``synth8-301x403``  uint8, odd sizes.
* ``synth8in16-520x696`` 8-bit data in 16-bit TIFFs (values 0..255) with saturated (255) nuclei
  and cytoplasm, as microscopes that write 8-bit cameras into 16-bit files produce.
* ``pcatlas-BR00143976-C03-s3`` the real 16-bit Opera Phenix site, re-written uncompressed
  (DeepProfiler's skimage/tifffile cannot decode LZW without imagecodecs) with its 41
  nucleus centres plus border locations inserted at seeded positions.

Every synthetic site has nuclei near each edge, exactly on edges and corners, and centred
outside the image with the 128 px box still overlapping it; no box lies entirely outside.

Output: OUTDIR/sites/{id}/{DNA,RNA,ER,AGP,Mito}.tif, OUTDIR/sites/{id}/locations.csv and
OUTDIR/index.json (paths relative to OUTDIR) plus the same as OUTDIR/index.csv.

Usage: python make_inputs.py OUTDIR [--real-site DIR]
"""

import argparse
import csv
import json
import os

import numpy as np
import tifffile

CHANNELS = ["DNA", "RNA", "ER", "AGP", "Mito"]
X_KEY = "Nuclei_Location_Center_X"
Y_KEY = "Nuclei_Location_Center_Y"
SEED = 1729
# The copy committed with the repository (also in ../shared/data/images when that is beside it).
REAL_SITE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "data", "pcatlas-BR00143976-C03-s3"
)
# Opera Phenix channel numbers of the real sample, by stain (see its MANIFEST.md).
REAL_FILES = {"DNA": 5, "RNA": 6, "ER": 2, "AGP": 3, "Mito": 4}
REAL_PATTERN = "r03c03f03p01-ch{}sk1fk1fl1.tiff"


def border_locations(h, w):
    """Centres that put the 128 px box across the image edge in every way that matters."""
    pts = [
        # within 64 px of each edge
        (10.3, h * 0.5 + 0.37),
        (63.9, h * 0.3),
        (w - 10.25, h * 0.6),
        (w - 63.5, h * 0.45),
        (w * 0.4, 5.5),
        (w * 0.7, 63.0),
        (w * 0.35, h - 7.75),
        (w * 0.55, h - 64.0),
        # exactly on an edge (0, last pixel, and the far border)
        (0.0, h * 0.55),
        (w, h * 0.25),
        (w - 1, h * 0.75),
        (w * 0.5, 0.0),
        (w * 0.25, h),
        (w * 0.8, h - 1),
        # centre outside, box still overlapping the image
        (-20.5, h * 0.4),
        (-60.0, h * 0.8),
        (w + 30.2, h * 0.2),
        (w + 59.5, h * 0.65),
        (w * 0.3, -45.125),
        (w * 0.6, h + 50.75),
        # corners
        (0.0, 0.0),
        (w, h),
        (-10.0, -12.5),
        (w + 8.5, -5.0),
        (3.25, h + 2.0),
    ]
    return [(round(x, 3), round(y, 3)) for x, y in pts]


def gaussian_add(img, cx, cy, sigma, amp, rng=None, texture=0.0):
    """Add a (optionally textured) Gaussian blob in a local window; cheap for big images."""
    h, w = img.shape
    r = int(4 * sigma) + 1
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h)
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    blob = amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    if texture:
        blob *= 1.0 + texture * rng.standard_normal(blob.shape)
    img[y0:y1, x0:x1] += blob


def render(h, w, centres, rng, peak, background, bit8=False):
    """Synthetic 5-channel field: nuclei in DNA, textured cytoplasm in the other channels."""
    chans = {}
    for ci, name in enumerate(CHANNELS):
        img = np.full((h, w), float(background[ci]))
        for cx, cy in centres:
            dx, dy = rng.normal(0, 1.5, 2)
            if name == "DNA":
                gaussian_add(img, cx + dx, cy + dy, rng.uniform(5, 9), peak[ci] * rng.uniform(0.4, 1.0))
            else:
                for _ in range(3):
                    ox, oy = rng.normal(0, 8, 2)
                    gaussian_add(
                        img,
                        cx + ox,
                        cy + oy,
                        rng.uniform(8, 22),
                        peak[ci] * rng.uniform(0.2, 0.7),
                        rng=rng,
                        texture=0.3,
                    )
        img += rng.normal(0, 0.02 * peak[ci] + 1.0, img.shape)
        hi = 255 if bit8 else 65535
        chans[name] = np.clip(np.rint(img), 0, hi).astype(np.uint8 if bit8 else np.uint16)
    return chans


def interior(n, h, w, rng):
    return [(round(float(rng.uniform(0, w)), 3), round(float(rng.uniform(0, h)), 3)) for _ in range(n)]


def read_tiff(path):
    """Decode one channel; fall back to Pillow when imagecodecs (for LZW) is missing."""
    try:
        return tifffile.imread(path)
    except ValueError:
        from PIL import Image

        return np.array(Image.open(path))


def write_site(outdir, site, chans, locations, header=(X_KEY, Y_KEY), extra=None):
    """Write channel TIFFs and locations CSV; return the index entry (paths relative to outdir)."""
    sdir = os.path.join(outdir, "sites", site["id"])
    os.makedirs(sdir, exist_ok=True)
    files = {}
    for name in CHANNELS:
        rel = os.path.join("sites", site["id"], name + ".tif")
        tifffile.imwrite(os.path.join(outdir, rel), chans[name], photometric="minisblack", compression=None)
        files[name] = rel
    loc_rel = os.path.join("sites", site["id"], "locations.csv")
    with open(os.path.join(outdir, loc_rel), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(header)
        for i, (x, y) in enumerate(locations):
            row = {X_KEY: repr(float(x)), Y_KEY: repr(float(y)), "ObjectNumber": str(i + 1)}
            wr.writerow([row[k] for k in header])
    first = chans[CHANNELS[0]]
    entry = dict(site)
    entry.update(
        height=int(first.shape[0]),
        width=int(first.shape[1]),
        dtype=str(first.dtype),
        channels=files,
        locations=loc_rel,
        n_cells=len(locations),
    )
    if extra:
        entry.update(extra)
    return entry


def synthetic_sites(outdir):
    entries = []

    rng = np.random.default_rng([SEED, 1])
    h, w = 520, 696
    locs = border_locations(h, w) + interior(25, h, w, rng)
    locs = [locs[i] for i in rng.permutation(len(locs))]
    chans = render(
        h, w, locs, rng, peak=[20000, 6000, 9000, 4000, 12000], background=[300, 250, 400, 200, 2500]
    )
    entries.append(
        write_site(
            outdir,
            dict(id="synth-520x696", plate="SYNTHA", well="B02", site=1),
            chans,
            locs,
            header=("ObjectNumber", Y_KEY, X_KEY),
        )
    )

    rng = np.random.default_rng([SEED, 2])
    locs = [locs[i] for i in (0, 3, 7, 11, 15, 19, 23, 27, 31, 35, 40, 45)]
    chans = render(h, w, locs, rng, peak=[15000, 5000, 1, 1, 9000], background=[200, 150, 0, 0, 1000])
    chans["ER"] = np.full((h, w), 1000, np.uint16)
    chans["AGP"] = np.zeros((h, w), np.uint16)
    entries.append(
        write_site(outdir, dict(id="synth-flat-520x696", plate="SYNTHA", well="B03", site=2), chans, locs)
    )

    rng = np.random.default_rng([SEED, 3])
    h, w = 1080, 1080
    locs = border_locations(h, w) + interior(30, h, w, rng)
    locs = [locs[i] for i in rng.permutation(len(locs))]
    chans = render(
        h, w, locs, rng, peak=[25000, 8000, 12000, 5000, 60000], background=[500, 300, 400, 250, 4000]
    )
    entries.append(
        write_site(outdir, dict(id="synth-1080x1080", plate="SYNTHB", well="C05", site=4), chans, locs)
    )

    rng = np.random.default_rng([SEED, 4])
    h, w = 301, 403
    locs = border_locations(h, w) + interior(6, h, w, rng)
    locs = [locs[i] for i in rng.permutation(len(locs))]
    chans = render(h, w, locs, rng, peak=[200, 90, 120, 60, 180], background=[8, 5, 10, 4, 20], bit8=True)
    entries.append(
        write_site(outdir, dict(id="synth8-301x403", plate="SYNTHC", well="D07", site=1), chans, locs)
    )

    rng = np.random.default_rng([SEED, 6])
    h, w = 520, 696
    locs = border_locations(h, w) + interior(12, h, w, rng)
    locs = [locs[i] for i in rng.permutation(len(locs))]
    chans = render(h, w, locs, rng, peak=[700, 300, 450, 260, 600], background=[10, 6, 12, 5, 30], bit8=True)
    chans = {name: plane.astype(np.uint16) for name, plane in chans.items()}
    entries.append(
        write_site(outdir, dict(id="synth8in16-520x696", plate="SYNTHD", well="E09", site=3), chans, locs)
    )
    return entries


def real_site(outdir, src):
    """Re-write the real sample uncompressed, mapping Phenix channel numbers to stains by name."""
    chans = {name: read_tiff(os.path.join(src, REAL_PATTERN.format(ch))) for name, ch in REAL_FILES.items()}
    with open(os.path.join(src, "r03c03f03p01-Nuclei.csv")) as f:
        rows = list(csv.DictReader(f))
    locs = [(float(r[X_KEY]), float(r[Y_KEY])) for r in rows]
    h, w = chans["DNA"].shape
    extra = [border_locations(h, w)[i] for i in (0, 3, 5, 9, 10, 13, 14, 17, 18, 19, 21, 22)]
    rng = np.random.default_rng([SEED, 5])
    for p in extra:
        locs.insert(int(rng.integers(0, len(locs) + 1)), p)
    return write_site(
        outdir,
        dict(id="pcatlas-BR00143976-C03-s3", plate="BR00143976", well="C03", site=3),
        chans,
        locs,
        extra={"source": {n: REAL_PATTERN.format(c) for n, c in REAL_FILES.items()}},
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--real-site", default=REAL_SITE, help="folder of the real sample site")
    args = ap.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)

    entries = synthetic_sites(args.outdir) + [real_site(args.outdir, args.real_site)]
    with open(os.path.join(args.outdir, "index.json"), "w") as f:
        json.dump({"channels": CHANNELS, "box_size": 128, "sites": entries}, f, indent=1)
    with open(os.path.join(args.outdir, "index.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["id", "plate", "well", "site", "height", "width", "dtype", *CHANNELS, "locations"])
        for e in entries:
            wr.writerow(
                [
                    e["id"],
                    e["plate"],
                    e["well"],
                    e["site"],
                    e["height"],
                    e["width"],
                    e["dtype"],
                    *[e["channels"][c] for c in CHANNELS],
                    e["locations"],
                ]
            )
    total = sum(e["n_cells"] for e in entries)
    print(f"wrote {len(entries)} sites, {total} cells to {args.outdir}")


if __name__ == "__main__":
    main()
