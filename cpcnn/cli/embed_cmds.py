"""``cpcnn embed``: one field of view in, one row of features per cell out."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from cpcnn._types import NORMALIZATIONS
from cpcnn.io.images import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "embed",
        help="embed the cells of one field of view",
        description="Crop every nucleus of one five-channel field of view and write its CNN-1 features.",
    )
    parser.add_argument("--model", default="cnn1", help="model name in the store, or a path to a .onnx file")
    parser.add_argument(
        "--image", action="append", default=[], metavar="NAME=PATH",
        help="one channel file, e.g. --image DNA=a.tif (repeat for DNA, RNA, ER, AGP, Mito)",
    )
    parser.add_argument("--stack", type=Path, help="one multi-page or 3-D TIFF holding all channels")
    parser.add_argument("--channel-order", help="names of the --stack planes as stored, e.g. DNA,RNA,ER,AGP,Mito")
    parser.add_argument(
        "--locations", required=True, type=Path,
        help="nuclei CSV (or JSON) with centre x/y columns (and ObjectNumber, if any)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output .parquet, .csv or DeepProfiler-style .npz")
    parser.add_argument("--plate", default="", help="Metadata_Plate to record")
    parser.add_argument("--well", default="", help="Metadata_Well to record")
    parser.add_argument("--site", default="", help="Metadata_Site to record")
    add_inference_args(parser)
    parser.set_defaults(func=cmd_embed)


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """How crops are made and run (normalization, device, batch size, threads, image size cap): the same
    options wherever cells are embedded locally."""
    parser.add_argument("--normalization", choices=NORMALIZATIONS, help="override the model's crop normalization")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--batch-size", type=_batch_size, help="cells per inference call, or 'auto' to measure the fastest"
    )
    parser.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def cmd_embed(args: argparse.Namespace) -> int:
    from cpcnn.embedding import Embedder
    from cpcnn.errors import InputError
    from cpcnn.io.cells import write_cells
    from cpcnn.io.images import parse_channel_args, read_site, read_stack
    from cpcnn.locations import load_locations
    from cpcnn.model_store import ModelStore

    model = ModelStore().resolve(args.model)
    channels = model.manifest.channels
    if args.stack and args.image:
        raise InputError("give either --image NAME=PATH for each channel or --stack with --channel-order, not both")
    started = time.perf_counter()
    if args.stack:
        if not args.channel_order:
            raise InputError("--stack needs --channel-order naming its planes, e.g. DNA,RNA,ER,AGP,Mito")
        image = read_stack(args.stack, channel_order=args.channel_order.split(","), model_channels=channels,
                           max_pixels=args.max_pixels)
    elif args.image:
        image = read_site(parse_channel_args(args.image), channel_order=channels, max_pixels=args.max_pixels)
    else:
        raise InputError(f"no image given: pass --image NAME=PATH for each of {', '.join(channels)}")
    cells = load_locations(args.locations)
    embedder = Embedder(model, device=args.device, threads=args.threads, batch_size=args.batch_size)
    features = embedder.embed_site(image, cells.centers, normalization=args.normalization)
    metadata = {"Metadata_Plate": args.plate, "Metadata_Well": args.well, "Metadata_Site": args.site}
    write_cells(args.out, features, cells, metadata=metadata, model_name=model.manifest.name,
                feature_prefix=model.manifest.feature_prefix)
    seconds = time.perf_counter() - started
    print(f"{features.shape[0]} cells x {features.shape[1]} features -> {args.out} ({seconds:.2f} s, "
          f"{embedder.info.provider})")
    return 0
