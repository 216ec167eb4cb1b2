"""Run the real DeepProfiler 0.5.1 ``profile`` command on the test sites and collect its features.

Runs inside the DeepProfiler venv. DeepProfiler is driven only through its own CLI
(``python -m deepprofiler``; the installed console script calls the click group without
``obj={}`` and crashes), on a project laid out the way it expects:

    ROOT/inputs/config/config.json
    ROOT/inputs/metadata/index.csv            Metadata_Plate/Well/Site, one column per channel, Class
    ROOT/inputs/images/{plate}/{file}         (symlinks to the input TIFFs)
    ROOT/inputs/locations/{plate}/{well}-{site}-Nuclei.csv
    ROOT/outputs/{exp}/checkpoint/{checkpoint}
    ROOT/outputs/{exp}/features/{plate}/{well}/{site}.npz   <- written by DeepProfiler

The configured image width/height must equal every image's size (the crop placeholder has
that static shape), so sites are grouped by size into one project per size.

Several checkpoints: the first runs on every site, each further one on ``--extra-sites`` (default
two non-square 520x696 fields: border cells at every edge, flat channels, saturated 8-bit data in
16-bit files; one image size, so one DeepProfiler start-up, the slow part, per checkpoint).

Output: OUT/reference/{checkpoint}/{site_id}.npz with ``features`` (N, 672) float32 exactly as
DeepProfiler wrote them (NaN rows included: DeepProfiler gives NaN for a crop with a flat non-zero
channel) and ``centers`` (N, 2) float64 (x, y) in locations-file row order, plus
OUT/reference/manifest.json describing every run (checkpoint and sites), paths relative to OUT.
DeepProfiler's own projects and logs are kept under OUT/dp/{checkpoint}/.

Usage: python run_reference.py --inputs IN --checkpoint CKPT.hdf5 [--checkpoint CKPT2.hdf5 ...] --out OUT
"""

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

CHANNELS = ["DNA", "RNA", "ER", "AGP", "Mito"]  # CNN-1 input order
FEATURE_LAYER = "block6a_activation"
BOX_SIZE = 128
EXP = "reference"
X_KEY = "Nuclei_Location_Center_X"
Y_KEY = "Nuclei_Location_Center_Y"


def dp_config(height, width, checkpoint_name, batch_size):
    """Profiling config in the handbook's layout; only keys DeepProfiler 0.5.1 reads matter."""
    return {
        "dataset": {
            "metadata": {"label_field": "Class", "control_value": "control"},
            "images": {
                "channels": CHANNELS,
                "file_format": "tif",
                "bits": 16,
                "width": width,
                "height": height,
            },
            "locations": {
                "mode": "single_cells",
                "box_size": BOX_SIZE,
                "view_size": BOX_SIZE,
                "mask_objects": False,
            },
        },
        "prepare": {
            "illumination_correction": {"down_scale_factor": 4, "median_filter_size": 24},
            "compression": {"implement": False, "scaling_factor": 1.0},
        },
        "train": {
            "partition": {
                "targets": ["Class"],
                "split_field": "Metadata_Plate",
                "training": [],
                "validation": [],
            },
            "model": {
                "name": "efficientnet",
                "crop_generator": "crop_generator",
                "metrics": ["accuracy"],
                "epochs": 1,
                "initialization": "None",
                "params": {
                    "learning_rate": 0.005,
                    "batch_size": batch_size,
                    "conv_blocks": 0,
                    "label_smoothing": 0.0,
                },
            },
            "sampling": {"factor": 1.0, "workers": 1, "cache_size": 1000},
            "validation": {"frequency": 1, "top_k": 1, "batch_size": batch_size},
        },
        "profile": {"feature_layer": FEATURE_LAYER, "checkpoint": checkpoint_name, "batch_size": batch_size},
    }


def read_centers(path):
    """(x, y) per row of a locations CSV, by column name."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r[X_KEY]), float(r[Y_KEY])] for r in rows], dtype=np.float64).reshape(-1, 2)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def layout_project(root, sites, inputs, checkpoint, batch_size):
    """Create one DeepProfiler project for sites that share an image size."""
    if os.path.exists(root):
        shutil.rmtree(root)  # DeepProfiler skips sites whose output already exists
    h, w = sites[0]["height"], sites[0]["width"]
    for sub in (
        "inputs/config",
        "inputs/metadata",
        "inputs/images",
        "inputs/locations",
        f"outputs/{EXP}/checkpoint",
    ):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ckpt_name = os.path.basename(checkpoint)
    os.symlink(os.path.abspath(checkpoint), os.path.join(root, "outputs", EXP, "checkpoint", ckpt_name))

    rows = []
    for s in sites:
        plate, well, site = s["plate"], s["well"], s["site"]
        os.makedirs(os.path.join(root, "inputs/images", plate), exist_ok=True)
        row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
        for ch in CHANNELS:
            rel = f"{plate}/{well}_s{site}_{ch}.tif"
            os.symlink(
                os.path.abspath(os.path.join(inputs, s["channels"][ch])),
                os.path.join(root, "inputs/images", rel),
            )
            row[ch] = rel
        row["Class"] = "control"
        rows.append(row)
        os.makedirs(os.path.join(root, "inputs/locations", plate), exist_ok=True)
        shutil.copyfile(
            os.path.join(inputs, s["locations"]),
            os.path.join(root, "inputs/locations", plate, f"{well}-{site}-Nuclei.csv"),
        )

    with open(os.path.join(root, "inputs/metadata/index.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    with open(os.path.join(root, "inputs/config/config.json"), "w") as f:
        json.dump(dp_config(h, w, ckpt_name, batch_size), f, indent=2)


def run_deepprofiler(root):
    """Run ``python -m deepprofiler profile`` on one project; its log goes next to it."""
    cmd = [
        sys.executable,
        "-m",
        "deepprofiler",
        f"--root={root}",
        "--config=config.json",
        f"--exp={EXP}",
        "profile",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    log_path = os.path.join(root, "profile.log")
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        sys.exit(f"deepprofiler failed (exit {rc}) for {root}; log {log_path}:\n{tail}")


def profile_sites(sites, inputs, checkpoint, dp_dir, ref_dir, batch_size, rel):
    """Run DeepProfiler with one checkpoint on ``sites`` (one project per image size); site entries."""
    os.makedirs(ref_dir, exist_ok=True)
    groups = {}
    for s in sites:
        groups.setdefault((s["height"], s["width"]), []).append(s)
    entries = []
    for (h, w), group in sorted(groups.items()):
        root = os.path.join(dp_dir, f"{h}x{w}")
        layout_project(root, group, inputs, checkpoint, batch_size)
        t0 = time.time()
        run_deepprofiler(root)
        print(f"deepprofiler {os.path.basename(checkpoint)} {h}x{w}: {len(group)} sites in {time.time() - t0:.1f}s")
        for s in group:
            npz = os.path.join(root, "outputs", EXP, "features", s["plate"], s["well"], f"{s['site']}.npz")
            if not os.path.isfile(npz):
                sys.exit(f"deepprofiler wrote no features for {s['id']} ({npz})")
            with np.load(npz, allow_pickle=True) as z:
                feats = z["features"]
                dp_locs = np.asarray(z["locations"])
            centers = read_centers(os.path.join(inputs, s["locations"]))
            if feats.dtype != np.float32 or feats.shape != (len(centers), 672):
                sys.exit(f"{s['id']}: unexpected features {feats.dtype} {feats.shape}, {len(centers)} cells")
            nan_rows = np.flatnonzero(~np.isfinite(feats).all(axis=1))
            np.savez(os.path.join(ref_dir, f"{s['id']}.npz"), features=feats, centers=centers)
            entry = {k: s[k] for k in ("id", "plate", "well", "site", "height", "width", "dtype", "n_cells")}
            entry.update(
                channels={c: rel(os.path.join(inputs, p)) for c, p in s["channels"].items()},
                locations=rel(os.path.join(inputs, s["locations"])),
                features=rel(os.path.join(ref_dir, f"{s['id']}.npz")),
                deepprofiler_npz=rel(npz),
                deepprofiler_locations_shape=list(dp_locs.shape),
                nan_rows=nan_rows.tolist(),
                feature_abs_max=float(np.nanmax(np.abs(feats))),
                feature_abs_mean=float(np.nanmean(np.abs(feats))),
                feature_min=float(np.nanmin(feats)),
                feature_max=float(np.nanmax(feats)),
            )
            entries.append(entry)
            print(
                f"  {s['id']}: {feats.shape[0]} cells, |f| mean {entry['feature_abs_mean']:.3g} "
                f"max {entry['feature_abs_max']:.3g}, {len(nan_rows)} NaN rows"
            )
    return entries


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", required=True, help="folder with index.json from make_inputs.py")
    ap.add_argument("--checkpoint", required=True, action="append", help="Keras HDF5 checkpoint (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--extra-sites", default="synth-flat-520x696,synth8in16-520x696",
                    help="comma-separated site ids further checkpoints run on")
    args = ap.parse_args(argv)

    inputs = os.path.abspath(args.inputs)
    out = os.path.abspath(args.out)
    with open(os.path.join(inputs, "index.json")) as f:
        index = json.load(f)

    ref_dir = os.path.join(out, "reference")
    import deepprofiler
    import tensorflow as tf

    def rel(path):
        return os.path.relpath(path, out)

    manifest = {
        "deepprofiler_version": getattr(deepprofiler, "__version__", "0.5.1"),
        "tensorflow_version": tf.__version__,
        "feature_layer": FEATURE_LAYER,
        "box_size": BOX_SIZE,
        "channels": CHANNELS,
        "paths_relative_to": "..",
        "inputs": rel(inputs),
        "runs": [],
    }
    extra_sites = set(args.extra_sites.split(","))
    for number, checkpoint in enumerate(args.checkpoint):
        name = os.path.splitext(os.path.basename(checkpoint))[0]
        sites = [s for s in index["sites"] if number == 0 or s["id"] in extra_sites]
        entries = profile_sites(sites, inputs, checkpoint, os.path.join(out, "dp", name),
                                os.path.join(ref_dir, name), args.batch_size, rel)
        manifest["runs"].append(
            {"checkpoint": rel(os.path.abspath(checkpoint)), "checkpoint_sha256": sha256(checkpoint), "sites": entries}
        )

    with open(os.path.join(ref_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    total = sum(len(run["sites"]) for run in manifest["runs"])
    print(f"reference features for {len(manifest['runs'])} checkpoints, {total} fields in {ref_dir}")


if __name__ == "__main__":
    main()
