"""Site data larger than memory: records read from files a batch at a time.

Each class here is a :class:`~fedcare.task.RecordSource`: labels in memory, features
read by row index when a batch needs them, so memory is bounded by the batch size
whatever the archive size. A task that streams (``streams = True``, e.g.
:class:`~fedcare.tasks.torch_adapter.TorchTask`) asks for the batch order with
:meth:`batch_order` (the default is a full shuffle; Parquet shuffles row groups, then
rows inside each, so one row group is decoded at a time).

* :class:`DicomFolder`: a folder of DICOM files plus a label table (CSV with a file
  column and a label column); pixels are normalised exactly as the in-memory DICOM
  connector does (:mod:`fedcare.data.dicom`: modality LUT, VOI window, MONOCHROME1
  inversion, resize).
* :class:`ParquetRecords`: a Parquet file whose feature columns are read one row group
  at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.data.dicom import DEFAULT_SIZE, _decode, _resize
from fedcare.data.schema import CheckReport
from fedcare.errors import DataError

__all__ = ["DicomFolder", "ParquetRecords", "shuffled_batches", "write_dicom_folder"]


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.int64]]:
    """Index batches of one fully shuffled epoch (the in-memory default)."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


class DicomFolder:
    """A folder of single-frame DICOM images and their labels, read a batch at a time.

    Parameters
    ----------
    folder : Path
        The DICOM files.
    labels : Path or pandas.DataFrame
        The label table (CSV path or frame): ``file_column`` names each file (relative to
        ``folder``), ``label_column`` its target.
    file_column, label_column : str (default: "file", "label")
        Column names of the table.
    size : tuple[int, int] (default: (64, 64))
        Output (rows, columns); images are resized to it.
    window : sequence of two floats or None (default: None)
        ``(center, width)`` instead of each file's own window tags.

    Raises
    ------
    DataError
        The table lacks a column, a label is missing or not numeric, or a listed file
        does not exist (all named at once).
    """

    def __init__(
        self,
        folder: Path,
        labels: Path | pd.DataFrame,
        *,
        file_column: str = "file",
        label_column: str = "label",
        size: tuple[int, int] = DEFAULT_SIZE,
        window: Sequence[float] | None = None,
    ) -> None:
        self.folder = Path(folder)
        table = labels if isinstance(labels, pd.DataFrame) else _read_csv(Path(labels))
        where = "label table" if isinstance(labels, pd.DataFrame) else str(labels)
        missing = [c for c in (file_column, label_column) if c not in table.columns]
        if missing:
            raise DataError(f"{where}: missing column(s) {', '.join(map(repr, missing))}")
        names = [str(v).strip() for v in table[file_column].tolist()]
        y = pd.to_numeric(table[label_column], errors="coerce").to_numpy(dtype=np.float32)
        problems = [
            f"row {i + 1}: label {table[label_column].iloc[i]!r} is not a number" for i in np.flatnonzero(np.isnan(y))
        ]
        absent = [n for n in names if not (self.folder / n).is_file()]
        if absent:
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            problems.append(f"{len(absent)} listed file(s) not in {self.folder}: {', '.join(absent[:3])}{more}")
        if problems:
            raise DataError(f"{where}: " + "; ".join(problems[:5]))
        self.files = [self.folder / n for n in names]
        self.y = y
        self.size = (int(size[0]), int(size[1]))
        self.window = tuple(window) if window is not None else None

    def __len__(self) -> int:
        """Number of labelled images."""
        return len(self.files)

    def read(self, index: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Decode the images at ``index``: float32 ``(k, 1, rows, columns)`` in ``[0, 1]``."""
        out = np.empty((len(index), 1, *self.size), np.float32)
        for k, i in enumerate(np.asarray(index, dtype=np.int64)):
            report = CheckReport()
            image = _decode(self.files[i], report, self.window)
            if image is None:
                raise DataError(
                    f"{self.files[i].name}: {report.problems[0].message if report.problems else 'unreadable'}"
                )
            out[k, 0] = _resize(image, self.size)
        return out

    def batch_order(self, batch_size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.int64]]:
        """Fully shuffled batches (each image is its own file)."""
        return shuffled_batches(len(self), batch_size, rng)


class ParquetRecords:
    """Feature columns of a Parquet file, read one row group at a time.

    Parameters
    ----------
    path : Path
        The Parquet file.
    label : str
        The target column (read whole: one number per row).
    features : sequence of str or None (default: None)
        Feature columns; ``None``: every numeric column but ``label``.
    """

    def __init__(self, path: Path, *, label: str, features: Sequence[str] | None = None) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        try:
            self._file = pq.ParquetFile(self.path)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {self.path} as Parquet: {exc}") from None
        schema = self._file.schema_arrow
        if label not in schema.names:
            raise DataError(f"{self.path}: no label column {label!r} (columns: {', '.join(schema.names)})")
        if features is None:
            import pyarrow as pa

            features = [
                f.name
                for f in schema
                if f.name != label and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
            ]
        unknown = [c for c in features if c not in schema.names]
        if unknown:
            raise DataError(f"{self.path}: no column(s) {', '.join(map(repr, unknown))}")
        self.features = list(features)
        self.y = self._file.read(columns=[label]).column(0).to_numpy(zero_copy_only=False).astype(np.float32)
        sizes = [self._file.metadata.row_group(g).num_rows for g in range(self._file.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cached: tuple[int, npt.NDArray[np.float32]] | None = None

    def __len__(self) -> int:
        """Number of rows."""
        return len(self.y)

    def _group(self, g: int) -> npt.NDArray[np.float32]:
        if self._cached is None or self._cached[0] != g:
            table = self._file.read_row_group(g, columns=self.features)
            block = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in self.features])
            self._cached = (g, block.astype(np.float32))
        return self._cached[1]

    def read(self, index: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Rows at ``index`` (float32 ``(k, features)``), decoding each row group they touch once."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), len(self.features)), np.float32)
        groups = np.searchsorted(self._starts, index, side="right") - 1
        for g in np.unique(groups):
            mask = groups == g
            out[mask] = self._group(int(g))[index[mask] - self._starts[g]]
        return out

    def batch_order(self, batch_size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.int64]]:
        """Row groups in random order, rows shuffled inside each: one group decoded per batch run."""
        for g in rng.permutation(len(self._starts) - 1):
            rows = self._starts[g] + rng.permutation(int(self._starts[g + 1] - self._starts[g]))
            for start in range(0, len(rows), batch_size):
                yield rows[start : start + batch_size]


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read label table {path}: {exc}") from None


def write_dicom_folder(
    folder: Path, images: npt.NDArray[np.uint8], labels: npt.NDArray[Any], *, prefix: str = "img"
) -> Path:
    """Write 8-bit grey images as single-frame DICOM files (Secondary Capture) plus ``labels.csv``.

    For rehearsing a site's DICOM archive with data at hand (e.g. PneumoniaMNIST) and
    for tests; UIDs are derived from the file names, so a rerun writes identical files.
    Returns the label table's path (columns ``file``, ``label``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"images must be uint8 (n, rows, columns), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        name = f"{prefix}{i:06d}.dcm"
        uid = generate_uid(entropy_srcs=[name])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
        ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid(entropy_srcs=[prefix])
        ds.Modality, ds.PatientID = "OT", f"{prefix}-{i}"
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.ascontiguousarray(image).tobytes()
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    table = folder / "labels.csv"
    pd.DataFrame({"file": names, "label": np.asarray(labels)}).to_csv(table, index=False)
    return table
