"""The learning curves of a run (loss, accuracy, macro F1 per epoch) as a PNG, when matplotlib is there."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

CURVES_PNG = "curves.png"


def plot_curves(metrics_path: Path, out: Path) -> Path | None:
    """``metrics.jsonl`` -> ``out/curves.png`` (complete epochs only); None and a warning without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        logger.warning("no learning-curve plot: matplotlib is missing (install the 'plots' extra)")
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("complete")]
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for axis, (name, title) in zip(
        axes, (("loss", "loss"), ("accuracy", "accuracy"), ("macro_f1", "macro F1")), strict=True
    ):
        for split, style in (("train", "-o"), ("val", "--s")):
            values = [r.get(f"{split}_{name}") for r in rows]
            if any(v is not None for v in values):
                axis.plot(epochs, [float("nan") if v is None else v for v in values], style, label=split)
        axis.set_title(title)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.legend()
    path = out / CURVES_PNG
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
