"""CLI commands of the profiles workflow: aggregate, sphering fit/apply/sweep, library build, match, evaluate.

``register(subparsers)`` adds the commands; each handler parses nothing itself, calls one library
function and prints a short summary. Errors are ``CpcnnError``s, printed by the entry point.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cpcnn._types import CONVENTIONS
from cpcnn.errors import InputError


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in _columns(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _write_json(data: dict[str, Any], path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def _sep(text: str) -> str | None:
    return text or None


def cmd_aggregate(args: argparse.Namespace) -> int:
    from cpcnn.profiles import aggregate_files, write_profiles

    result = aggregate_files(
        args.inputs, by=args.by, op=args.op, features=args.features, batch_rows=args.batch_rows
    )
    write_profiles(result.profiles, args.out)
    print(f"{result.summary()} -> {args.out}")
    return 0


def cmd_sphering_fit(args: argparse.Namespace) -> int:
    from cpcnn.profiles import fit_sphering, read_profiles

    table = read_profiles(args.profiles, features=args.features)
    sphering = fit_sphering(
        table,
        controls=args.controls,
        lam=args.lam,
        method=args.method,
        features=args.features,
        source=str(args.profiles),
    )
    sphering.save(args.out)
    print(
        f"fitted {sphering.method} on {sphering.n_controls} controls x {len(sphering.features)} features "
        f"(rank {sphering.rank}, lambda {sphering.lam:g}) -> {args.out}"
    )
    for note in sphering.warnings:
        print(f"warning: {note}")
    return 0


def cmd_sphering_apply(args: argparse.Namespace) -> int:
    from cpcnn.profiles import Sphering, read_profiles, write_profiles

    sphering = Sphering.load(args.transform)
    out = sphering.apply(read_profiles(args.profiles, features=args.features), features=args.features)
    write_profiles(out, args.out)
    print(f"sphered {len(out)} rows x {len(sphering.features)} features -> {args.out}")
    return 0


def cmd_sphering_sweep(args: argparse.Namespace) -> int:
    from cpcnn.metrics import sweep_lambda
    from cpcnn.profiles import read_profiles

    sweep = sweep_lambda(
        read_profiles(args.profiles, features=args.features),
        controls=args.controls,
        lambdas=args.lambdas,
        id_col=args.id,
        annotation=args.annotation,
        method=args.method,
        sep=args.sep,
        features=args.features,
        convention=args.convention,
    )
    _write_json(sweep.to_dict(), args.out)
    base = sweep.baseline
    print(
        f"{sweep.convention} convention, unsphered: mAP {base.mean_average_precision:.4f}, "
        f"FoE {base.folds_of_enrichment:.2f}"
    )
    for p in sweep.points:
        print(
            f"lambda {p.lam:g}: mAP {p.mean_average_precision:.4f}, FoE {p.folds_of_enrichment:.2f}, {p.n_queries} queries"
        )
    if args.plot:
        from cpcnn.metrics.report import plot_sweep

        plot_sweep(sweep, args.plot)
    print(f"-> {args.out}" + (f", {args.plot}" if args.plot else ""))
    return 0


def cmd_library_build(args: argparse.Namespace) -> int:
    from cpcnn.profiles import Library, read_profiles

    library = Library.from_profiles(
        read_profiles(args.profiles, features=args.features),
        id_col=args.id,
        annotations=args.annotation,
        features=args.features,
    )
    library.save(args.out)
    print(f"library of {len(library)} profiles x {len(library.feature_names)} features -> {args.out}")
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    from cpcnn.profiles import Library, read_profiles, write_profiles

    source = Path(args.library)
    if (source / "library.json").is_file():
        library = Library.load(source)
    else:
        id_col = args.library_id or args.id
        if not id_col:
            raise InputError(
                "building a library from a table needs --library-id or --id (or pass a library folder)"
            )
        library = Library.from_profiles(
            read_profiles(source, features=args.features),
            id_col=id_col,
            annotations=args.annotation,
            features=args.features,
        )
    queries = read_profiles(args.queries, features=args.features)
    matches = library.match(
        queries, k=args.top_k, id_col=args.id, leave_one_out=args.leave_one_out, features=args.features
    )
    write_profiles(matches, args.out)
    print(f"{len(queries)} queries x top {args.top_k} against {len(library)} library profiles -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cpcnn.metrics import evaluate_retrieval
    from cpcnn.profiles import read_profiles, write_profiles

    result = evaluate_retrieval(
        read_profiles(args.profiles, features=args.features),
        id_col=args.id,
        annotation=args.annotation,
        sep=args.sep,
        features=args.features,
        convention=args.convention,
    )
    summary = result.to_dict()
    summary["settings"]["profiles"] = str(args.profiles)
    _write_json(summary, args.out)
    if args.per_query:
        write_profiles(result.per_query, args.per_query)
    if args.plot:
        from cpcnn.metrics.report import plot_retrieval

        plot_retrieval(result, args.plot)
    if result.n_queries == 0:
        print(f"no queries: {result.message} -> {args.out}")
    else:
        print(
            f"{result.convention} convention, {result.n_queries} queries: "
            f"mAP {result.mean_average_precision:.4f} ({result.n_queries_average_precision} queries, "
            f"interpolated {result.mean_average_precision_interpolated:.4f}), "
            f"FoE {result.folds_of_enrichment:.2f} ({result.n_odds_ratio_infinite} infinite odds ratios corrected) "
            f"-> {args.out}"
        )
        if result.message:
            print(f"note: {result.message}")
    return 0


def _add_features_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--features",
        type=_columns,
        help="feature columns, comma-separated names or glob patterns (e.g. 'efficientnet_*'); "
        "default: every numeric column not named Metadata_*",
    )


def _add_convention_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default="copairs",
        help="metric rules: copairs (exact non-interpolated mAP, Haldane-Anscombe for infinite odds ratios) "
        "or paper (the CNN-1 paper's published evaluation code)",
    )


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("profiles", help="well-level profile table")
    _add_features_arg(p)
    p.add_argument(
        "--controls", required=True, help="control rows, COLUMN=VALUE (e.g. Metadata_broad_sample=DMSO)"
    )
    p.add_argument(
        "--method", choices=("zca", "zca-cor"), default="zca", help="ZCA on covariance or correlation"
    )


def register(subparsers: Any) -> None:
    """Add the profiles commands to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser("aggregate", help="aggregate profiles by group (streaming, bounded memory)")
    p.add_argument("inputs", nargs="+", help="CSV, CSV.gz, Parquet files or DeepProfiler npz folders")
    p.add_argument("--by", type=_columns, required=True, help="grouping columns, comma-separated")
    p.add_argument("--op", choices=("median", "mean"), required=True, help="median (cells->site) or mean")
    p.add_argument("--out", required=True, help="output table (.parquet, or .csv/.csv.gz)")
    p.add_argument("--batch-rows", type=int, default=65_536, help="rows read per batch")
    _add_features_arg(p)
    p.set_defaults(func=cmd_aggregate)

    sph = subparsers.add_parser("sphering", help="fit, apply or sweep a ZCA sphering transform")
    sph_sub = sph.add_subparsers(dest="sphering_command", required=True)
    p = sph_sub.add_parser("fit", help="fit on control wells and save a .npz transform")
    _add_sweep_args(p)
    p.add_argument(
        "--lambda", dest="lam", type=float, required=True, help="absolute regularizer added to eigenvalues"
    )
    p.add_argument("--out", required=True, help="transform file (.npz)")
    p.set_defaults(func=cmd_sphering_fit)
    p = sph_sub.add_parser("apply", help="apply a saved transform to a profile table")
    p.add_argument("transform", help="transform .npz from 'sphering fit'")
    p.add_argument("profiles", help="profile table with the same feature names")
    p.add_argument("--out", required=True, help="output table")
    _add_features_arg(p)
    p.set_defaults(func=cmd_sphering_apply)
    p = sph_sub.add_parser("sweep", help="retrieval metrics per lambda")
    _add_sweep_args(p)
    p.add_argument("--lambdas", type=_floats, required=True, help="comma-separated, e.g. 1e-4,1e-3,1e-2")
    p.add_argument("--id", required=True, help="treatment id column (rows are averaged per id)")
    p.add_argument("--annotation", required=True, help="annotation column defining hits (e.g. Metadata_moa)")
    p.add_argument(
        "--sep", type=_sep, default="|", help="multi-value separator in the annotation ('' for none)"
    )
    _add_convention_arg(p)
    p.add_argument("--out", required=True, help="sweep JSON")
    p.add_argument("--plot", help="optional PNG of metrics versus lambda")
    p.set_defaults(func=cmd_sphering_sweep)

    lib = subparsers.add_parser("library", help="reference libraries for matching")
    lib_sub = lib.add_subparsers(dest="library_command", required=True)
    p = lib_sub.add_parser("build", help="build a library folder from treatment profiles")
    p.add_argument("profiles", help="profile table (rows sharing an id are averaged)")
    p.add_argument("--id", required=True, help="library id column")
    p.add_argument("--annotation", nargs="*", default=[], help="annotation columns to return with matches")
    p.add_argument("--out", required=True, help="library folder")
    _add_features_arg(p)
    p.set_defaults(func=cmd_library_build)

    p = subparsers.add_parser("match", help="top-k cosine matches of queries against a library")
    p.add_argument("library", help="saved library folder, or a profile table to build one from")
    p.add_argument("queries", help="query profile table")
    p.add_argument("--top-k", type=int, default=10, help="matches per query")
    p.add_argument("--id", help="query id column (default: the library's id column when present)")
    p.add_argument("--library-id", help="id column when LIBRARY is a table (default: --id)")
    p.add_argument("--annotation", nargs="*", default=[], help="annotation columns when LIBRARY is a table")
    p.add_argument("--leave-one-out", action="store_true", help="never match a query to its own id")
    p.add_argument("--out", required=True, help="long table of matches")
    _add_features_arg(p)
    p.set_defaults(func=cmd_match)

    p = subparsers.add_parser("evaluate", help="mAP and folds of enrichment of treatment retrieval")
    p.add_argument("profiles", help="profile table (rows sharing an id are averaged)")
    p.add_argument("--id", required=True, help="treatment id column")
    p.add_argument("--annotation", required=True, help="annotation column defining hits")
    p.add_argument("--sep", type=_sep, default="|", help="multi-value separator ('' for none)")
    _add_convention_arg(p)
    p.add_argument("--out", required=True, help="metrics JSON")
    _add_features_arg(p)
    p.add_argument("--per-query", help="optional per-query table (.csv or .parquet)")
    p.add_argument("--plot", help="optional PNG report")
    p.set_defaults(func=cmd_evaluate)
