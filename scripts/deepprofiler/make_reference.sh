#!/usr/bin/env bash
# Produce DeepProfiler 0.5.1 reference features end to end: DeepProfiler venv (if missing),
# seeded random checkpoint, seeded test inputs, real `deepprofiler profile` runs.
#
# Usage: make_reference.sh OUTDIR
# Env:   DP_VENV     venv to use/create (default: .venv-deepprofiler in the repository root)
#        DUMP_CROPS  if 1, also write OUTDIR/crops_example.npz (DeepProfiler's own crops for
#                    the real sample site, with activations) for debugging a port
#
# Result: OUTDIR/reference/manifest.json and OUTDIR/reference/{checkpoint}/{site}.npz (see run_reference.py).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${DP_VENV:-$repo/.venv-deepprofiler}"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore

step() {
    local name="$1"; shift
    local t0=$SECONDS
    echo "== $name"
    "$@"
    echo "== $name: $((SECONDS - t0))s"
}

start=$SECONDS
step "deepprofiler venv" bash "$here/setup_env.sh" "$venv"
py="$venv/bin/python"
ckpt="$out/checkpoint/cnn1_random_weights.hdf5"
# Two more checkpoints, other seeds and BatchNorm statistics further from / closer to the data,
# profiled on two 520x696 fields only (see run_reference.py).
wide="$out/checkpoint/cnn1_seed1_bnspread3.hdf5"
narrow="$out/checkpoint/cnn1_seed2_bnspread0.3.hdf5"
step "checkpoints" "$py" "$here/make_checkpoint.py" "$ckpt" --also "$wide:1:3" --also "$narrow:2:0.3"
step "inputs" "$py" "$here/make_inputs.py" "$out/inputs"
step "deepprofiler profile" "$py" "$here/run_reference.py" --inputs "$out/inputs" --out "$out" \
    --checkpoint "$ckpt" --checkpoint "$wide" --checkpoint "$narrow"
if [[ "${DUMP_CROPS:-0}" == 1 ]]; then
    step "crops example" "$py" "$here/dump_crops.py" --inputs "$out/inputs" --checkpoint "$ckpt" \
        --out "$out/crops_example.npz"
fi
echo "reference ready in $out/reference ($((SECONDS - start))s)"
