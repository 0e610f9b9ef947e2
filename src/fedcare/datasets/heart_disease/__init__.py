"""UCI Heart Disease, four hospitals: FLamby's Fed-Heart-Disease, reproduced exactly.

Files: the four ``processed.*.data`` files from the UCI repository (CC BY 4.0), copied
byte for byte; see ``PROVENANCE.md`` beside this file. Preprocessing follows FLamby
``flamby/datasets/fed_heart_disease/dataset.py``: drop columns 10-12 (slope, ca, thal),
drop rows with a missing value (740 rows remain), binary label ``num > 0``, per-centre
split ``train_size=0.66`` with ``random_state=43`` (stratified), one-hot ``cp`` and
``restecg`` with the first category dropped (13 features), standardisation with the
centre's training mean/std. fedcare's default standardises federated training with
statistics the sites combine from counts and sums (no row leaves a site), which
removes the gap FLamby's per-centre normalisation leaves; ``normalization="site"``
reproduces FLamby exactly.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Literal

import numpy as np
import pandas as pd

from fedcare.data.federated import FederatedDataset
from fedcare.data.tabular import TabularRecipe, prepare_sites, split_indices
from fedcare.errors import DataError
from fedcare.types import SiteId

__all__ = ["COLUMNS", "SITES", "load_heart_disease", "load_raw"]

#: The 14 columns of the processed files, in order (heart-disease.names).
COLUMNS = (
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
)
#: site id -> (file, display name, sha256 of the file); order = FLamby centre ids 0..3.
SITES: dict[SiteId, tuple[str, str, str]] = {
    SiteId("cleveland"): (
        "processed.cleveland.data",
        "Cleveland Clinic",
        "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
    ),
    SiteId("hungary"): (
        "processed.hungarian.data",
        "Hungarian Inst. of Cardiology",
        "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
    ),
    SiteId("switzerland"): (
        "processed.switzerland.data",
        "Univ. Hospital Zurich/Basel",
        "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
    ),
    SiteId("va-long-beach"): (
        "processed.va.data",
        "VA Long Beach",
        "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
    ),
}
FEATURES = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak")
RECIPE = TabularRecipe(
    features=FEATURES,
    categorical={"cp": (1.0, 2.0, 3.0, 4.0), "restecg": (0.0, 1.0, 2.0)},
    test_fraction=0.34,
    seed=43,
)


def load_raw() -> dict[SiteId, pd.DataFrame]:
    """Read the four shipped files, verify their sha256, apply FLamby's row filter."""
    root = resources.files(__name__)
    frames: dict[SiteId, pd.DataFrame] = {}
    for site, (filename, _, sha) in SITES.items():
        raw = (root / filename).read_bytes()
        if hashlib.sha256(raw).hexdigest() != sha:
            raise DataError(f"{filename}: checksum mismatch, the shipped file was modified")
        df = pd.read_csv(root / filename, header=None, names=list(COLUMNS), na_values="?")
        df = df.drop(columns=["slope", "ca", "thal"]).dropna(axis=0).reset_index(drop=True)
        frames[site] = df
    return frames


def load_heart_disease(normalization: Literal["federated", "site"] = "federated") -> FederatedDataset:
    """Return Fed-Heart-Disease: 4 sites, 486 train / 254 test rows, 13 features.

    Parameters
    ----------
    normalization : {"federated", "site"} (default: "federated")
        Statistics federated training standardises with: combined across sites from
        counts and sums ("federated"), or each centre's own (FLamby's "site").
    """
    frames = load_raw()
    labels = {s: (df["num"].to_numpy() > 0).astype(np.float32) for s, df in frames.items()}
    prepared = prepare_sites(frames, labels, RECIPE)
    groups = {}
    for site, df in frames.items():
        _, test_idx = split_indices(labels[site], test_fraction=RECIPE.test_fraction, seed=RECIPE.seed)
        test = df.iloc[test_idx]
        groups[site] = {
            "sex": np.where(test["sex"].to_numpy() == 1, "male", "female"),
            "age_band": age_band(test["age"].to_numpy()),
        }
    return FederatedDataset(
        name="heart-disease",
        kind="binary",
        sites=prepared.local if normalization == "site" else prepared.federated,
        local_view=prepared.local,
        pooled_view=prepared.pooled,
        feature_names=RECIPE.encoded_names(),
        display_names={s: v[1] for s, v in SITES.items()},
        provenance="UCI Heart Disease (Janosi, Steinbrunn, Pfisterer, Detrano, 1988), CC BY 4.0; "
        "FLamby Fed-Heart-Disease split",
        groups=groups,
        preprocessing={**prepared.preprocessing, "target": "num > 0 (angiographic disease)"}
        if normalization == "federated"
        else {},
    )


def age_band(age: np.ndarray) -> np.ndarray:
    """Label ages (years) as ``<50``, ``50-64`` or ``65+`` (subgroup metrics)."""
    return np.where(age < 50, "<50", np.where(age < 65, "50-64", "65+")).astype(str)
