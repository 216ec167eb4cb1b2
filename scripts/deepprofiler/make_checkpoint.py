"""Write a seeded, random-weight Cell Painting CNN-1 checkpoint for DeepProfiler 0.5.1.

Runs inside the DeepProfiler venv. The published Cell_Painting_CNN_v1.hdf5 cannot be
downloaded in CI, and fidelity only needs *some* fixed set of weights that both
DeepProfiler and cpcnn load, so this writes random ones in the same file format.

* The model is built by DeepProfiler's own ``profiling.build_model`` (5 channels,
  128x128, 490 classes): efficientnet.tfkeras EfficientNetB0 + ``pool5`` + ``ClassProb``.
* Format: a Keras HDF5 *weights-only* file (``model.save_weights(path)``, h5). DeepProfiler's
  training code (``learning/model.py`` in its GitHub history) saved checkpoints with
  ``ModelCheckpoint(save_weights_only=True)`` as ``checkpoint_{epoch:04d}.hdf5``, so that is
  the format the published model most likely has; 0.5.1 reads it with
  ``load_weights(path, by_name=True)`` after renaming its own head to ``classifier``.
* Every tensor is random, generated with numpy from a seed derived from (seed, tensor name),
  so it does not depend on TensorFlow's RNG or on layer order.
* Plain random weights wash the input out: every cell then gets almost the same features and
  a port could be wrong without the comparison noticing. So the BatchNorm moving statistics
  are calibrated, layer by layer and in float64, to seeded synthetic cell crops (randomly
  perturbed and snapped to a coarse grid, see ``quantize_stats``), the way a trained
  network's statistics match its data. Features then vary from cell to cell, stay mostly
  O(0.01..10), and BN means/variances are far from 0/1, so a port that ignores them fails.
  The file is bit-identical from run to run and across CPU kernels. ``--bn-spread`` scales how
  far the statistics are perturbed from the calibration (1 = the default checkpoint; larger =
  statistics further from the data, features more ill-conditioned).

Usage: python make_checkpoint.py OUT.hdf5 [--seed N] [--bn-spread S] [--also OUT2.hdf5:SEED:SPREAD ...]
(``--also`` writes more checkpoints from the same process, saving TensorFlow's start-up.)
"""

import argparse
import os
import sys
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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


def build_dp_model(float64=False):
    """Build the network with DeepProfiler's own code, so names and shapes cannot drift.

    ``float64`` builds the same graph in double precision (fused BatchNorm has no float64
    kernel, so BN layers are made unfused); it is only used to calibrate, never saved.
    """
    import deepprofiler.profiling  # disables TF2 behaviour, exactly as DeepProfiler runs
    import tensorflow as tf

    # Grappler re-optimises the graph for every new feed/fetch pair of the calibration and
    # would dominate the run time; it does not change what is written.
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    tf.compat.v1.keras.backend.clear_session()
    tf.compat.v1.keras.backend.set_session(tf.compat.v1.Session(config=config))
    if not float64:
        return deepprofiler.profiling.build_model(dp_config())

    layers = tf.keras.layers
    fused_bn = layers.BatchNormalization

    class UnfusedBatchNormalization(fused_bn):
        def __init__(self, *args, **kwargs):
            kwargs["fused"] = False
            super().__init__(*args, **kwargs)

    tf.keras.backend.set_floatx("float64")
    layers.BatchNormalization = UnfusedBatchNormalization
    try:
        return deepprofiler.profiling.build_model(dp_config())
    finally:
        layers.BatchNormalization = fused_bn
        tf.keras.backend.set_floatx("float32")


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


def calibration_crops(seed, n=24, size=BOX_SIZE):
    """Cell-like normalised crops: a nucleus blob, textured cytoplasm, noise; min-max per channel."""
    rng = np.random.default_rng([seed, 7])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    crops = np.empty((n, size, size, len(CHANNELS)), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        for c in range(len(CHANNELS)):
            img = rng.normal(0, 0.05, (size, size))
            for _ in range(1 if c == 0 else 4):
                oy, ox = (0, 0) if c == 0 else rng.normal(0, 12, 2)
                s = rng.uniform(6, 10) if c == 0 else rng.uniform(10, 25)
                blob = np.exp(-((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / (2 * s * s))
                img += rng.uniform(0.3, 1.0) * blob * (1 + 0.3 * rng.standard_normal(blob.shape))
            if rng.uniform() < 0.25:  # a border cell: part of the crop zero-filled
                img[: int(rng.integers(5, 50))] = img.min()
            img -= img.min()
            crops[i, :, :, c] = img / img.max()
    return crops


def quantize_stats(mean, var):
    """Snap BN statistics to a coarse grid (variance: 2**(k/8); mean: 1/16 of its std).

    With the calibration in float64, CPU-dependent round-off (~1e-16) cannot move a value
    across a grid boundary in practice, so the file is the same on every machine. The grid
    is much finer than the random perturbation, so it costs no realism.
    """
    var_q = 2.0 ** (np.round(8 * np.log2(var)) / 8)
    step = np.sqrt(var_q) / 16
    return (np.round(mean / step) * step).astype(np.float32), var_q.astype(np.float32)


def calibrate_batchnorm(model, crops, seed, spread=1.0):
    """Set each BN layer's moving mean/variance near the statistics of its input on ``crops``.

    Layers are visited in graph order; each block's input is computed once and fed back in
    (TF1 sessions can feed any tensor), so earlier blocks are not re-run for every BN layer.
    """
    import tensorflow as tf

    sess = tf.compat.v1.keras.backend.get_session()
    feed = {model.inputs[0]: crops}
    block = None
    for layer in model.layers:
        name = layer.name
        if name.startswith("block") and name.split("_")[0] != block:
            block = name.split("_")[0]
            block_input = layer.input  # expand_conv, or dwconv for blocks without expansion
            feed = {block_input: sess.run(block_input, feed)}
        if not isinstance(layer, tf.keras.layers.BatchNormalization):
            continue
        x = sess.run(layer.input, feed).astype(np.float64)
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
        rng = tensor_rng(seed, layer.name + "/calibration")
        mean = mean + 0.1 * spread * np.sqrt(var) * rng.standard_normal(mean.shape)
        var = var * rng.uniform(0.8, 1.25, var.shape) ** spread + 1e-4
        gamma, beta, _, _ = layer.get_weights()
        layer.set_weights([gamma, beta, *quantize_stats(mean, var)])


def write_checkpoint(out, seed, spread):
    """Build, calibrate, save and reload-check one checkpoint."""
    # Calibrate in float64: its round-off is far below the grid of quantize_stats, so the
    # written file does not depend on the CPU's float32 kernels.
    model64 = build_dp_model(float64=True)
    values = [random_value(w.name, [int(d) for d in w.shape], seed).astype(np.float32) for w in model64.weights]
    model64.set_weights([v.astype(np.float64) for v in values])
    calibrate_batchnorm(model64, calibration_crops(seed).astype(np.float64), seed, spread)
    values = [v.astype(np.float32) for v in model64.get_weights()]

    names64 = [w.name for w in model64.weights]
    model = build_dp_model()
    if [w.name for w in model.weights] != names64:
        sys.exit("float64 and float32 builds disagree on weight names")
    model.set_weights(values)
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp.hdf5"
    model.save_weights(tmp, save_format="h5")

    # Load it back the way DeepProfiler does (head renamed, by_name) into a fresh model and
    # check every backbone tensor arrived: Keras' by-name loading skips mismatches silently.
    check = build_dp_model()
    check.layers[-1]._name = "classifier"
    check.load_weights(tmp, by_name=True)
    loaded = {w.name: v for w, v in zip(check.weights, check.get_weights(), strict=True)}
    expected = {w.name: v for w, v in zip(model.weights, values, strict=True)}
    backbone = [n for n in expected if not n.startswith("ClassProb/")]
    bad = [n for n in backbone if n not in loaded or not np.array_equal(loaded[n], expected[n])]
    if bad:
        sys.exit(f"checkpoint round trip failed for {len(bad)} tensors, e.g. {bad[:3]}")
    os.replace(tmp, out)
    print(
        f"wrote {out}: {len(model.layers)} layers, {len(values)} weight tensors "
        f"({len(backbone)} checked after by-name reload), seed {seed}, BN spread {spread:g}"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output .hdf5 path")
    ap.add_argument("--seed", type=int, default=20220927)
    ap.add_argument("--bn-spread", type=float, default=1.0, help="scale of the BN statistics' perturbation")
    ap.add_argument("--also", action="append", default=[], metavar="OUT:SEED:SPREAD", help="another checkpoint")
    args = ap.parse_args(argv)

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    write_checkpoint(args.out, args.seed, args.bn_spread)
    for spec in args.also:
        out, seed, spread = spec.rsplit(":", 2)
        write_checkpoint(out, int(seed), float(spread))


if __name__ == "__main__":
    main()
