#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
#   - .venv: the project with the dev extra (torch pinned to the CPU build)
#   - Redis on 127.0.0.1:6379, started if it is not answering
#   - .venv-deepprofiler: DeepProfiler 0.5.1 + TensorFlow 2.15, for the fidelity tests
#   - chromium + chromium-driver (Debian packages), for the web console's browser tests
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup_venv.sh dev

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver for the web console's browser tests"
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver
fi

bash scripts/deepprofiler/setup_env.sh .venv-deepprofiler
export CPCNN_DEEPPROFILER_PYTHON="$PWD/.venv-deepprofiler/bin/python"

.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest "$@"
