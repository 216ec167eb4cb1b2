"""Classification scores of an epoch from its confusion matrix: accuracy, macro F1, per-class precision/recall.

Macro F1 averages the per-class F1 over the classes that occur among the targets or the predictions (a
class never seen and never predicted says nothing about the network); an undefined precision, recall or
F1 (0/0) counts as 0, as scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def confusion(targets: npt.ArrayLike, predictions: npt.ArrayLike, n_classes: int) -> npt.NDArray[np.int64]:
    """(n_classes, n_classes) counts, rows = true class, columns = predicted class."""
    t = np.asarray(targets, np.int64)
    p = np.asarray(predictions, np.int64)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores(matrix: npt.NDArray[np.int64], classes: Sequence[str]) -> dict[str, Any]:
    """Confusion matrix -> ``accuracy``, ``macro_f1`` and ``per_class`` {class: {precision, recall, cells}}."""
    matrix = np.asarray(matrix, np.int64)
    total = int(matrix.sum())
    hits = np.diag(matrix).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(actual > 0, hits / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (actual > 0) | (predicted > 0)
    return {
        "accuracy": float(hits.sum() / total) if total else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "cells": int(actual[i])}
            for i, name in enumerate(classes)
        },
    }
