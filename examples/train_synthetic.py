"""Does weakly supervised training make profiles that retrieve mechanisms of action better? End to end.

The CNN-1 paper's causal claim, tested with nothing but this project's public commands on a synthetic
screen whose answers are known (see ``examples/train_synthetic.md`` for the measured table):

1. ``cpcnn synth plate``: several plates, >= 20 treatments in >= 5 MoAs, DMSO controls, plate confounders.
2. Split treatments: per MoA, the first ``train_per_moa`` treatments train, the others are held out.
3. ``cpcnn train prepare`` on the training wells (training treatments + controls) -> 8-bit PNGs + index.
4. ``cpcnn train run --config run.toml``: weakly supervised, the label is the treatment.
5. ``cpcnn train init`` with the same seed and class count: the untrained network of the same architecture.
6. ``cpcnn models import`` of both into a private store (``CPCNN_HOME=OUT/home``); import verifies ONNX
   Runtime against torch; this script checks it again on real crops of held-out cells.
7. ``cpcnn profile`` with each model, held-out treatments and controls only -> ``wells.parquet``; the
   baseline (:mod:`cpcnn.baseline`, per-channel crop statistics) writes the same layout through
   :class:`cpcnn.plates.output.PlateOutput`, cropping with :class:`cpcnn.batching.SiteCrops`.
8. Per feature set: ``cpcnn sphering fit`` on the control wells, ``apply``, then ``cpcnn evaluate`` of MoA
   retrieval among held-out treatments with ``--convention copairs`` and ``--convention paper``.

Prints one JSON object (``trained_map``, ``untrained_map``, ``baseline_map``, their folds of enrichment,
both conventions, timings) and writes it to ``OUT/result.json``. ``--quick`` is the CI-sized run.
A rerun reuses the synthetic screen, the prepared images and a finished training run in OUT;
delete OUT for a clean timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CONTROL = "DMSO"
TREATMENT = "Metadata_Treatment"
MOA = "Metadata_MoA"
#: One plate's well, for well-level retrieval (every replicate well is its own query).
WELL_ID = "Metadata_PlateWell"
FEATURE_SETS = ("trained", "untrained", "baseline")


@dataclass(frozen=True)
class Sizes:
    """Everything that sets how long a run takes."""

    plates: int
    wells: int  # design_layout: 69 wells -> 20 treatments x 3 replicates in 5 MoAs + 9 control wells
    sites: int
    cells_per_site: int
    size: int
    train_per_moa: int  # treatments per MoA used for training; the rest are held out
    epochs: int
    max_steps: int
    batch_size: int
    lr: float
    augment: bool
    sphering_lambda: float
    effect_scale: float  # cpcnn synth plate --effect-scale: how subtle the treatments are


SIZES = {
    "quick": Sizes(plates=2, wells=69, sites=1, cells_per_site=12, size=256, train_per_moa=1, epochs=30,
                   max_steps=480, batch_size=8, lr=0.02, augment=False, sphering_lambda=1e-2, effect_scale=0.4),
    "full": Sizes(plates=3, wells=96, sites=2, cells_per_site=12, size=256, train_per_moa=1, epochs=30,
                  max_steps=2000, batch_size=8, lr=0.02, augment=False, sphering_lambda=1e-2, effect_scale=1.0),
}


class Stages:
    """Wall-clock seconds of each stage, printed as they finish (the machine may be shared)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 1)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {self.seconds[name]} s", file=sys.stderr, flush=True)
        return result


def cpcnn(*args: object, verbose: bool = False) -> subprocess.CompletedProcess[str]:
    """Run one ``cpcnn`` command as a user would (a fresh process); raise with its last lines on failure."""
    command = [sys.executable, "-m", "cpcnn.cli.main", *(["-v"] if verbose else []), *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"cpcnn {' '.join(map(str, args[:2]))} exited {done.returncode}:\n{tail}")
    return done


def split_treatments(treatments: pd.DataFrame, train_per_moa: int) -> tuple[list[str], list[str]]:
    """Per MoA (sorted by name): the first ``train_per_moa`` train, the rest are held out."""
    train, held_out = [], []
    treated = treatments[treatments[TREATMENT] != CONTROL]
    for _, group in treated.groupby(MOA, sort=True):
        names = sorted(group[TREATMENT])
        if len(names) <= train_per_moa + 2:
            raise SystemExit(f"MoA {group[MOA].iloc[0]} has {len(names)} treatments; need > {train_per_moa + 2}")
        train += names[:train_per_moa]
        held_out += names[train_per_moa:]
    return train, held_out


def write_subset_load_data(load_data: Path, wells: set[str], out: Path) -> Path:
    """The LoadData rows of ``wells`` (every plate), beside the original so relative paths still resolve."""
    table = pd.read_csv(load_data, dtype={"Metadata_Well": str})
    table[table["Metadata_Well"].isin(wells)].to_csv(out, index=False)
    return out


def write_run_config(path: Path, *, index: Path, out: Path, sizes: Sizes, seed: int, threads: int) -> Path:
    """The ``cpcnn train run`` settings as a TOML file (paths relative to it), kept in the run folder."""
    base = path.parent
    path.write_text(
        "\n".join([
            f'index = "{os.path.relpath(index, base)}"',
            f'out = "{os.path.relpath(out, base)}"',
            f'label = "{TREATMENT}"',
            f"epochs = {sizes.epochs}",
            f"max-steps = {sizes.max_steps}",
            f"batch-size = {sizes.batch_size}",
            f"lr = {sizes.lr}",
            f"seed = {seed}",
            "min-cells = 50",
            "val-max-cells = 200",
            f"threads = {threads}",
            "quiet = true",
            f"no-augment = {str(not sizes.augment).lower()}",
            "",
        ])
    )
    return path


def import_model(checkpoint: Path, name: str) -> float:
    """``cpcnn models import`` -> the ORT-vs-torch max |diff| the import measured (from its log line)."""
    done = cpcnn("models", "import", checkpoint, "--name", name, "--overwrite", verbose=True)
    found = re.search(r"ORT vs torch max\|diff\| ([0-9.eE+-]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"models import did not report its parity check:\n{done.stderr[-2000:]}")
    return float(found.group(1))


def onnx_vs_torch(checkpoint: Path, cells_file: Path, screen: Path) -> dict[str, float]:
    """Features ``cpcnn profile`` wrote for one site (ONNX Runtime) vs the torch network on the same
    crops (SiteCrops of the same illumination-corrected site), in float64 and float32."""
    import torch
    from cpcnn.training.checkpoint import load_checkpoint
    from cpcnn.training.net import FeatureExtractor

    from cpcnn._types import FEATURE_LAYER
    from cpcnn.batching import SiteCrops
    from cpcnn.plates.load_data import read_load_data
    from cpcnn.plates.locations import open_locations
    from cpcnn.plates.pipeline import load_site
    from cpcnn.profiles import feature_columns

    cells = pd.read_parquet(cells_file)
    key = tuple(str(cells[c].iloc[0]) for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site"))
    site = next(s for s in read_load_data(screen / "load_data.csv") if s.key == key)
    locations = open_locations(screen / "nuclei.csv").for_site(site)
    checkpoint = load_checkpoint(checkpoint)
    crops = SiteCrops.check(load_site(site, illum=True), locations.centers, normalization=checkpoint.normalization)
    batch = np.array(crops.crop(slice(0, len(crops))))
    extractor = FeatureExtractor(checkpoint.build().eval(), FEATURE_LAYER)
    with torch.no_grad():
        exact = extractor.double()(torch.from_numpy(batch.astype(np.float64))).numpy()
        single = extractor.float()(torch.from_numpy(batch)).numpy()
    onnx = cells[feature_columns(cells)].to_numpy(np.float64)
    return {
        "cells": len(batch),
        "max_abs_diff_vs_float64_torch": float(np.abs(onnx - exact).max()),
        "max_abs_diff_vs_float32_torch": float(np.abs(onnx - single).max()),
        "max_abs_feature": float(np.abs(exact).max()),
        "max_abs_diff_relative": float(np.abs(onnx - exact).max() / max(np.abs(exact).max(), 1e-30)),
    }


def profile(model: str, screen: Path, out: Path, wells: list[str], threads: int) -> Path:
    """``cpcnn profile`` of the given wells on every plate -> ``out/wells.parquet`` (a fresh folder: the
    model may have been re-imported since, and ``cpcnn profile`` refuses to mix two models' cells)."""
    shutil.rmtree(out, ignore_errors=True)
    cpcnn(
        "profile", "--load-data", screen / "load_data.csv", "--locations", screen / "nuclei.csv",
        "--platemap", screen / "platemap.csv", "--illum", "--model", model, "--out", out,
        "--sites", ",".join(f"*/{w}/*" for w in wells), "--threads", threads, "--quiet",
    )
    return out / "wells.parquet"


def profile_baseline(screen: Path, out: Path, wells: list[str], normalization: str) -> Path:
    """Baseline statistics of the same sites and crops, written in the ``cpcnn profile`` layout."""
    from cpcnn.baseline import baseline_cells
    from cpcnn.plates.load_data import read_load_data
    from cpcnn.plates.locations import open_locations
    from cpcnn.plates.output import PlateOutput
    from cpcnn.plates.pipeline import load_site
    from cpcnn.plates.platemap import read_platemap

    output = PlateOutput(out)
    locations = open_locations(screen / "nuclei.csv")
    for site in read_load_data(screen / "load_data.csv"):
        if site.well not in wells or output.done(site):
            continue
        metadata = {"Metadata_Plate": site.plate, "Metadata_Well": site.well, "Metadata_Site": site.site}
        table = baseline_cells(
            load_site(site, illum=True), locations.for_site(site), metadata=metadata, normalization=normalization
        )
        output.write_site(site, table)
    output.finish(platemap=read_platemap(screen / "platemap.csv"), run={"model": "baseline"})
    return output.wells_path


def evaluate(wells: Path, folder: Path, held_out: list[str], lam: float) -> dict[str, Any]:
    """Sphere on the control wells, keep held-out treatments, evaluate MoA retrieval both ways."""
    from cpcnn.profiles import feature_columns

    folder.mkdir(parents=True, exist_ok=True)
    transform, sphered = folder / "sphering.npz", folder / "wells_sphered.parquet"
    table = pd.read_parquet(wells)
    features = feature_columns(table)
    # pycytominer's variance threshold at 0: a feature constant on every control well (a unit the
    # network never switches on for these cells) carries nothing to standardize by.
    varying = table.loc[table[TREATMENT] == CONTROL, features].astype(np.float64).std(ddof=0) > 0
    kept = [f for f in features if varying[f]]
    cpcnn("sphering", "fit", wells, "--controls", f"{TREATMENT}={CONTROL}", "--method", "zca-cor",
          "--lambda", lam, "--features", ",".join(kept), "--out", transform)
    cpcnn("sphering", "apply", transform, wells, "--out", sphered)
    metrics: dict[str, Any] = {"features": len(features), "features_constant_on_controls": len(features) - len(kept)}
    for label, path in (("sphered", sphered), ("unsphered", wells)):
        rows = pd.read_parquet(path)
        rows = rows[rows[TREATMENT].isin(held_out)].assign(
            **{WELL_ID: lambda t: t["Metadata_Plate"].astype(str) + "/" + t["Metadata_Well"].astype(str)}
        )
        query = folder / f"held_out_{label}.parquet"
        rows.to_parquet(query, index=False)
        levels = (("treatment", TREATMENT), ("well", WELL_ID)) if label == "sphered" else (("treatment", TREATMENT),)
        for level, id_column in levels:
            for convention in ("copairs", "paper"):
                out = folder / f"metrics_{label}_{level}_{convention}.json"
                cpcnn("evaluate", query, "--id", id_column, "--annotation", MOA, "--convention", convention,
                      "--out", out)
                result = json.loads(out.read_text())
                metrics[f"{label}_{level}_{convention}"] = {
                    "map": result["mean_average_precision"],
                    "folds_of_enrichment": result["folds_of_enrichment"],
                    "n_queries": result["n_queries"],
                }
    return metrics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (created; a rerun reuses its screen and training run)")
    parser.add_argument("--quick", action="store_true", help="the CI-sized run (a few minutes on 2 cores)")
    parser.add_argument("--seed", type=int, default=0, help="screen and training seed")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch and inference threads (default 1: a run is deterministic per thread count, and on a "
        "shared 2-core machine one thread trained 2-7x faster than two)",
    )
    parser.add_argument("--effect-scale", type=float, help="override the size's synthetic effect scale")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sizes = SIZES["quick" if args.quick else "full"]
    if args.effect_scale is not None:
        sizes = dataclasses.replace(sizes, effect_scale=args.effect_scale)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["CPCNN_HOME"] = str(out / "home")  # a private model store, inherited by every command
    logging.basicConfig(level=logging.WARNING)
    stages = Stages()
    screen = out / "screen"

    if not (screen / "treatments.csv").is_file():
        stages.run("synth", cpcnn, "synth", "plate", "--out", screen, "--plates", sizes.plates, "--wells",
                   sizes.wells, "--sites", sizes.sites, "--cells-per-site", sizes.cells_per_site,
                   "--size", sizes.size, "--seed", args.seed, "--effect-scale", sizes.effect_scale)
    treatments = pd.read_csv(screen / "treatments.csv")
    platemap = pd.read_csv(screen / "platemap.csv", dtype=str)
    train, held_out = split_treatments(treatments, sizes.train_per_moa)
    wells_of = platemap.groupby(TREATMENT)["Metadata_Well"].apply(list).to_dict()
    control_wells = wells_of[CONTROL]
    train_wells = sorted({w for t in [*train, CONTROL] for w in wells_of[t]})
    eval_wells = sorted({w for t in [*held_out, CONTROL] for w in wells_of[t]})

    prepared, run_dir = out / "prepared", out / "run"
    load_train = write_subset_load_data(screen / "load_data.csv", set(train_wells), screen / "load_data_train.csv")
    stages.run("train_prepare", cpcnn, "train", "prepare", "--load-data", load_train, "--locations",
               screen / "nuclei.csv", "--platemap", screen / "platemap.csv", "--out", prepared,
               "--workers", args.threads, "--quiet")
    config = write_run_config(out / "run.toml", index=prepared / "index.csv", out=run_dir, sizes=sizes,
                              seed=args.seed, threads=args.threads)
    if not (run_dir / "last.pt").is_file():
        stages.run("train_run", cpcnn, "train", "run", "--config", config)
    classes = json.loads((run_dir / "classes.json").read_text())
    n_classes = len(classes["classes"] if isinstance(classes, dict) else classes)
    untrained = out / "untrained.pt"
    stages.run("train_init", cpcnn, "train", "init", "--out", untrained, "--seed", args.seed,
               "--num-classes", n_classes, "--quiet")

    import_diff = {
        "trained": stages.run("import_trained", import_model, run_dir / "last.pt", "trained"),
        "untrained": stages.run("import_untrained", import_model, untrained, "untrained"),
    }
    wells_tables = {}
    for name in ("trained", "untrained"):
        wells_tables[name] = stages.run(f"profile_{name}", profile, name, screen, out / f"profile_{name}",
                                        eval_wells, args.threads)
    normalization = json.loads(cpcnn("models", "info", "trained").stdout)["normalization"]
    wells_tables["baseline"] = stages.run("profile_baseline", profile_baseline, screen, out / "profile_baseline",
                                          eval_wells, normalization)
    parity = {
        name: stages.run(f"parity_{name}", onnx_vs_torch, checkpoint,
                         sorted((out / f"profile_{name}" / "cells").glob("*.parquet"))[0], screen)
        for name, checkpoint in (("trained", run_dir / "last.pt"), ("untrained", untrained))
    }
    metrics = {
        name: stages.run(f"evaluate_{name}", evaluate, wells_tables[name], out / "evaluate" / name, held_out,
                         sizes.sphering_lambda)
        for name in FEATURE_SETS
    }
    train_metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]

    result: dict[str, Any] = {"size": "quick" if args.quick else "full"}
    for name in FEATURE_SETS:
        for level, suffix in (("well", ""), ("treatment", "_treatment")):
            copairs, paper = metrics[name][f"sphered_{level}_copairs"], metrics[name][f"sphered_{level}_paper"]
            result[f"{name}_map{suffix}"] = copairs["map"]
            result[f"{name}_folds_of_enrichment{suffix}"] = copairs["folds_of_enrichment"]
            result[f"{name}_map{suffix}_paper"] = paper["map"]
            result[f"{name}_folds_of_enrichment{suffix}_paper"] = paper["folds_of_enrichment"]
    result.update({
        "metrics": metrics,
        "onnx_vs_torch_import": import_diff,
        "onnx_vs_torch_profiled_cells": parity,
        "train_seconds": stages.seconds.get("train_run"),
        "train_last_epoch": train_metrics[-1] if train_metrics else None,
        "treatments": {"train": train, "held_out": held_out, "control_wells": len(control_wells)},
        "sizes": asdict(sizes),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "stage_seconds": stages.seconds,
    })
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
