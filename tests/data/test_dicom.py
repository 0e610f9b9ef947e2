"""DICOM connector on the real scanner files shipped in pydicom's wheel (read in place, copied to tmp)."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pydicom
import pytest
from datahelpers import PYDICOM_FILES, tree_hashes

from fedcare.data.config import load_site_config
from fedcare.data.connect import check_site
from fedcare.data.dicom import normalise_pixels, window_linear

#: The same 64x64 MR slice in six encodings.
MR_VARIANTS = [
    "MR_small.dcm",  # explicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_RLE.dcm",  # RLE lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (Pillow or pylibjpeg-openjpeg)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless (needs pylibjpeg-libjpeg)
]
OTHERS = [
    "CT_small.dcm",
    "JPEG2000.dcm",  # JPEG 2000 (lossy), 1024x256 NM
    "SC_rgb_jpeg.dcm",  # JPEG baseline, RGB -> luminance
    "JPGExtended.dcm",  # 12-bit JPEG extended (pylibjpeg-libjpeg)
    "JPEG-lossy.dcm",  # malformed JPEG stream: no handler decodes it
    "MR_truncated.dcm",
    "rtplan.dcm",
]
HAS_LIBJPEG = importlib.util.find_spec("libjpeg") is not None
# SC_rgb_jpeg.dcm declares explicit VR but is encoded implicit; pydicom reads it and warns.
pytestmark = pytest.mark.filterwarnings("ignore:Expected explicit VR, but found implicit VR:UserWarning")


@pytest.fixture(scope="module")
def dicom_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    images = root / "images"
    images.mkdir()
    for name in MR_VARIANTS + OTHERS:
        shutil.copy2(PYDICOM_FILES / name, images / name)
    (images / "notes.dcm").write_text("this is a text file, not DICOM")
    (images / "unlabelled.dcm").write_bytes((PYDICOM_FILES / "MR_small.dcm").read_bytes())
    rows = [(name, i % 2) for i, name in enumerate(MR_VARIANTS + OTHERS + ["notes.dcm", "gone.dcm"])]
    (root / "labels.csv").write_text("file,label\n" + "".join(f"{f},{y}\n" for f, y in rows))
    (root / "site.toml").write_text(
        '[site]\nid = "radiology"\n[source]\nkind = "dicom"\npath = "images"\nlabels = "labels.csv"\nsize = [64, 64]\n'
        '[schema]\ntarget = "label"\n[schema.columns.label]\ntype = "category"\ncodes = [0, 1]\n'
    )
    before = tree_hashes(root)
    site = check_site(load_site_config(root / "site.toml"))
    return root, site, before


def problems_of(site, name):
    return [p.message for p in site.report.problems if p.source == name]


def test_mr_slice_decodes_identically_in_every_encoding(dicom_site):
    _, site, _ = dicom_site
    files = site.raw["file"].tolist()
    decodable = [n for n in MR_VARIANTS if HAS_LIBJPEG or "jpeg_ls" not in n]
    assert set(decodable) <= set(files)
    ref = site.images[files.index("MR_small.dcm"), 0]
    for name in decodable:
        np.testing.assert_array_equal(site.images[files.index(name), 0], ref, err_msg=name)
    # window from the tags (WindowCenter 600, WindowWidth 1600), formula of DICOM PS3.3 C.11.2.1.2.1
    raw = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm").pixel_array.astype(float)
    expected = np.clip((raw - 599.5) / 1599 + 0.5, 0, 1)
    np.testing.assert_allclose(ref, expected, atol=1e-6)


def test_images_are_normalised_tensors_aligned_with_labels(dicom_site):
    _, site, _ = dicom_site
    assert site.images.dtype == np.float32 and site.images.shape == (len(site.frame), 1, 64, 64)
    assert 0.0 <= site.images.min() and site.images.max() <= 1.0
    labels = dict(line.split(",") for line in (dicom_site[0] / "labels.csv").read_text().splitlines()[1:])
    assert site.frame["label"].tolist() == [float(labels[f]) for f in site.raw["file"]]
    assert {"CT_small.dcm", "JPEG2000.dcm", "SC_rgb_jpeg.dcm"} <= set(site.raw["file"])
    assert ("JPGExtended.dcm" in set(site.raw["file"])) == HAS_LIBJPEG


def test_unusable_files_are_each_named_in_the_report(dicom_site):
    _, site, _ = dicom_site
    assert problems_of(site, "JPEG-lossy.dcm")[0].startswith(
        "cannot decode transfer syntax JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)"
    )
    assert problems_of(site, "MR_truncated.dcm")[0].startswith("is truncated or corrupt (Explicit VR Little Endian")
    assert problems_of(site, "rtplan.dcm")[0].startswith("has no pixel data (Modality RTPLAN")
    assert problems_of(site, "notes.dcm")[0].startswith("is not a DICOM file")
    assert problems_of(site, "gone.dcm")[0].startswith("is listed in the label table (row 15) but does not exist")
    assert problems_of(site, "images") == ["1 DICOM file(s) without a label: unlabelled.dcm"]
    jpeg_ls = problems_of(site, "MR_small_jpeg_ls_lossless.dcm")
    jpeg_12bit = problems_of(site, "JPGExtended.dcm")
    if HAS_LIBJPEG:
        assert jpeg_ls == [] and jpeg_12bit == []
    else:  # without the optional decoder the file is reported as unsupported, by transfer syntax name
        assert jpeg_ls[0].startswith("cannot decode transfer syntax JPEG-LS Lossless Image Compression")
        assert jpeg_12bit[0].startswith("cannot decode transfer syntax JPEG Extended (Process 2 and 4)")


def test_source_files_are_unchanged(dicom_site):
    root, _, before = dicom_site
    assert tree_hashes(root) == before


def test_ct_rescale_slope_intercept_gives_hounsfield_units_before_windowing():
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    raw = ds.pixel_array.astype(float)
    got = normalise_pixels(ds, ds.pixel_array, window=(40.0, 400.0))  # soft-tissue window in HU
    np.testing.assert_allclose(got, window_linear(raw - 1024.0, 40.0, 400.0))
    assert 0.0 < got.mean() < 1.0
    # without window tags: the slice's own HU range
    plain = normalise_pixels(ds, ds.pixel_array)
    assert plain.min() == 0.0 and plain.max() == 1.0
