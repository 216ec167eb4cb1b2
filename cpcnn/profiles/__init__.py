"""Profiles workflow on any profile table: read/write, aggregate, sphere, match.

A profile table is a pandas DataFrame of ``Metadata_*`` columns plus float32 feature columns.
Numeric kernels work on numpy arrays; public functions take DataFrames and return DataFrames or
frozen dataclasses. Durable artifacts: ``Sphering`` (one ``.npz``) and ``Library`` (a folder).
"""

from cpcnn.profiles.aggregate import AggregateResult, aggregate, collapse_by_id, group_median, group_sums
from cpcnn.profiles.matching import Library
from cpcnn.profiles.similarity import cosine_similarity, normalize_rows, top_k_cosine
from cpcnn.profiles.sphering import (
    ControlSelector,
    ControlSpectrum,
    Sphering,
    fit_sphering,
    fit_sphering_path,
    whitening_matrix,
    zca_matrix,
)
from cpcnn.profiles.streaming import aggregate_files, cells_to_wells
from cpcnn.profiles.tables import (
    COUNT_CELLS,
    COUNT_ROWS,
    feature_columns,
    feature_matrix,
    metadata_columns,
    read_profiles,
    write_profiles,
)

__all__ = [
    "COUNT_CELLS",
    "COUNT_ROWS",
    "AggregateResult",
    "ControlSelector",
    "ControlSpectrum",
    "Library",
    "Sphering",
    "aggregate",
    "aggregate_files",
    "cells_to_wells",
    "collapse_by_id",
    "cosine_similarity",
    "feature_columns",
    "feature_matrix",
    "fit_sphering",
    "fit_sphering_path",
    "group_median",
    "group_sums",
    "metadata_columns",
    "normalize_rows",
    "read_profiles",
    "top_k_cosine",
    "whitening_matrix",
    "write_profiles",
    "zca_matrix",
]
