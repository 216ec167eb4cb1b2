"""Small synthetic profile tables: DMSO controls plus compounds whose MoA shapes their profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
LINCS = (
    REPO_ROOT.parent
    / "shared"
    / "data"
    / "profiles"
    / "lincs-SQ00015054"
    / "SQ00015054_normalized_feature_select.csv.gz"
)
LINCS_CONTROLS = "Metadata_broad_sample=DMSO"
LINCS_ID = "Metadata_broad_sample"
LINCS_MOA = "Metadata_moa"


def synthetic_profiles(
    *,
    n_features: int = 12,
    n_controls: int = 30,
    n_moas: int = 4,
    per_moa: int = 2,
    replicates: int = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Controls (``Metadata_broad_sample == "DMSO"``, no MoA) then compounds; features ``f0..``, float32."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (n_moas, n_features))
    rows: list[dict[str, object]] = []
    values: list[np.ndarray] = []
    for i in range(n_controls):
        rows.append({"Metadata_Well": f"C{i:02d}", "Metadata_broad_sample": "DMSO", "Metadata_moa": None})
        values.append(rng.normal(0, 1, n_features))
    for moa in range(n_moas):
        for compound in range(per_moa):
            signature = centers[moa] + rng.normal(0, 0.5, n_features)
            for rep in range(replicates):
                rows.append(
                    {
                        "Metadata_Well": f"T{moa}{compound}{rep}",
                        "Metadata_broad_sample": f"cmp-{moa}-{compound}",
                        "Metadata_moa": f"moa-{moa}",
                    }
                )
                values.append(signature + rng.normal(0, 0.3, n_features))
    features = pd.DataFrame(np.asarray(values, np.float32), columns=[f"f{j}" for j in range(n_features)])
    table = pd.concat([pd.DataFrame(rows), features], axis=1)
    table.insert(0, "Metadata_Plate", "P1")
    return table
