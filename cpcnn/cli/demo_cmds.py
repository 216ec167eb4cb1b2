"""``cpcnn demo``: the whole workflow on a small synthetic screen, with the commands a user would chain.

It starts nothing external: it writes a screen with known mechanisms of action (``cpcnn synth plate``),
profiles it (``cpcnn profile``), spheres the well profiles on the control wells (``cpcnn sphering
sweep``/``fit``/``apply``), evaluates how well treatments retrieve others of their MoA (``cpcnn
evaluate``, before and after sphering) and writes a PNG report. Each step is the real command, run in
this process, so the demo fails exactly where a user's chain would.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cpcnn.errors import CpcnnError, InputError

#: Sphering regularizers tried, as multiples of the controls' mean feature variance: features of different
#: networks differ by orders of magnitude in scale (an untrained network's are ~1e-5), lambda must follow.
RELATIVE_LAMBDAS = (1e-2, 1e-1, 1.0, 10.0)
TREATMENT = "Metadata_Treatment"
MOA = "Metadata_MoA"
CONTROLS = f"{TREATMENT}=DMSO"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "demo",
        help="run the whole workflow on a small synthetic screen",
        description=(
            "Generate a small synthetic screen, profile it, sphere on the controls, evaluate MoA "
            "retrieval and write a PNG report. Needs a model in the store (cpcnn models fetch cnn1)."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default %(default)s)")
    p.add_argument("--model", default="cnn1", help="model in the store (default %(default)s)")
    p.add_argument("--plates", type=int, default=2, help="plates (default %(default)s)")
    p.add_argument("--wells", type=int, default=32, help="wells per plate (default %(default)s)")
    p.add_argument("--sites", type=int, default=1, help="sites per well (default %(default)s)")
    p.add_argument("--cells-per-site", type=int, default=40, help="cells per site (default %(default)s)")
    p.add_argument("--size", type=int, default=480, help="site side in pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from cpcnn.model_store import ModelStore

    try:
        ModelStore().resolve(str(args.model))
    except CpcnnError as exc:
        raise InputError(
            f"{exc}; get CNN-1 with 'cpcnn models fetch cnn1' (or 'cpcnn models import FILE --name NAME')"
        ) from exc
    out: Path = args.out
    screen, profiles, report = out / "screen", out / "profiles", out / "report"
    report.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def step(name: str, argv: Sequence[str]) -> None:
        print(f"\n$ cpcnn {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        _run(argv)
        timings[name] = round(time.perf_counter() - started, 1)

    step("synth", [
        "synth", "plate", "--out", str(screen), "--plates", str(args.plates), "--wells", str(args.wells),
        "--sites", str(args.sites), "--cells-per-site", str(args.cells_per_site), "--size", str(args.size),
        "--seed", str(args.seed),
    ])
    step("profile", [
        "profile", "--load-data", str(screen / "load_data.csv"), "--locations", str(screen / "nuclei.csv"),
        "--illum", "--platemap", str(screen / "platemap.csv"), "--model", str(args.model),
        "--out", str(profiles), *(["--quiet"] if args.quiet else []),
    ])
    wells = profiles / "wells.parquet"
    common = ["--id", TREATMENT, "--annotation", MOA, "--sep", ""]
    lambdas = _lambdas(wells)
    step("sweep", [
        "sphering", "sweep", str(wells), "--controls", CONTROLS, "--lambdas", ",".join(f"{x:.3g}" for x in lambdas),
        *common, "--out", str(report / "sweep.json"), "--plot", str(report / "sweep.png"),
    ])
    lam = _best_lambda(report / "sweep.json")
    step("fit", [
        "sphering", "fit", str(wells), "--controls", CONTROLS, "--lambda", f"{lam:g}",
        "--out", str(report / "sphering.npz"),
    ])
    sphered = report / "wells_sphered.parquet"
    step("apply", ["sphering", "apply", str(report / "sphering.npz"), str(wells), "--out", str(sphered)])
    results = {}
    for name, table in (("raw", wells), ("sphered", sphered)):
        treatments = _without_controls(table, report / f"treatments_{name}.parquet")
        step(f"evaluate_{name}", [
            "evaluate", str(treatments), *common, "--out", str(report / f"metrics_{name}.json"),
            "--plot", str(report / f"retrieval_{name}.png"),
        ])
        results[name] = json.loads((report / f"metrics_{name}.json").read_text())
    summary = _summary(args, out, lam, results, timings)
    (report / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary)
    return 0


def _run(argv: Sequence[str]) -> None:
    """One ``cpcnn`` command in this process; a failure stops the demo with that command's reason."""
    from cpcnn.cli.main import build_parser

    args = build_parser().parse_args(list(argv))
    code = int(args.func(args) or 0)
    if code != 0:
        raise CpcnnError(f"'cpcnn {argv[0]}' exited with {code}; see the messages above")


def _lambdas(wells: Path) -> list[float]:
    """:data:`RELATIVE_LAMBDAS` times the control wells' mean feature variance."""
    import numpy as np

    from cpcnn.profiles import read_profiles
    from cpcnn.profiles.tables import feature_columns

    table = read_profiles(wells)
    controls = table.loc[table[TREATMENT] == "DMSO", feature_columns(table)].to_numpy(np.float64)
    if len(controls) < 2:
        raise InputError(f"{wells} has {len(controls)} control wells; sphering needs at least 2")
    scale = float(controls.var(axis=0).mean()) or 1.0
    return [scale * r for r in RELATIVE_LAMBDAS]


def _best_lambda(sweep_json: Path) -> float:
    """The swept lambda with the highest mAP (the demo's screen is its own validation set)."""
    return float(json.loads(sweep_json.read_text())["best_lambda_by_map"])


def _without_controls(table: Path, out: Path) -> Path:
    """Treatment wells only: controls are the reference, not queries with an MoA."""
    from cpcnn.profiles import read_profiles, write_profiles

    profiles = read_profiles(table)
    write_profiles(profiles[profiles[TREATMENT] != "DMSO"], out)
    return out


def _summary(
    args: argparse.Namespace, out: Path, lam: float, results: dict[str, Any], timings: dict[str, float]
) -> dict[str, Any]:
    run = json.loads((out / "profiles" / "run.json").read_text())
    metrics = {
        name: {
            "mAP": round(r["mean_average_precision"], 4),
            "folds_of_enrichment": round(r["folds_of_enrichment"], 2),
            "queries": r["n_queries"],
        }
        for name, r in results.items()
    }
    return {
        "model": args.model,
        "screen": {
            "plates": args.plates, "wells": args.wells, "sites": args.sites,
            "cells_per_site": args.cells_per_site, "size": args.size, "seed": args.seed,
        },
        "cells": run.get("cells"),
        "cells_per_s": run.get("cells_per_s"),
        "sphering_lambda": lam,
        "retrieval": metrics,
        "seconds": timings,
        "outputs": {
            "screen": str(out / "screen"),
            "cells": str(out / "profiles" / "cells"),
            "wells": str(out / "profiles" / "wells.parquet"),
            "sphered_wells": str(out / "report" / "wells_sphered.parquet"),
            "report": [str(out / "report" / f"retrieval_{n}.png") for n in results] + [str(out / "report" / "sweep.png")],
            "summary": str(out / "report" / "demo.json"),
        },
    }


def _print_summary(summary: dict[str, Any]) -> None:
    print("\ncpcnn demo: done")
    print(f"  {summary['cells']} cells profiled with model {summary['model']} ({summary['cells_per_s']} cells/s)")
    for name, m in summary["retrieval"].items():
        print(f"  MoA retrieval, {name} well profiles: mAP {m['mAP']}, folds of enrichment {m['folds_of_enrichment']}")
    print(f"  sphering lambda {summary['sphering_lambda']:g} (best of the sweep)")
    for name, path in summary["outputs"].items():
        print(f"  {name}: {', '.join(path) if isinstance(path, list) else path}")
