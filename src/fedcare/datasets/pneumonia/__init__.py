"""Chest X-ray pneumonia (PneumoniaMNIST, 28x28) split across three simulated hospitals.

Data: the content of MedMNIST v2's PneumoniaMNIST (Yang et al., Scientific Data 10, 41,
2023; images from Kermany et al., Cell 172(5), 2018), paediatric chest X-rays from one
hospital in Guangzhou, labels 0 = normal, 1 = pneumonia, CC BY 4.0. The shipped file is
a reconstruction with exactly the official splits (train 4708, val 524, test 624); see
``PROVENANCE.md`` and ``LICENSE.md`` beside this module. It is read with
``np.load(..., allow_pickle=False)`` after a sha256 check.

Sites. The source is a single hospital, so every multi-site split is simulated. The one
here mimics what Zech et al. found across the three institutions of their chest X-ray
pneumonia study (PLOS Medicine 15(11): e1002683, 2018): sites differ by an order of
magnitude in pneumonia prevalence and by volume. Each class of each official split is
shared out to the sites with fixed fractions (seeded assignment of which image goes where):

=====================  ===============  ================  ==========  ===============  ===============
site                   share of normal  share of pneum.   ~share all  train n (P %)    test n (P %)
=====================  ===============  ================  ==========  ===============  ===============
``childrens``          0.20             0.60              50 %        2339 (89.6 %)    281 (83.3 %)
``regional``           0.35             0.28              30 %        1404 (69.7 %)    191 (57.1 %)
``community``          0.45             0.12              20 %        965 (43.4 %)     152 (30.9 %)
=====================  ===============  ================  ==========  ===============  ===============

* a tertiary children's hospital: the most images, mostly referred pneumonia cases;
* a regional hospital: medium volume and prevalence;
* a community clinic: few images, mostly normal screening films.

The same fractions apply to the official test split, so the union of the three sites'
test sets is exactly MedMNIST's 624-image test set and pooled-test numbers compare with
the published ones. The official validation split (524) is not given to any site; it is
available through :func:`load_validation` for choosing a training recipe (never the test
set). The image order inside a site is shuffled with the same seed.

Features are the 28x28 pixels as float32 in [0, 1], shaped ``(n, 1, 28, 28)``. No
statistics are estimated from the data, so the federated, local and pooled views are the
same arrays.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.data.federated import FederatedDataset
from fedcare.errors import ConfigError, DataError
from fedcare.task import ArrayDataset, SiteData
from fedcare.types import SiteId

__all__ = [
    "FILENAME",
    "IMAGE_SHAPE",
    "SHA256",
    "SITE_FRACTIONS",
    "load_arrays",
    "load_pneumonia",
    "load_validation",
    "site_assignment",
]

FILENAME = "pneumoniamnist.npz"
SHA256 = "7d3d32ef46290eb4b85d4b82120e8bb4477c29437ee7e3b04895ab22fd0d6b67"
IMAGE_SHAPE = (1, 28, 28)
SPLITS = ("train", "val", "test")
#: site -> (display name, share of the normal images, share of the pneumonia images).
SITE_FRACTIONS: MappingProxyType[SiteId, tuple[str, float, float]] = MappingProxyType(
    {
        SiteId("childrens"): ("Children's hospital (tertiary)", 0.20, 0.60),
        SiteId("regional"): ("Regional hospital", 0.35, 0.28),
        SiteId("community"): ("Community clinic", 0.45, 0.12),
    }
)


def load_arrays() -> dict[str, npt.NDArray[np.uint8]]:
    """Read the shipped ``.npz`` (checksum verified, no pickle): ``{split}_images``/``{split}_labels``.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``{split}_images`` uint8 ``(n, 28, 28)`` and ``{split}_labels`` uint8 ``(n,)`` for
        ``split`` in train, val, test.
    """
    path = resources.files(__name__) / FILENAME
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != SHA256:
        raise DataError(f"{FILENAME}: checksum mismatch, the shipped file was modified")
    with resources.as_file(path) as real, np.load(real, allow_pickle=False) as npz:
        out = {}
        for split in SPLITS:
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1)
            if images.shape[1:] != IMAGE_SHAPE[1:] or len(images) != len(labels):
                raise DataError(f"{FILENAME}: split {split!r} has images {images.shape} and labels {labels.shape}")
            out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


def site_assignment(labels: npt.NDArray[Any], rng: np.random.Generator) -> dict[SiteId, npt.NDArray[np.int64]]:
    """Share the indices of each class out to the sites with :data:`SITE_FRACTIONS`.

    Parameters
    ----------
    labels : numpy.ndarray
        0/1 labels of one split.
    rng : numpy.random.Generator
        Decides which image of a class goes to which site, and the order within a site.

    Returns
    -------
    dict[SiteId, numpy.ndarray]
        Disjoint index arrays covering ``range(len(labels))``, one per site, shuffled.
    """
    parts: dict[SiteId, list[npt.NDArray[np.int64]]] = {s: [] for s in SITE_FRACTIONS}
    for cls, column in ((0, 1), (1, 2)):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        fractions = np.array([f[column] for f in SITE_FRACTIONS.values()])
        bounds = np.rint(np.cumsum(fractions) / fractions.sum() * len(idx)).astype(int)
        for site, lo, hi in zip(SITE_FRACTIONS, np.r_[0, bounds[:-1]], bounds, strict=True):
            parts[site].append(idx[lo:hi])
    return {s: rng.permutation(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


def _dataset(images: npt.NDArray[np.uint8], labels: npt.NDArray[np.uint8]) -> ArrayDataset:
    x = (images.astype(np.float32) / np.float32(255.0)).reshape(-1, *IMAGE_SHAPE)
    return ArrayDataset(x=x, y=labels.astype(np.float32))


def load_pneumonia(*, seed: int = 0, max_train_per_site: int | None = None) -> FederatedDataset:
    """Return PneumoniaMNIST over three simulated hospitals (see the module docstring).

    Parameters
    ----------
    seed : int (default: 0)
        Seed of the assignment of images to sites; the site sizes do not depend on it.
    max_train_per_site : int or None (default: None)
        Keep only the first ``n`` training images of each site (a quick subset for tests
        and smoke runs); test sets are always complete.

    Returns
    -------
    FederatedDataset
        ``kind="binary"``, 784 pixel features as ``(n, 1, 28, 28)`` float32 in [0, 1].
    """
    if max_train_per_site is not None and max_train_per_site < 1:
        raise ConfigError(f"max_train_per_site must be at least 1, got {max_train_per_site}")
    arrays = load_arrays()
    rng = np.random.default_rng([seed, 0x9E3779B9])
    train_idx = site_assignment(arrays["train_labels"], rng)
    test_idx = site_assignment(arrays["test_labels"], rng)
    sites: dict[SiteId, SiteData] = {}
    for site in SITE_FRACTIONS:
        tr = train_idx[site][:max_train_per_site]
        te = test_idx[site]
        sites[site] = SiteData(
            train=_dataset(arrays["train_images"][tr], arrays["train_labels"][tr]),
            test=_dataset(arrays["test_images"][te], arrays["test_labels"][te]),
        )
    view = MappingProxyType(sites)
    return FederatedDataset(
        name="pneumonia",
        kind="binary",
        sites=view,
        local_view=view,
        pooled_view=view,
        feature_names=tuple(f"px_{r}_{c}" for r in range(IMAGE_SHAPE[1]) for c in range(IMAGE_SHAPE[2])),
        display_names={s: v[0] for s, v in SITE_FRACTIONS.items()},
        provenance="PneumoniaMNIST (MedMNIST v2, Yang et al. 2023; Kermany et al. 2018), CC BY 4.0; "
        f"3 simulated hospitals, label and quantity skew, split seed {seed}",
    )


def load_validation() -> ArrayDataset:
    """The official validation split (524 images), for choosing a recipe; no site holds it."""
    arrays = load_arrays()
    return _dataset(arrays["val_images"], arrays["val_labels"])
