"""Write a seeded, random-weight Cell Painting CNN-1 checkpoint for DeepProfiler 0.5.1.

Runs inside the DeepProfiler venv. The published Cell_Painting_CNN_v1.hdf5 cannot be
downloaded in CI, and fidelity only needs *some* fixed set of weights that both
DeepProfiler and cpcnn load, so this writes random ones in the same file format.

* The model is built by DeepProfiler's own ``profiling.build_model`` (5 channels,
  128x128, 490 classes): efficientnet.tfkeras EfficientNetB0 + ``pool5`` + ``ClassProb``.
* Format: a Keras HDF5 *weights-only* file (``model.save_weights(path)``, h5). DeepProfiler's
  training (``learning/model.py``, up to 0.4.x) wrote checkpoints with
  ``ModelCheckpoint(save_weights_only=True)`` to ``checkpoint_{epoch:04d}.hdf5``, the file the
  published model came from, and 0.5.1 reads it with ``load_weights(path, by_name=True)``.
* Every tensor is random, generated with numpy from a seed derived from (seed, tensor name),
  so the file content does not depend on TensorFlow's RNG or on layer order. Scales are
  variance-preserving so ``block6a_activation`` stays O(0.01..10); BN moving variances are
  positive and moving means non-zero so a port that ignores them is caught.

Usage: python make_checkpoint.py OUT.hdf5 [--seed N]
"""

import argparse
import os
import sys
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

CHANNELS = ["DNA", "RNA", "ER", "AGP", "Mito"]
NUM_CLASSES = 490
BOX_SIZE = 128


def dp_config():
    """Minimal config that DeepProfiler's build_model reads."""
    return {
        "train": {"model": {"params": {"conv_blocks": 0}}},
        "profile": {},
        "dataset": {"locations": {"box_size": BOX_SIZE}, "images": {"channels": list(CHANNELS)}},
        "num_classes": NUM_CLASSES,
    }


def build_dp_model():
    """Build the network with DeepProfiler's own code, so names and shapes cannot drift."""
    import deepprofiler.profiling  # disables TF2 behaviour, exactly as DeepProfiler runs

    return deepprofiler.profiling.build_model(dp_config())


def tensor_rng(seed, name):
    """Independent generator per tensor: stable under layer reordering."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def random_value(name, shape, seed):
    """Random value for one weight tensor, scaled by its role in the network."""
    rng = tensor_rng(seed, name)
    layer, var = name.split("/")[0], name.split("/")[-1].split(":")[0]
    shape = tuple(shape)
    if var == "depthwise_kernel":
        kh, kw = shape[0], shape[1]
        return rng.normal(0.0, 1.6 / np.sqrt(kh * kw), shape)
    if var == "kernel" and len(shape) == 4:
        fan_in = shape[0] * shape[1] * shape[2]
        if layer.endswith("se_reduce") or layer.endswith("se_expand"):
            gain = 1.0
        elif layer.endswith("project_conv"):
            gain = 1.0
        else:  # stem, expand and top convs feed swish
            gain = 1.6
        return rng.normal(0.0, gain / np.sqrt(fan_in), shape)
    if var == "kernel":  # dense head
        return rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
    if var == "bias":
        return rng.normal(0.0, 0.1, shape)
    if var == "gamma":
        return rng.uniform(0.7, 1.3, shape)
    if var == "beta":
        return rng.normal(0.0, 0.2, shape)
    if var == "moving_mean":
        return rng.normal(0.0, 0.2, shape)
    if var == "moving_variance":
        return rng.uniform(0.5, 2.0, shape)
    raise ValueError(f"no rule for weight tensor {name} {shape}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output .hdf5 path")
    ap.add_argument("--seed", type=int, default=20220927)
    args = ap.parse_args(argv)

    import tensorflow as tf

    model = build_dp_model()
    values = [random_value(w.name, [int(d) for d in w.shape], args.seed).astype(np.float32) for w in model.weights]
    model.set_weights(values)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp.hdf5"
    model.save_weights(tmp, save_format="h5")

    # Load it back the way DeepProfiler does (head renamed, by_name) into a fresh model and
    # check every backbone tensor arrived: Keras' by-name loading skips mismatches silently.
    tf.compat.v1.keras.backend.clear_session()
    check = build_dp_model()
    check.layers[-1]._name = "classifier"
    check.load_weights(tmp, by_name=True)
    loaded = {w.name: v for w, v in zip(check.weights, check.get_weights())}
    expected = {w.name: v for w, v in zip(model.weights, values)}
    backbone = [n for n in expected if not n.startswith("ClassProb/")]
    bad = [n for n in backbone if n not in loaded or not np.array_equal(loaded[n], expected[n])]
    if bad:
        sys.exit(f"checkpoint round trip failed for {len(bad)} tensors, e.g. {bad[:3]}")
    os.replace(tmp, out)
    print(f"wrote {out}: {len(model.layers)} layers, {len(values)} weight tensors "
          f"({len(backbone)} checked after by-name reload), seed {args.seed}")


if __name__ == "__main__":
    main()
