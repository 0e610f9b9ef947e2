"""Image-array connector: MedMNIST-format ``.npz`` files.

MedMNIST v2 (Yang et al. 2023, Scientific Data 10:41) stores each data set as one
``.npz`` with ``{train,val,test}_images`` (uint8, ``(n, h, w)`` or ``(n, h, w, c)``)
and ``{train,val,test}_labels`` (``(n, 1)`` or ``(n, k)`` for multi-label). The file
is opened with ``allow_pickle=False``: an object array (which would need pickle to
load) is refused by name, never unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedcare.data.schema import CheckReport

__all__ = ["SPLITS", "read_medmnist"]

#: Split names in MedMNIST files, in order.
SPLITS = ("train", "val", "test")


def read_medmnist(path: Path, report: CheckReport, *, target: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Read a MedMNIST ``.npz`` into images and a label table.

    Parameters
    ----------
    path : Path
        The ``.npz`` file.
    report : CheckReport
        Problems (unreadable file, missing or pickled arrays, shape mismatches) go here.
    target : str
        Name given to the label column of the returned table.

    Returns
    -------
    images : numpy.ndarray
        float32 ``(n, c, h, w)`` in ``[0, 1]`` (uint8 / 255), all splits concatenated.
    table : pandas.DataFrame
        One row per image: ``split`` (train/val/test) and ``target`` (the label; only
        single-label files are supported).
    """
    empty = np.zeros((0, 1, 1, 1), np.float32), pd.DataFrame({"split": [], target: []})
    name = path.name
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        report.add(name, "", f"does not exist ({path})")
        return empty
    except Exception as exc:  # noqa: BLE001 - zipfile raises BadZipFile, NotImplementedError, OSError, ...
        report.add(name, "", f"cannot be read as .npz: {type(exc).__name__}: {_first_line(exc)}")
        return empty
    try:
        return _read_archive(archive, name, report, target, empty)
    except Exception as exc:  # noqa: BLE001 - a damaged zip fails on first read, with zipfile's or zlib's errors
        report.add(name, "", f"cannot be read as .npz: {type(exc).__name__}: {_first_line(exc)}")
        return empty


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _read_archive(
    archive: object, name: str, report: CheckReport, target: str, empty: tuple[np.ndarray, pd.DataFrame]
) -> tuple[np.ndarray, pd.DataFrame]:
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    splits: list[str] = []
    if not isinstance(archive, np.lib.npyio.NpzFile):
        report.add(name, "", "is a single .npy array, not a MedMNIST .npz archive")
        return empty
    with archive:
        for split in SPLITS:
            ikey, lkey = f"{split}_images", f"{split}_labels"
            if ikey not in archive.files and lkey not in archive.files:
                continue
            try:
                x = archive[ikey] if ikey in archive.files else None
                y = archive[lkey] if lkey in archive.files else None
            except ValueError as exc:  # object arrays need pickle: refused
                report.add(name, f"{ikey}/{lkey}", f"cannot be loaded without pickle ({_first_line(exc)})")
                continue
            if x is None or y is None:
                report.add(name, ikey if x is None else lkey, f"is missing (found {sorted(archive.files)})")
                continue
            if x.dtype != np.uint8 or x.ndim not in (3, 4):
                report.add(name, ikey, f"must be uint8 (n, h, w[, c]), got {x.dtype} {x.shape}")
                continue
            y2 = y.reshape(len(y), int(np.prod(y.shape[1:]))) if y.ndim >= 1 else y  # (0, 1) stays (0, 1)
            if y2.ndim != 2 or y2.shape[1] != 1:
                report.add(name, lkey, f"must be (n, 1) single labels, got shape {y.shape}")
                continue
            if len(y2) != len(x):
                report.add(name, lkey, f"has {len(y2)} labels for {len(x)} images in {ikey}")
                continue
            x4 = x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)
            if images and x4.shape[1:] != images[0].shape[1:]:
                report.add(name, ikey, f"image shape {x4.shape[1:]} differs from {images[0].shape[1:]}")
                continue
            images.append(x4)
            labels.append(y2[:, 0])
            splits.extend([split] * len(x))
        if not images and not report.problems:
            report.add(name, "", f"holds no {{train,val,test}}_images/_labels arrays (found {sorted(archive.files)})")
    if not images:
        return empty
    report.sources[name] = len(splits)
    x_all = np.concatenate(images).astype(np.float32) / 255.0
    table = pd.DataFrame({"split": splits, target: np.concatenate(labels)})
    return x_all, table
