"""Fed-TCGA-BRCA: breast-cancer survival across 6 regions, FLamby's static split.

Files: ``brca.csv`` (1096 patients: ``pid``, 39 features, ``E`` event, ``T`` days),
``centers.csv`` (tissue-source-site code -> region) and ``train_test_split.csv``
(FLamby's split, the ground truth: 866 train / 222 test rows over centres 0..5),
copied byte for byte from owkin/FLamby; see ``PROVENANCE.md`` and ``LICENSE.md``.

Features follow FLamby ``flamby/datasets/fed_tcga_brca/dataset.py`` (``row[1:40]``):
age at diagnosis plus 38 one-hot clinical columns. FLamby feeds age raw (26-90); fedcare
standardises the age column with training statistics (federated moments by default, each
centre's own in ``local_view``, pooled in ``pooled_view``) and leaves the 0/1 columns as
they are (a constant 0/1 column at one centre would otherwise divide by zero). Targets
are ``y[:, 0] = T`` (time in days) and ``y[:, 1] = E`` (1 = death observed).
"""

from __future__ import annotations

import hashlib
import io
from importlib import resources
from typing import Literal

import numpy as np
import pandas as pd

from fedcare.data.federated import FederatedDataset
from fedcare.data.tabular import Moments, Standardizer
from fedcare.errors import ConfigError, DataError
from fedcare.task import ArrayDataset, SiteData
from fedcare.types import SiteId

__all__ = ["REGIONS", "load_tcga_brca"]

#: site id -> display name, in FLamby's centre order 0..5.
REGIONS: dict[SiteId, str] = {
    SiteId("northeast"): "Northeast (USA)",
    SiteId("south"): "South (USA)",
    SiteId("west"): "West (USA)",
    SiteId("midwest"): "Midwest (USA)",
    SiteId("europe"): "Europe",
    SiteId("canada"): "Canada",
}
_SHA256 = {
    "brca.csv": "07cb53423f7d579d33cfdbf2cba57b2aee75318b85866c68ce39a75b1f1ba020",
    "centers.csv": "d610df2dae0203ea229c9579747ed3eb8d28e137c5378f55acc6fe6b4632bb1d",
    "train_test_split.csv": "1249c6543a4060ff0fdaf8510fc37017755836db6c9fc5e6af96057c36510990",
}
#: Age bands used for subgroup metrics (years; left-closed).
AGE_BANDS = ((0, 50, "<50"), (50, 65, "50-64"), (65, 200, "65+"))


def _read(name: str) -> pd.DataFrame:
    raw = (resources.files(__name__) / name).read_bytes()
    if hashlib.sha256(raw).hexdigest() != _SHA256[name]:
        raise DataError(f"{name}: checksum mismatch, the shipped file was modified")
    return pd.read_csv(io.BytesIO(raw))


def age_band(age: np.ndarray) -> np.ndarray:
    """Label each age (years) with its band from :data:`AGE_BANDS`."""
    out = np.empty(len(age), dtype=object)
    for lo, hi, label in AGE_BANDS:
        out[(age >= lo) & (age < hi)] = label
    return out.astype(str)


def load_tcga_brca(normalization: Literal["federated", "site"] = "federated") -> FederatedDataset:
    """Return Fed-TCGA-BRCA: 6 sites, 866 train / 222 test patients, 39 features.

    Parameters
    ----------
    normalization : {"federated", "site"} (default: "federated")
        Statistics the age column is standardised with in ``sites``: combined from the
        centres' counts and sums (``"federated"``) or each centre's own (``"site"``).
    """
    if normalization not in ("federated", "site"):
        raise ConfigError(f"normalization must be 'federated' or 'site', got {normalization!r}")
    brca = _read("brca.csv").set_index("pid")
    split = _read("train_test_split.csv")
    features = tuple(brca.columns[:39])
    if features[0] != "age_at_index" or tuple(brca.columns[39:]) != ("E", "T"):
        raise DataError("brca.csv: unexpected columns (expected pid, 39 features, E, T)")
    parts = split["fold2"].str.split("_", expand=True)
    split = split.assign(part=parts[0], centre=parts[1].astype(int))
    raw: dict[SiteId, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for k, site in enumerate(REGIONS):
        raw[site] = {}
        for part in ("train", "test"):
            pids = split.loc[(split["centre"] == k) & (split["part"] == part), "pid"]
            rows = brca.loc[pids]
            x = rows[list(features)].to_numpy(dtype=np.float64)
            y = np.stack([rows["T"].to_numpy(np.float64), rows["E"].to_numpy(np.float64)], axis=1)
            raw[site][part] = (x, y)

    def view(stats: dict[SiteId, Standardizer]) -> dict[SiteId, SiteData]:
        out: dict[SiteId, SiteData] = {}
        for site, parts_ in raw.items():
            arrays = []
            for part in ("train", "test"):
                x, y = parts_[part]
                x = x.copy()
                x[:, 0] = stats[site].transform(x[:, :1])[:, 0]
                arrays.append(ArrayDataset(x.astype(np.float32), y.astype(np.float32)))
            out[site] = SiteData(*arrays)
        return out

    moments = {s: Moments.of(v["train"][0][:, :1]) for s, v in raw.items()}
    local = {s: m.standardizer() for s, m in moments.items()}
    combined = sum(moments.values(), Moments(np.zeros(1), np.zeros(1), np.zeros(1))).standardizer()
    all_age = np.concatenate([v["train"][0][:, :1] for v in raw.values()])
    pooled = Standardizer(mean=all_age.mean(axis=0), std=all_age.std(axis=0, ddof=1))
    groups = {s: {"age_band": age_band(v["test"][0][:, 0])} for s, v in raw.items()}
    return FederatedDataset(
        name="tcga-brca",
        kind="survival",
        sites=view(local if normalization == "site" else dict.fromkeys(raw, combined)),
        local_view=view(local),
        pooled_view=view(dict.fromkeys(raw, pooled)),
        feature_names=features,
        display_names=dict(REGIONS),
        provenance="TCGA-BRCA clinical data (NCI GDC open access; Liu et al., Cell 2018), "
        "FLamby Fed-TCGA-BRCA split (Ogier du Terrail et al., NeurIPS 2022)",
        groups=groups,
    )
