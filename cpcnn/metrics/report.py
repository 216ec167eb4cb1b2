"""PNG reports: precision-recall curves and metrics versus sphering lambda (``plots`` extra).

matplotlib is imported lazily with the Agg backend, so importing cpcnn never needs a display or the
extra; a missing matplotlib raises CpcnnError naming the extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cpcnn.errors import CpcnnError
from cpcnn.metrics.retrieval import RECALL_GRID, RetrievalResult
from cpcnn.metrics.sweep import SweepResult
from cpcnn.profiles.tables import PathLike


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CpcnnError("plots need matplotlib: pip install 'cpcnn[plots]'") from exc
    return plt


def _draw_sweep(ax: Any, sweep: SweepResult) -> None:
    lams = [p.lam for p in sweep.points]
    ax.plot(lams, [p.mean_average_precision for p in sweep.points], "o-", label="mAP")
    ax.plot(
        lams, [p.mean_average_precision_interpolated for p in sweep.points], "s--", label="mAP (interpolated)"
    )
    ax.axhline(sweep.baseline.mean_average_precision, color="grey", lw=0.8, ls=":", label="mAP unsphered")
    ax.set_xscale("log")
    ax.set_xlabel("lambda")
    ax.set_ylabel("mean average precision")
    foe_ax = ax.twinx()
    foe_ax.plot(lams, [p.folds_of_enrichment for p in sweep.points], "^-", color="tab:red", label="FoE")
    foe_ax.set_ylabel("folds of enrichment (top 1%)", color="tab:red")
    lines = ax.get_legend_handles_labels()
    more = foe_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
    ax.set_title(f"sphering ({sweep.settings.get('method', '')}) lambda sweep, {sweep.convention} convention")


def plot_retrieval(
    result: RetrievalResult, path: PathLike, *, sweep: SweepResult | None = None, examples: int = 3
) -> Path:
    """Write a PNG: mean interpolated precision-recall curve plus ``examples`` queries (best, median, worst AP),
    the AP histogram, and metrics versus lambda when ``sweep`` is given; empty results draw their message."""
    plt = _pyplot()
    n_panels = 3 if sweep is not None else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4), constrained_layout=True)
    pr_ax, hist_ax = axes[0], axes[1]
    if result.n_queries_average_precision == 0:
        pr_ax.text(0.5, 0.5, result.message or "no queries", ha="center", va="center", wrap=True)
    else:
        pr_ax.plot(
            RECALL_GRID,
            result.precision_at_recall,
            lw=2.5,
            color="black",
            label=f"mean, {result.n_queries_average_precision} queries",
        )
        all_ap = result.per_query["average_precision"].to_numpy(np.float64)
        with_ap = np.flatnonzero(np.isfinite(all_ap))  # the paper convention's mAP skips some FoE queries
        ap = all_ap[with_ap]
        order = with_ap[np.argsort(-ap, kind="stable")]
        picks = order[
            np.unique(np.linspace(0, len(order) - 1, min(examples, len(order))).round().astype(int))
        ]
        for i in picks:
            name = result.per_query.iloc[i, 0]
            pr_ax.plot(RECALL_GRID, result.curves[i], lw=1, alpha=0.8, label=f"{name} (AP {all_ap[i]:.2f})")
        hist_ax.hist(ap, bins=20, range=(0, 1))
    pr_ax.set_xlabel("recall")
    pr_ax.set_ylabel("interpolated precision")
    pr_ax.set_xlim(0, 1)
    pr_ax.set_ylim(0, 1.02)
    pr_ax.legend(fontsize=7, loc="upper right")
    pr_ax.set_title(
        f"{result.convention}: mAP {result.mean_average_precision:.3f}, FoE {result.folds_of_enrichment:.2f}"
    )
    hist_ax.set_xlabel("average precision per query")
    hist_ax.set_ylabel("queries")
    if sweep is not None:
        _draw_sweep(axes[2], sweep)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(sweep: SweepResult, path: PathLike) -> Path:
    """Write a PNG of mAP, interpolated mAP and FoE versus lambda (log axis), unsphered mAP dotted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    _draw_sweep(ax, sweep)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
