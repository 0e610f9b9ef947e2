import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import fedcare.datasets.pneumonia as pneumonia
from fedcare.cli.app import app
from fedcare.datasets import BUILTIN_DATASETS, load_builtin
from fedcare.datasets.pneumonia import SITE_FRACTIONS, load_arrays, load_pneumonia, load_validation, site_assignment
from fedcare.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data():
    return load_pneumonia()


@pytest.fixture(scope="module")
def arrays():
    return load_arrays()


def _rows(images, labels):
    """Multiset of (image bytes, label) as a sorted list of digests."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return sorted(
        hashlib.sha1(row.tobytes() + bytes([int(y)])).hexdigest() for row, y in zip(flat, labels, strict=True)
    )


def _as_uint8(ds):
    return np.rint(ds.x * 255).astype(np.uint8).reshape(-1, 28, 28), ds.y.astype(np.uint8)


def test_site_sizes_and_official_split_sizes(data):
    assert data.kind == "binary" and data.name == "pneumonia" and data.n_features == 784
    assert list(data.sites) == ["childrens", "regional", "community"]
    assert [len(d.train) for d in data.sites.values()] == [2339, 1404, 965]
    assert [len(d.test) for d in data.sites.values()] == [281, 191, 152]
    for d in data.sites.values():
        assert d.train.x.shape[1:] == (1, 28, 28) and d.train.x.dtype == np.float32
        assert 0.0 <= d.train.x.min() and d.train.x.max() <= 1.0
    assert len(load_validation()) == 524


def test_documented_label_and_quantity_skew_holds(data):
    train_prev = [float(d.train.y.mean()) for d in data.sites.values()]
    test_prev = [float(d.test.y.mean()) for d in data.sites.values()]
    shares = np.array([len(d.train) for d in data.sites.values()]) / 4708
    assert train_prev == pytest.approx([0.896, 0.697, 0.434], abs=0.002)
    assert test_prev == pytest.approx([0.833, 0.571, 0.309], abs=0.002)
    assert shares == pytest.approx([0.50, 0.30, 0.20], abs=0.01)
    # the skew is strong: prevalence falls monotonically and spans a factor of two
    assert train_prev[0] > train_prev[1] > train_prev[2] and train_prev[0] / train_prev[2] > 2


def test_every_training_image_is_in_exactly_one_site(data, arrays):
    union = [_as_uint8(d.train) for d in data.sites.values()]
    ours = _rows(np.concatenate([u[0] for u in union]), np.concatenate([u[1] for u in union]))
    assert ours == _rows(arrays["train_images"], arrays["train_labels"])
    idx = site_assignment(arrays["train_labels"], np.random.default_rng(3))
    flat = np.concatenate(list(idx.values()))
    assert len(flat) == 4708 and np.array_equal(np.sort(flat), np.arange(4708))


def test_union_of_site_test_sets_is_the_official_test_set(data, arrays):
    union = [_as_uint8(d.test) for d in data.sites.values()]
    ours = _rows(np.concatenate([u[0] for u in union]), np.concatenate([u[1] for u in union]))
    assert ours == _rows(arrays["test_images"], arrays["test_labels"])
    assert sum(int(d.test.y.sum()) for d in data.sites.values()) == 390


def test_split_is_seeded(data):
    again = load_pneumonia(seed=0)
    other = load_pneumonia(seed=1)
    for site in SITE_FRACTIONS:
        assert np.array_equal(data.sites[site].train.x, again.sites[site].train.x)
        assert np.array_equal(data.sites[site].test.y, again.sites[site].test.y)
        assert len(other.sites[site].train) == len(data.sites[site].train)
    assert not np.array_equal(data.sites["community"].train.x, other.sites["community"].train.x)


def test_max_train_per_site_subsets_training_only():
    small = load_pneumonia(max_train_per_site=10)
    assert [len(d.train) for d in small.sites.values()] == [10, 10, 10]
    assert [len(d.test) for d in small.sites.values()] == [281, 191, 152]
    with pytest.raises(ConfigError, match="max_train_per_site must be at least 1, got 0"):
        load_pneumonia(max_train_per_site=0)


def test_modified_file_is_refused(monkeypatch):
    monkeypatch.setattr(pneumonia, "SHA256", "0" * 64)
    with pytest.raises(DataError, match="pneumoniamnist.npz: checksum mismatch"):
        load_pneumonia()


def test_registered_as_builtin():
    assert "pneumonia" in BUILTIN_DATASETS
    assert load_builtin("pneumonia").name == "pneumonia"


def test_demo_recipe_runs_end_to_end_on_a_small_subset(monkeypatch, tmp_path):
    """The real `fedcare demo --dataset pneumonia` path, on 48 images per site and 1 epoch."""
    from fedcare.cli import study  # noqa: F401
    from fedcare.study.builtin import builtin_study_path

    # the shipped demo study, with one baseline epoch instead of eight
    text = (
        builtin_study_path("pneumonia")
        .read_text()
        .replace("local_epochs = 8", "local_epochs = 1")
        .replace("rounds = 15", "rounds = 1")
    )
    quick = tmp_path / "pneumonia.toml"
    quick.write_text(text)
    monkeypatch.setitem(BUILTIN_DATASETS, "pneumonia", lambda: load_pneumonia(max_train_per_site=48))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["simulate", "--study", str(quick), "--out", str(out), "--db", f"sqlite:///{tmp_path}/s.db"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "pneumonia" and summary["task"]["name"] == "cnn"
    assert set(summary["settings"]) == {"local", "pooled", "fedavg"}
    for setting in summary["settings"].values():
        assert set(setting["per_site"]) == {"childrens", "regional", "community"}
        assert 0.0 <= setting["pooled_test"]["accuracy"] <= 1.0 and 0.0 <= setting["pooled_test"]["auc"] <= 1.0
    assert sum(s["n_test"] for s in summary["settings"]["fedavg"]["per_site"].values()) == 624
    html = (out / "report.html").read_text()
    assert "Children&#x27;s hospital (tertiary)" in html and html.count("<svg") >= 2
    assert "Task cnn (image_shape 1x28x28, channels 16, norm batch, dropout 0.2, precision auto; hash" in html
    assert "Beside FLamby's published numbers" not in html  # that reference table is only for heart disease
