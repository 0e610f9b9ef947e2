"""DICOM connector: a folder of DICOM files plus a label table -> normalised image tensors.

Each labelled file is read with pydicom (never written), its pixels decoded with
whatever pixel-data handlers are installed (pydicom's own for uncompressed, RLE and
deflate; Pillow for JPEG baseline and JPEG 2000; pylibjpeg for JPEG-LS, 12-bit JPEG
and more), then:

1. **Modality LUT** (``pydicom.pixels.apply_modality_lut``): rescale slope/intercept
   (CT values in Hounsfield units), or the Modality LUT sequence.
2. **VOI window**, linear, DICOM PS3.3 C.11.2.1.2.1, from ``WindowCenter``/``WindowWidth``
   (the first pair when several are given; the config's ``window = [center, width]``
   overrides). Without window tags the image's own min..max is used.
3. ``MONOCHROME1`` is inverted so that bright means dense everywhere; colour images
   become luminance (ITU-R BT.601 weights).
4. Resized to ``size`` (default 64x64; bilinear with antialiasing, torch).

The result is a float32 array of shape ``(n, 1, height, width)`` in ``[0, 1]``.
A file that cannot be read (not DICOM, truncated, multi-frame, no pixel data, a
transfer syntax no installed handler decodes) is a problem named by file, with the
transfer syntax's name when decoding is the issue.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcare.data.schema import CheckReport

__all__ = ["DEFAULT_SIZE", "normalise_pixels", "read_dicom_images", "window_linear"]

#: Output image size (rows, columns) when the config gives none.
DEFAULT_SIZE = (64, 64)
_LUMA = np.array([0.299, 0.587, 0.114])


def window_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map values to ``[0, 1]`` with the DICOM linear VOI window (PS3.3 C.11.2.1.2.1).

    >>> window_linear(np.array([-1000.0, 40.0, 1000.0]), 40.0, 400.0).round(3).tolist()
    [0.0, 0.501, 1.0]
    """
    if width < 1:
        raise ValueError(f"window width must be >= 1, got {width}")
    if width == 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)
    except (TypeError, ValueError, IndexError):
        return None


def normalise_pixels(ds: Any, pixels: np.ndarray, *, window: Sequence[float] | None = None) -> np.ndarray:
    """Modality LUT, VOI window, photometric fix-up: one 2-D float64 image in ``[0, 1]``."""
    from pydicom.pixels import apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:  # colour (rows, cols, samples): pydicom already converted YBR to RGB
        return np.clip(pixels[..., :3].astype(np.float64) @ _LUMA / float(2 ** int(ds.get("BitsStored", 8)) - 1), 0, 1)
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    center, width = (
        (window[0], window[1])
        if window is not None
        else (_first(ds.get("WindowCenter")), _first(ds.get("WindowWidth")))
    )
    if center is not None and width is not None and width >= 1:
        out = window_linear(values, float(center), float(width))
    else:
        low, high = float(values.min()), float(values.max())
        out = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return 1.0 - out if photometric == "MONOCHROME1" else out


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape == size:
        return image.astype(np.float32)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


def _decode(path: Path, report: CheckReport, window: Sequence[float] | None) -> np.ndarray | None:
    """Read and normalise one file; record why when it cannot be used.

    pydicom parses lazily, so a damaged file can fail at any later access and with any
    exception type (``NotImplementedError`` for an unknown VR, ``struct.error``, ...):
    whatever escapes the specific checks below names the file as unreadable.
    """
    try:
        return _decode_file(path, report, window)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes through a third-party parser
        reason = " ".join(str(exc).split())[:200]
        report.add(path.name, "", f"cannot be read as DICOM: {type(exc).__name__}: {reason}")
        return None


def _decode_file(path: Path, report: CheckReport, window: Sequence[float] | None) -> np.ndarray | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    name = path.name
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        report.add(name, "", f"is not a DICOM file ({str(exc).splitlines()[0]})")
        return None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        report.add(name, "", f"cannot be read as DICOM: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return None
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    syntax_name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown transfer syntax"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        report.add(
            name, "", f"has no pixel data (Modality {ds.get('Modality', '?')}, SOP {ds.get('SOPClassUID', '?')})"
        )
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        report.add(name, "NumberOfFrames", f"has {frames} frames; only single-frame images are supported")
        return None
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:  # no handler, or every handler failed
        reason = " ".join(str(exc).split())[:200]
        report.add(name, "PixelData", f"cannot decode transfer syntax {syntax_name}: {reason}")
        return None
    except (ValueError, EOFError, OSError, AttributeError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        report.add(name, "PixelData", f"is truncated or corrupt ({syntax_name}): {reason}")
        return None
    try:
        return normalise_pixels(ds, pixels, window=window)
    except (ValueError, TypeError, AttributeError) as exc:
        report.add(name, "", f"cannot be normalised: {exc}")
        return None


def read_dicom_images(
    folder: Path,
    labels: pd.DataFrame,
    report: CheckReport,
    *,
    file_column: str = "file",
    size: tuple[int, int] = DEFAULT_SIZE,
    window: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load the labelled DICOM files of ``folder``.

    Parameters
    ----------
    folder : Path
        Folder holding the DICOM files.
    labels : pandas.DataFrame
        The label table; ``file_column`` names each row's file (relative to ``folder``).
    report : CheckReport
        Problems are recorded here, by file name.
    file_column : str (default: "file")
        Column of ``labels`` with the file names.
    size : tuple[int, int] (default: (64, 64))
        Output (rows, columns).
    window : sequence of two floats or None (default: None)
        ``(center, width)`` for every image instead of the files' own window tags.

    Returns
    -------
    images : numpy.ndarray
        float32 ``(k, 1, rows, columns)`` in ``[0, 1]`` for the ``k`` usable rows.
    used : numpy.ndarray
        Boolean mask over the rows of ``labels``: which rows have an image.
    """
    used = np.zeros(len(labels), dtype=bool)
    images: list[np.ndarray] = []
    if not folder.is_dir():
        report.add(folder.name, "", f"is not a folder of DICOM files ({folder})")
        return np.zeros((0, 1, *size), np.float32), used
    if file_column not in labels.columns:
        report.add("label table", f"column {file_column!r}", "is missing (it names each row's DICOM file)")
        return np.zeros((0, 1, *size), np.float32), used
    listed = set()
    root = folder.resolve()
    for i, value in enumerate(labels[file_column].tolist()):
        if not isinstance(value, str) or not value.strip():
            report.add("label table", f"row {i + 1}", f"has no file name in {file_column!r}")
            continue
        path = folder / value.strip()
        listed.add(path.resolve())
        if not path.resolve().is_relative_to(root):  # "../x.dcm", an absolute path, or a symlink out
            report.add(value[:200], "", f"is listed in the label table (row {i + 1}) but is outside the image folder")
            continue
        if not path.is_file():
            report.add(value, "", f"is listed in the label table (row {i + 1}) but does not exist in {folder}")
            continue
        image = _decode(path, report, window)
        if image is None:
            continue
        images.append(_resize(image, size))
        used[i] = True
        report.sources[path.name] = 1
    unlabelled = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in (".dcm", "") and p.resolve() not in listed
    )
    if unlabelled:
        more = f" and {len(unlabelled) - 3} more" if len(unlabelled) > 3 else ""
        report.add(
            folder.name, "", f"{len(unlabelled)} DICOM file(s) without a label: {', '.join(unlabelled[:3])}{more}"
        )
    stack = np.stack(images)[:, None] if images else np.zeros((0, 1, *size), np.float32)
    return stack.astype(np.float32), used
