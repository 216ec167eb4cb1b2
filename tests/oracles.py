"""Loop-based reference implementations that the vectorized kernels are checked against.

Deliberately simple and slow: one Python loop per query/group, textbook formulas, no shared code
with cpcnn.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import fisher_exact


def ranked_labels_naive(scores: np.ndarray, positives: np.ndarray) -> list[bool]:
    """One query: labels sorted by decreasing score, positives first among equal scores."""
    items = sorted(zip(scores.tolist(), positives.tolist(), strict=True), key=lambda t: (-t[0], not t[1]))
    return [bool(p) for _, p in items]


def average_precision_naive(scores: np.ndarray, positives: np.ndarray) -> float:
    """Non-interpolated AP of one query: mean of precision@k at each positive's rank k."""
    labels = ranked_labels_naive(scores, positives)
    hits, total = 0, 0.0
    for k, is_pos in enumerate(labels, start=1):
        if is_pos:
            hits += 1
            total += hits / k
    return total / hits if hits else math.nan


def interpolated_average_precision_naive(scores: np.ndarray, positives: np.ndarray) -> float:
    """Interpolated AP of one query: mean over positives j of max_{k >= rank_j} precision@k."""
    labels = ranked_labels_naive(scores, positives)
    precision = []
    hits = 0
    for k, is_pos in enumerate(labels, start=1):
        hits += is_pos
        precision.append(hits / k)
    values = [max(precision[k:]) for k, is_pos in enumerate(labels) if is_pos]
    return sum(values) / len(values) if values else math.nan


def foe_naive(
    scores: np.ndarray, positives: np.ndarray, percentile: float = 99.0
) -> tuple[float, float, list[int]]:
    """(raw odds ratio, one-sided p-value, [a, b, c, d]) via scipy.stats.fisher_exact, one query."""
    threshold = float(np.percentile(scores, percentile))
    a = b = c = d = 0
    for s, p in zip(scores.tolist(), positives.tolist(), strict=True):
        above = s > threshold
        if above and p:
            a += 1
        elif above:
            b += 1
        elif p:
            c += 1
        else:
            d += 1
    res = fisher_exact([[a, b], [c, d]], alternative="greater")
    return float(res.statistic), float(res.pvalue), [a, b, c, d]


def top_k_naive(
    queries: np.ndarray, library: np.ndarray, k: int, exclude: list[int] | None = None
) -> list[list[int]]:
    """Library rows of the k best cosine matches per query (float64, ties by row index)."""
    out = []
    lib = library.astype(np.float64)
    for qi, q in enumerate(queries.astype(np.float64)):
        scored = []
        for j, row in enumerate(lib):
            if exclude is not None and exclude[qi] == j:
                continue
            denom = np.linalg.norm(q) * np.linalg.norm(row)
            scored.append((-(float(q @ row) / denom if denom > 0 else 0.0), j))
        out.append([j for _, j in sorted(scored)[:k]])
    return out


def group_reduce_naive(values: np.ndarray, keys: list[object], op: str) -> dict[object, np.ndarray]:
    """Per distinct key: np.median or np.mean (float64) of its rows."""
    groups: dict[object, list[np.ndarray]] = {}
    for key, row in zip(keys, values, strict=True):
        groups.setdefault(key, []).append(row)
    reduce = np.median if op == "median" else (lambda x, axis: np.mean(np.asarray(x, np.float64), axis=axis))
    return {key: np.asarray(reduce(np.stack(rows), axis=0)) for key, rows in groups.items()}


def zca_naive(controls: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Paper ZCA written directly: mean, W = V diag(1/sqrt(s + lam)) V^T with C = X^T X / n."""
    mu = controls.mean(axis=0)
    x = controls - mu
    cov = x.T @ x / len(x)
    s, v = np.linalg.eigh(cov)
    return mu, v @ np.diag(1.0 / np.sqrt(np.clip(s, 0, None) + lam)) @ v.T


def paper_interpolated_precision_naive(
    scores: np.ndarray, positives: np.ndarray, levels: list[float]
) -> list[float]:
    """One query's interpolated precision at decreasing recall ``levels``, as the CNN-1 paper's published
    evaluation computes it, written out with loops.

    The precision-recall curve of scikit-learn <= 1.0: walking down the scores, every block of equal
    scores is one point (precision and recall after the whole block); the walk stops at the first
    point with full recall. Read from the full-recall end, precision is replaced by its running
    maximum, and a point (precision 1, recall 0) closes the curve. Each level takes the running
    maximum at the curve position reached so far, then the position advances past every curve point
    whose recall exceeds that level.
    """
    items = sorted(zip(scores.tolist(), positives.tolist(), strict=True), key=lambda t: -t[0])
    total = sum(bool(p) for _, p in items)
    points: list[tuple[float, float]] = []
    hits = seen = k = 0
    while k < len(items) and hits < total:
        score = items[k][0]
        while k < len(items) and items[k][0] == score:
            hits += bool(items[k][1])
            seen += 1
            k += 1
        points.append((hits / seen, hits / total))
    curve = points[::-1] + [(1.0, 0.0)]
    running, best = [], -math.inf
    for precision, _ in curve:
        best = max(best, precision)
        running.append(best)
    values, position = [], 0
    for level in levels:
        values.append(running[position])
        while level < curve[position][1]:
            position += 1
    return values


def paper_average_precision_naive(scores: np.ndarray, positives: np.ndarray, n_points: int) -> float:
    """The paper's AP of one query: mean interpolated precision on ``n_points`` recall levels from 1 to 0."""
    values = paper_interpolated_precision_naive(
        scores, positives, np.linspace(0.0, 1.0, n_points)[::-1].tolist()
    )
    return sum(values) / len(values)


def paper_odds_ratio_naive(scores: np.ndarray, positives: np.ndarray, percentile: float = 99.0) -> float:
    """One query's folds of enrichment as the paper's published code: scipy's odds ratio, infinity -> d."""
    raw, _, (_, _, _, d) = foe_naive(scores, positives, percentile)
    return float(d) if math.isinf(raw) else raw


def features_float64(net: object, crops: np.ndarray, *, layer: str = "block6a_activation", batch: int = 32) -> np.ndarray:
    """(N, S, S, C) float32 crops -> (N, D) float64 features of our torch network run in float64.

    The reference for float32 round-off, independent of ONNX Runtime: a float64 copy of ``net``
    (an ``EfficientNetB0``), with depthwise convolutions as explicit shifted multiply-adds (torch's
    float64 grouped convolution loops over channels and is ~50x slower).
    """
    import copy

    import torch
    import torch.nn.functional as F
    from cpcnn.training.arch import tf_same_pads
    from cpcnn.training.net import FeatureExtractor, SameConv2d

    def depthwise(conv: SameConv2d) -> object:
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        weight = conv.weight[:, 0]  # (C, k, k)

        def forward(x: torch.Tensor) -> torch.Tensor:
            top, bottom = tf_same_pads(int(x.shape[-2]), kernel, stride)
            left, right = tf_same_pads(int(x.shape[-1]), kernel, stride)
            x = F.pad(x, (left, right, top, bottom))
            rows = (x.shape[-2] - kernel) // stride + 1
            cols = (x.shape[-1] - kernel) // stride + 1
            out = torch.zeros((*x.shape[:2], rows, cols), dtype=x.dtype)
            for i in range(kernel):
                for j in range(kernel):
                    window = x[:, :, i : i + stride * (rows - 1) + 1 : stride, j : j + stride * (cols - 1) + 1 : stride]
                    out.addcmul_(window, weight[:, i, j].view(1, -1, 1, 1))
            return out

        return forward

    net64 = copy.deepcopy(net).double().eval()
    for module in net64.modules():
        if isinstance(module, SameConv2d) and module.groups > 1 and module.bias is None:
            module.forward = depthwise(module)
    extractor = FeatureExtractor(net64, layer)
    with torch.no_grad():
        chunks = [
            extractor(torch.from_numpy(crops[start : start + batch].astype(np.float64))).numpy()
            for start in range(0, len(crops), batch)
        ]
    return np.concatenate(chunks) if chunks else np.zeros((0, extractor.feature_size))
