#!/usr/bin/env bash
# Create the separate venv that runs the real DeepProfiler 0.5.1 (TensorFlow 2.15) for the
# reference features; the cpcnn venv never needs TensorFlow. Idempotent: a complete venv
# with the same pins is left alone in well under a second.
#
# Usage: setup_env.sh [VENV_DIR]   (default: .venv-deepprofiler in the repository root)
# Env:   PYTHON  interpreter to build the venv from (default python3; TF 2.15 needs 3.9-3.11)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-$repo/.venv-deepprofiler}"
python="${PYTHON:-python3}"
pins=("deepprofiler==0.5.1" "tensorflow==2.15.*" "numpy<2" "pandas<3")
stamp="$venv/.deepprofiler-pins"

check() {
    "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m
v = {p: m.version(p) for p in ("deepprofiler", "tensorflow", "numpy", "pandas", "efficientnet")}
assert v["deepprofiler"] == "0.5.1", v
assert v["tensorflow"].startswith("2.15."), v
assert int(v["numpy"].split(".")[0]) < 2, v
assert int(v["pandas"].split(".")[0]) < 3, v
assert v["efficientnet"] == "1.1.1", v
PY
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "${pins[*]}" ]] && check; then
    echo "deepprofiler venv ready: $venv"
    exit 0
fi

echo "creating deepprofiler venv: $venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet "${pins[@]}"
if ! check; then
    echo "deepprofiler venv at $venv does not have the expected versions:" >&2
    "$venv/bin/python" -m pip list 2>/dev/null | grep -iE "deepprofiler|tensorflow|numpy|pandas|efficientnet" >&2
    exit 1
fi
printf '%s' "${pins[*]}" > "$stamp"
echo "deepprofiler venv ready: $venv"
