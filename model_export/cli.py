"""``cpcnn models``: import or fetch weights into the local model store, list and inspect it.

Importing needs torch (the 'train' extra) and ONNX Runtime (the 'serve' or 'gpu' extra); listing and
inspecting need neither, so the importer is imported inside the handlers that use it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from cpcnn._types import FEATURE_LAYER, NORMALIZATIONS
from cpcnn.model_store import ModelStore

TRAIN_EXTRA_HINT = (
    "model import needs the 'train' extra and ONNX Runtime: pip install 'cpcnn[serve,train]' "
    "(or 'cpcnn[gpu,train]')"
)
_TRAIN_MODULES = ("torch", "onnx", "h5py", "onnxruntime")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "models",
        help="import, fetch, list and inspect models",
        description="Manage the local model store (ONNX models with their preprocessing manifest).",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    imp = sub.add_parser(
        "import",
        help="import a Keras HDF5 or cpcnn checkpoint",
        description="Load weights strictly, export them to ONNX, check ONNX Runtime against torch and store them.",
    )
    imp.add_argument(
        "file", type=Path, metavar="FILE", help="Keras .h5/.hdf5 (CNN-1) or cpcnn .pt checkpoint"
    )
    imp.add_argument("--name", default="cnn1", help="name in the store (default: cnn1)")
    imp.add_argument(
        "--feature-layer", default=FEATURE_LAYER, help=f"layer to embed (default: {FEATURE_LAYER})"
    )
    imp.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        help="crop normalization the weights expect (default: the checkpoint's, else minmax)",
    )
    imp.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    imp.set_defaults(func=cmd_import)

    fetch = sub.add_parser(
        "fetch",
        help="download Cell Painting CNN-1 from Zenodo and import it",
        description="Download Cell_Painting_CNN_v1.hdf5 (Zenodo record 7114558), verify it and import it.",
    )
    fetch.add_argument("model", nargs="?", default="cnn1", choices=("cnn1",), help="model to fetch")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    fetch.set_defaults(func=cmd_fetch)

    lst = sub.add_parser("list", help="list stored models")
    lst.set_defaults(func=cmd_list)

    info = sub.add_parser("info", help="print a model's manifest as JSON")
    info.add_argument("name", metavar="NAME")
    info.set_defaults(func=cmd_info)


def _missing_train_extra() -> bool:
    if all(importlib.util.find_spec(module) is not None for module in _TRAIN_MODULES):
        return False
    print(TRAIN_EXTRA_HINT, file=sys.stderr)
    return True


def cmd_import(args: argparse.Namespace) -> int:
    if _missing_train_extra():
        return 1
    from cpcnn.model_export.importer import import_weights

    stored = import_weights(
        args.file,
        name=args.name,
        feature_layer=args.feature_layer,
        normalization=args.normalization,
        overwrite=args.overwrite,
    )
    print(f"imported {args.file} as {stored.manifest.name}: {stored.onnx_path}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    if _missing_train_extra():
        return 1
    from cpcnn.model_export.fetch import fetch_cnn1

    stored = fetch_cnn1(name=args.model, progress=not args.no_progress, overwrite=args.overwrite)
    print(f"fetched {stored.manifest.source} as {stored.manifest.name}: {stored.onnx_path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = ModelStore()
    manifests = store.list()
    if not manifests:
        print(f"no models in {store.root}; run 'cpcnn models fetch' or 'cpcnn models import FILE'")
        return 0
    for manifest in manifests:
        print(
            f"{manifest.name}\t{manifest.feature_layer}\t{manifest.feature_size}\t"
            f"{manifest.normalization}\t{manifest.source}"
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    print(ModelStore().get(args.name).manifest.to_json())
    return 0
