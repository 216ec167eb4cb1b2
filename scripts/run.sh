#!/usr/bin/env bash
# Set up cpcnn on a fresh machine and run the main job:
#   1. .venv with the serve and train extras (torch pinned to the CPU build)
#   2. the CNN-1 model in the store: the published weights from Zenodo, or, when this machine cannot
#      download them, an untrained CNN-1-architecture model so the pipeline still runs end to end
#   3. `cpcnn demo`: a small synthetic screen profiled, sphered and evaluated -> out/demo/
#   4. embed the bundled real sample site -> out/BR00143976-C03-3.parquet
#   5. start the embedding API (embedded worker, no Redis) on http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup_venv.sh serve,train
cpcnn=.venv/bin/cpcnn

model=cnn1
if ! "$cpcnn" models info cnn1 >/dev/null 2>&1; then
    if ! "$cpcnn" models fetch cnn1; then
        model=cnn1-untrained
        echo "!! The published CNN-1 weights could not be downloaded. Continuing with '$model', the same"
        echo "!! network with freshly initialised weights: the pipeline runs, but its features mean nothing."
        echo "!! Get Cell_Painting_CNN_v1.hdf5 from https://zenodo.org/records/7114558, then:"
        echo "!!     $cpcnn models import Cell_Painting_CNN_v1.hdf5 --name cnn1"
        if ! "$cpcnn" models info "$model" >/dev/null 2>&1; then
            mkdir -p out
            "$cpcnn" train init --out out/cnn1-untrained.pt --seed 0
            "$cpcnn" models import out/cnn1-untrained.pt --name "$model"
        fi
    fi
fi

"$cpcnn" demo --model "$model" --out out/demo

site=examples/data/pcatlas-BR00143976-C03-s3
"$cpcnn" embed --model "$model" \
    --image "DNA=$site/r03c03f03p01-ch5sk1fk1fl1.tiff" --image "RNA=$site/r03c03f03p01-ch6sk1fk1fl1.tiff" \
    --image "ER=$site/r03c03f03p01-ch2sk1fk1fl1.tiff" --image "AGP=$site/r03c03f03p01-ch3sk1fk1fl1.tiff" \
    --image "Mito=$site/r03c03f03p01-ch4sk1fk1fl1.tiff" \
    --locations "$site/r03c03f03p01-Nuclei.csv" \
    --plate BR00143976 --well C03 --site 3 --out out/BR00143976-C03-3.parquet

echo "Serving $model on http://${CPCNN_HOST:-127.0.0.1}:${CPCNN_PORT:-8000} (API docs at /docs); Ctrl-C stops it."
exec "$cpcnn" serve --model "$model" --host "${CPCNN_HOST:-127.0.0.1}" --port "${CPCNN_PORT:-8000}"
