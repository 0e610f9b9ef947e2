"""MedMNIST-format .npz connector: official keys, allow_pickle=False, problems named."""

from __future__ import annotations

import numpy as np
import pytest
from datahelpers import tree_hashes

from fedcare.data.config import load_site_config
from fedcare.data.connect import check_site, federated_images, load_site

SITE = (
    '[site]\nid = "xray"\n[source]\nkind = "npz"\npath = "{name}"\n'
    '[schema]\ntarget = "label"\n[schema.columns.label]\ntype = "category"\ncodes = [0, 1]\n'
)


def medmnist(rng: np.random.Generator, sizes=(20, 4, 6)) -> dict[str, np.ndarray]:
    out = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        out[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        out[f"{split}_labels"] = rng.integers(0, 2, size=(n, 1), dtype=np.uint8)
    return out


def test_medmnist_npz_loads_with_its_own_splits(write_config, tmp_path):
    arrays = medmnist(np.random.default_rng(0))
    np.savez_compressed(tmp_path / "x.npz", **arrays)
    before = tree_hashes(tmp_path / "x.npz")
    site = load_site(load_site_config(write_config(SITE.format(name="x.npz"))))
    assert site.images.shape == (30, 1, 28, 28) and site.images.dtype == np.float32
    np.testing.assert_allclose(site.images[:20, 0], arrays["train_images"] / 255.0, rtol=1e-6)
    data = site.site_data()
    assert len(data.train) == 20 and len(data.test) == 6  # val rows stay out of train/test
    np.testing.assert_array_equal(data.test.y, arrays["test_labels"][:, 0])
    assert tree_hashes(tmp_path / "x.npz") == before


def test_pickled_arrays_bad_shapes_and_unknown_labels_are_named(write_config, tmp_path):
    arrays = medmnist(np.random.default_rng(1))
    arrays["train_labels"][3, 0] = 7
    arrays["val_images"] = arrays["val_images"].astype(np.float32)
    arrays["test_labels"] = np.array([{"evil": 1}] * 6, dtype=object)  # would need pickle
    np.savez(tmp_path / "bad.npz", **arrays)
    text = [str(p) for p in check_site(load_site_config(write_config(SITE.format(name="bad.npz")))).report.problems]
    assert "bad.npz: val_images: must be uint8 (n, h, w[, c]), got float32 (4, 28, 28)" in text
    assert any(t.startswith("bad.npz: test_images/test_labels: cannot be loaded without pickle") for t in text)
    assert "bad.npz: column 'label': 1 unknown code(s), allowed [0, 1] (row 4: 7)" in text


@pytest.mark.parametrize("content", [b"not a zip", b""])
def test_unreadable_npz_is_named(write_config, tmp_path, content):
    (tmp_path / "broken.npz").write_bytes(content)
    problems = check_site(load_site_config(write_config(SITE.format(name="broken.npz")))).report.problems
    assert problems[0].source == "broken.npz" and "cannot be read as .npz" in problems[0].message


def test_two_npz_sites_become_a_federated_image_dataset(tmp_path):
    for k, sid in enumerate(("a", "b")):
        np.savez_compressed(tmp_path / f"{sid}.npz", **medmnist(np.random.default_rng(k), sizes=(10 + k, 2, 3)))
        (tmp_path / f"{sid}.toml").write_text(SITE.format(name=f"{sid}.npz").replace('id = "xray"', f'id = "{sid}"'))
    sites = {sid: load_site(load_site_config(tmp_path / f"{sid}.toml")) for sid in ("a", "b")}
    fed = federated_images(sites)
    assert [len(fed.sites[s].train) for s in ("a", "b")] == [10, 11]
    assert fed.sites["b"].test.x.shape == (3, 1, 28, 28) and fed.sites["b"].test.y.dtype == np.int64


def test_an_empty_split_is_read_as_no_rows(write_config, tmp_path):
    arrays = medmnist(np.random.default_rng(2), sizes=(6, 0, 3))
    np.savez_compressed(tmp_path / "e.npz", **arrays)
    site = load_site(load_site_config(write_config(SITE.format(name="e.npz"))))
    assert site.images.shape == (9, 1, 28, 28) and list(site.raw["split"]).count("val") == 0
