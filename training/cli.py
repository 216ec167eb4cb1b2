"""``cpcnn train``: train CNN-1 on a site index (``run``), or write a freshly initialized checkpoint (``init``).

Only parsing and printing live here; :mod:`cpcnn.training.data` and :mod:`cpcnn.training.loop` do the work.
torch is imported inside the handlers, so ``cpcnn --help`` and the other commands work without the
'train' extra. A deliberate error (bad index, missing file, too few classes) prints one line and exits 1.
``python -m cpcnn.training ARGS`` is the same as ``cpcnn train ARGS``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from cpcnn.training.arch import CNN1_NUM_CLASSES
from cpcnn.training.config import TrainConfig, make_config
from cpcnn.training.runfile import (
    given_options,
    mark_defaults,
    merge_run_options,
    read_run_file,
    resolve_file_paths,
)

from cpcnn._types import NORMALIZATIONS
from cpcnn.errors import InputError

_DEFAULTS = TrainConfig()
#: The ``run`` parser, kept to merge a config file's values with its options.
_RUN_PARSER: list[argparse.ArgumentParser] = []


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "train",
        help="train CNN-1 on a site index, or write a freshly initialized checkpoint",
        description="Train Cell Painting CNN-1 (EfficientNet-B0, 5 channels). Needs the 'train' extra.",
    )
    sub = parser.add_subparsers(dest="train_command", metavar="ACTION", required=True)

    run = sub.add_parser("run", help="train on a site index (weakly supervised: classify the label)")
    run.add_argument(
        "--config",
        type=Path,
        help="TOML or YAML file with any of these options (and 'sources'); the command line wins",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress log")
    run.add_argument("--index", type=Path, help="CSV/Parquet, one row per site (or 'sources' in --config)")
    run.add_argument("--label", default=_DEFAULTS.label, help="class column (default %(default)s)")
    run.add_argument("--out", type=Path, help="run folder for checkpoints and metrics (required)")
    run.add_argument(
        "--min-cells",
        type=int,
        default=_DEFAULTS.min_cells,
        help="drop classes with fewer cells (default %(default)s, as the paper)",
    )
    run.add_argument("--epochs", type=int, default=_DEFAULTS.epochs)
    run.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    run.add_argument("--lr", type=float, default=_DEFAULTS.lr)
    run.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    run.add_argument(
        "--split",
        choices=("cells", "plates"),
        default=_DEFAULTS.split,
        help="leave-cells-out (per-well share trains) or leave-plates-out",
    )
    run.add_argument(
        "--train-fraction",
        type=float,
        default=_DEFAULTS.train_fraction,
        help="leave-cells-out: share of each well's cells that trains (default %(default)s)",
    )
    run.add_argument(
        "--holdout-plates", default="", help="leave-plates-out: comma-separated plates to validate on"
    )
    run.add_argument("--normalization", choices=NORMALIZATIONS, default=_DEFAULTS.normalization)
    run.add_argument("--cache-dtype", choices=("uint8", "float16"), default=_DEFAULTS.cache_dtype)
    run.add_argument(
        "--cache-dir", type=Path, help="crop cache folder (default OUT/crops); reusable across runs"
    )
    run.add_argument("--val-max-cells", type=int, help="validate on a fixed random subset of this many cells")
    run.add_argument("--no-augment", action="store_true", help="train without augmentations")
    run.add_argument(
        "--imagenet-weights", type=Path, help="EfficientNet-B0 ImageNet weights (Keras .h5 or torch)"
    )
    run.add_argument(
        "--no-stem-rescale",
        action="store_true",
        help="copy RGB stem filters to the 5 channels without the 3/5 scale (as DeepProfiler)",
    )
    run.add_argument("--resume", type=Path, help="continue from a checkpoint of this run (e.g. OUT/last.pt)")
    run.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    run.add_argument(
        "--device", default="auto", help="cpu, cuda or cuda:N (default auto: CUDA when torch sees a GPU)"
    )
    run.add_argument("--log-every", type=int, default=50, help="log training loss every N steps")
    run.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="auto: mixed precision (bf16, else fp16) on CUDA, fp32 on the CPU",
    )
    run.add_argument(
        "--workers", type=int, help="crop-loading processes (default: several on CUDA, none on the CPU)"
    )
    run.set_defaults(func=cmd_run)
    mark_defaults(run)
    _RUN_PARSER.append(run)

    init = sub.add_parser("init", help="write a checkpoint with freshly initialized weights")
    init.add_argument("-q", "--quiet", action="store_true", help="no progress log")
    init.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--num-classes", type=int, default=CNN1_NUM_CLASSES)
    init.add_argument("--imagenet-weights", type=Path, help="start the backbone from ImageNet weights")
    init.set_defaults(func=cmd_init)

    _add_prepare(sub)
    _add_select(sub)


def _log_progress(args: argparse.Namespace) -> None:
    """Training logs its epochs at INFO, whatever ``cpcnn -v`` set for the rest."""
    if not args.quiet:
        logging.getLogger("cpcnn.training").setLevel(logging.INFO)


def run_options(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults < --config file < command line, as one namespace (``sources`` only from the file)."""
    parser = _RUN_PARSER[-1]
    given = given_options(parser, args)
    config = given.get("config")
    file_values = read_run_file(config) if config else {}
    options = merge_run_options(parser, given, file_values, source=config.name if config else "")
    if config:
        resolve_file_paths(options, file_values, config.parent)
    options.setdefault("sources", None)
    if options["out"] is None:
        raise InputError("--out is required (on the command line or as 'out' in --config)")
    if options["index"] is None and options["sources"] is None:
        raise InputError("give --index, or 'sources' in a --config file")
    if options["index"] is not None and options["sources"] is not None:
        raise InputError("give either --index or 'sources' in --config, not both")
    return argparse.Namespace(**{**vars(args), **options})


def cmd_run(args: argparse.Namespace) -> int:
    import torch
    from cpcnn.training.data import prepare_data
    from cpcnn.training.loop import train
    from cpcnn.training.sources import format_class_table, parse_sources

    args = run_options(args)
    _log_progress(args)
    holdout = tuple(p.strip() for p in args.holdout_plates.split(",") if p.strip())
    config = make_config(
        label=args.label,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        split=args.split,
        train_fraction=args.train_fraction,
        holdout_plates=holdout,
        normalization=args.normalization,
        cache_dtype=args.cache_dtype,
        val_max_cells=args.val_max_cells,
        augment=not args.no_augment,
        stem_rescale=not args.no_stem_rescale,
        imagenet_weights=str(args.imagenet_weights) if args.imagenet_weights else None,
        min_cells=args.min_cells,
    )
    for name in ("max_steps", "threads", "log_every", "workers"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("log_every", "workers") else 1):
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.resume is not None and not args.resume.is_file():
        raise InputError(f"--resume: checkpoint {args.resume} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    sources = args.index
    if args.sources is not None:
        sources = parse_sources(args.sources, base=args.config.parent, label=config.label)
    data = prepare_data(sources, config, cache_dir=args.cache_dir or args.out / "crops")
    print(format_class_table(data.table))
    for site, reason in data.skipped:
        print(f"skipped {site.describe()}: {reason}")
    result = train(
        data,
        config,
        args.out,
        resume=args.resume,
        max_steps=args.max_steps,
        threads=args.threads,
        log_every=args.log_every,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        progress_bar=not args.quiet,
        run_file=args.config,
    )
    for row in result.metrics:
        print(_summary(row))
    if not result.metrics:
        print(f"nothing to do: {args.out} is at epoch {result.progress.epoch}, step {result.progress.step}")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _summary(row: dict[str, object]) -> str:
    def fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else "n/a" if value is None else str(value)

    state = "" if row["complete"] else " (stopped early)"
    return (
        f"epoch {row['epoch']}{state} step {row['step']}: train loss {fmt(row['train_loss'])} "
        f"accuracy {fmt(row['train_accuracy'])}, validation loss {fmt(row['val_loss'])} "
        f"accuracy {fmt(row['val_accuracy'])} macro F1 {fmt(row['val_macro_f1'])}, {row['train_crops']} crops at {fmt(row['crops_per_s'])} crops/s"
    )


def cmd_init(args: argparse.Namespace) -> int:
    from cpcnn.training.checkpoint import save_checkpoint
    from cpcnn.training.loop import initial_network

    _log_progress(args)
    if args.num_classes < 1:
        raise InputError(f"--num-classes must be at least 1, got {args.num_classes}")
    config = make_config(
        seed=args.seed, imagenet_weights=str(args.imagenet_weights) if args.imagenet_weights else None
    )
    net = initial_network(args.num_classes, config)
    init = "imagenet" if args.imagenet_weights else "random"
    path = save_checkpoint(
        args.out,
        net.eval(),
        channels=config.channels,
        normalization=config.normalization,
        config={"init": init, "seed": args.seed, "train": config.model_dump(mode="json")},
    )
    print(f"wrote {path} ({init} init, seed {args.seed}, {args.num_classes} classes)")
    return 0


def _add_select(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    select = sub.add_parser(
        "select",
        help="rank treatments by strength from well profiles (to train on the strongest N)",
        description="Per plate: control median, each well's distance to it z-scored against the control "
        "wells' distances; strength = mean z over a treatment's wells. Writes OUT/ranked.csv "
        "(and OUT/kept.csv with --top).",
    )
    select.add_argument("--profiles", type=Path, required=True, help="well profiles (Parquet or CSV)")
    select.add_argument("--treatment", required=True, help="treatment column, e.g. Metadata_Treatment")
    select.add_argument("--controls", required=True, help="control wells, COLUMN=VALUE (e.g. Metadata_Treatment=DMSO)")
    select.add_argument("--metric", choices=("cosine", "euclidean"), default="cosine")
    select.add_argument("--features", help="feature columns (names or globs, comma-separated; default all)")
    select.add_argument("--top", type=int, help="also write OUT/kept.csv with the strongest N treatments")
    select.add_argument(
        "--index", type=Path, help="with --top: write OUT/index.csv, this training index's rows of the kept "
        "treatments and the controls (a ready --index for 'cpcnn train run')"
    )
    select.add_argument("--out", type=Path, required=True, help="output folder")
    select.set_defaults(func=cmd_select)


def cmd_select(args: argparse.Namespace) -> int:
    from cpcnn.training.select import keep_in_index, rank_treatments, write_ranking

    from cpcnn.profiles import read_profiles

    if args.top is not None and args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}")
    if args.index is not None and args.top is None:
        raise InputError("--index needs --top: it keeps the rows of the strongest N treatments")
    wells = read_profiles(args.profiles, features=args.features)
    ranked = rank_treatments(
        wells, treatment=args.treatment, controls=args.controls, metric=args.metric, features=args.features
    )
    paths = write_ranking(ranked, args.out, top=args.top)
    shown = ", ".join(f"{t} ({z:.2f})" for t, z in zip(ranked[args.treatment][:5], ranked["strength_z"][:5], strict=False))
    print(f"ranked {len(ranked)} treatments, strongest: {shown} -> {', '.join(map(str, paths))}")
    if args.index is not None:
        path, rows = keep_in_index(
            args.index, ranked.head(args.top), args.out / "index.csv", treatment=args.treatment, controls=args.controls
        )
        print(f"{rows} sites of the kept treatments and the controls -> {path}")
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from cpcnn.illum import DEFAULT_DOWNSAMPLE, DEFAULT_FILTER_SIZE

    prepare = sub.add_parser(
        "prepare",
        help="illumination-correct and rescale plate images into 8-bit PNGs plus a training index",
        description="Per plate and channel: compute an illumination function (CellProfiler's recipe) or use "
        "the ones a LoadData CSV names, divide by it, stretch the plate's 0.05-99.95 percentiles to 0..255 "
        "and write OUT/images/<Plate>/<Well>_s<Site>_<Ch>.png and OUT/index.csv. Reruns skip finished images.",
    )
    source = prepare.add_mutually_exclusive_group(required=True)
    source.add_argument("--load-data", type=Path, help="LoadData CSV naming each site's images (and illum files)")
    source.add_argument("--index", type=Path, help="an existing training index (one row per site)")
    prepare.add_argument("--locations", type=Path, help="with --load-data: the plate's nuclei table or folder")
    prepare.add_argument("--platemap", type=Path, help="CSV: Metadata_Well (optionally Metadata_Plate) + labels")
    prepare.add_argument("--label", default=_DEFAULTS.label, help="with --index: its class column (default %(default)s)")
    prepare.add_argument(
        "--illum",
        choices=("auto", "compute", "given", "none"),
        default="auto",
        help="illumination functions: the LoadData's when it names them, else computed (auto, the default)",
    )
    prepare.add_argument("--filter-size", type=float, default=DEFAULT_FILTER_SIZE, help="median filter size, CellProfiler's units (default %(default)s)")
    prepare.add_argument("--downsample", type=int, default=DEFAULT_DOWNSAMPLE, help="smooth the mean image at 1/N resolution (default %(default)s)")
    prepare.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: CPU count)")
    prepare.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    prepare.add_argument("--out", type=Path, required=True, help="output folder")
    prepare.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from cpcnn.training.prepare import (
        PrepareSettings,
        prepare,
        read_platemap,
        sites_from_index,
        sites_from_load_data,
    )

    settings = PrepareSettings(illum=args.illum, filter_size=args.filter_size, downsample=args.downsample)
    settings.check()
    locations = None
    if args.index is not None:
        if args.locations is not None:
            raise InputError("--locations goes with --load-data; an index names each site's locations file")
        sites = sites_from_index(args.index, label=args.label, channels=settings.channels)
    else:
        from cpcnn.plates.locations import open_locations

        if args.locations is None:
            raise InputError("--load-data needs --locations (the nuclei table or folder of the plate)")
        sites = sites_from_load_data(args.load_data, channels=settings.channels)
        locations = open_locations(args.locations)
    platemap = read_platemap(args.platemap) if args.platemap is not None else None
    result = prepare(
        sites, args.out, settings=settings, locations=locations, platemap=platemap, workers=args.workers,
        progress=not args.quiet,
    )
    print(result.summary())
    return 0
