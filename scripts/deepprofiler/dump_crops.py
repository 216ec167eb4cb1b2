"""Dump the exact network inputs DeepProfiler 0.5.1 builds for one site, for debugging a port.

Runs inside the DeepProfiler venv and uses DeepProfiler's own code path: the project is laid
out like run_reference.py does, the dataset is read with ``read_dataset``, the image with
``pixels.openImage``, boxes with ``boxes.prepare_boxes`` and crops with
``SingleImageCropGenerator.prepare_image`` (the TF crop_and_resize + min-max graph).

Writes an npz with
  crops   (N, 128, 128, 5) float32  normalised crops fed to the network
  boxes   (N, 4) float32            [y1, x1, y2, x2] normalised boxes given to crop_and_resize
  image   (H, W, 5) float32         the raw field, channels in CNN-1 order
  centers (N, 2) float64            (x, y) from the locations file, in row order
and, with --checkpoint, also
  activation (N, 4, 4, 672) float32 the un-averaged block6a_activation map
  features   (N, 672) float32       DeepProfiler's spatial average of it

Usage: python dump_crops.py --inputs IN --site SITE_ID --out crops.npz [--checkpoint CKPT]
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_reference  # noqa: E402


def load_config(root, checkpoint_dir):
    """Reproduce the path handling of DeepProfiler's CLI for a project root."""
    dirs = {
        "root": root,
        "locations": root + "/inputs/locations/",
        "config": root + "/inputs/config/",
        "images": root + "/inputs/images/",
        "metadata": root + "/inputs/metadata/",
        "checkpoints": checkpoint_dir,
    }
    with open(dirs["config"] + "config.json") as f:
        config = json.load(f)
    config["paths"] = dirs
    config["paths"]["index"] = dirs["metadata"] + "index.csv"
    config["experiment_name"] = run_reference.EXP
    return config


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", required=True, help="folder with index.json from make_inputs.py")
    ap.add_argument("--site", default="pcatlas-BR00143976-C03-s3")
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", help="also run the network and store its activation map")
    args = ap.parse_args(argv)

    inputs = os.path.abspath(args.inputs)
    with open(os.path.join(inputs, "index.json")) as f:
        site = next(s for s in json.load(f)["sites"] if s["id"] == args.site)

    import deepprofiler.dataset.image_dataset
    import deepprofiler.dataset.pixels
    import deepprofiler.imaging.boxes
    import deepprofiler.imaging.cropping
    import deepprofiler.profiling
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")

    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "project")
        ckpt = args.checkpoint or os.path.join(tmp, "none.hdf5")
        run_reference.layout_project(root, [site], inputs, ckpt, 32)
        config = load_config(root, os.path.join(root, "outputs", run_reference.EXP, "checkpoint"))
        cwd = os.getcwd()
        os.chdir(root)  # DeepProfiler resolves channel paths relative to the working directory first
        try:
            dset = deepprofiler.dataset.image_dataset.read_dataset(config, mode="profile")
            meta = dset.meta.data.iloc[0]
            key, paths, outlines = dset.get_image_paths(meta)
            image = deepprofiler.dataset.pixels.openImage(paths, outlines)
            session = tf.compat.v1.keras.backend.get_session()
            if args.checkpoint:
                config["num_classes"] = dset.targets[0].shape[1]
                prof = deepprofiler.profiling.Profile(config, dset)
                with contextlib.redirect_stdout(io.StringIO()):  # the model summary
                    prof.configure()
                gen = prof.profile_crop_generator
            else:
                gen = deepprofiler.imaging.cropping.SingleImageCropGenerator(config, dset)
                gen.start(session)
            locations = gen.prepare_image(session, image, meta, False)
            crops = gen.image_pool
            batch = {
                "images": [image],
                "locations": [locations],
                "targets": [[t.get_values(meta) for t in dset.targets]],
            }
            boxes = deepprofiler.imaging.boxes.prepare_boxes(batch, config)[0]
            result = dict(
                crops=crops.astype(np.float32),
                boxes=boxes,
                image=image.astype(np.float32),
                centers=locations[[run_reference.X_KEY, run_reference.Y_KEY]].to_numpy(np.float64),
            )
            if args.checkpoint:
                act = prof.feat_extractor.predict(crops, batch_size=config["profile"]["batch_size"])
                feats = act
                while len(feats.shape) > 2:
                    feats = np.mean(feats, axis=1)
                result.update(activation=act, features=feats)
        finally:
            os.chdir(cwd)
    np.savez(args.out, **result)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in result.items()))


if __name__ == "__main__":
    main()
