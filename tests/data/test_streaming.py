"""Streamed site data: DICOM folders and Parquet row groups read a batch at a time."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fedcare.data.streaming import DicomFolder, ParquetRecords, write_dicom_folder
from fedcare.errors import DataError
from fedcare.task import ArrayDataset, RecordSource
from fedcare.tasks.torch_adapter import TorchTask


def _net():
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1), torch.nn.Flatten(0)
    )


def _task(shape=(1, 8, 8)):
    return TorchTask(name="stream", model=_net, loss=torch.nn.BCEWithLogitsLoss(), input_shape=shape)


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = 0, 255  # full range: min..max normalisation is the identity scale
    labels = (images.mean(axis=(1, 2)) > 127).astype(int)
    folder = tmp_path_factory.mktemp("dicom")
    table = write_dicom_folder(folder, images, labels)
    return folder, table, images, labels


def test_dicom_folder_reads_the_images_it_was_written_from(dicom):
    folder, table, images, labels = dicom
    data = DicomFolder(folder, table, size=(8, 8))
    assert isinstance(data, RecordSource) and len(data) == 40
    np.testing.assert_array_equal(data.y, labels)
    idx = np.array([5, 0, 39])
    np.testing.assert_allclose(data.read(idx)[:, 0], images[idx] / 255.0, atol=1e-6)


def test_training_on_files_equals_training_on_the_same_arrays(dicom):
    folder, table, images, labels = dicom
    files = DicomFolder(folder, table, size=(8, 8))
    arrays = ArrayDataset(files.read(np.arange(40)), labels.astype(np.float32))
    task = _task()
    model = task.init_model(np.random.default_rng(0))
    cfg = {"batch_size": 8, "local_epochs": 2}
    streamed = task.fit(model, files, cfg, np.random.default_rng(1))
    in_memory = task.fit(model, arrays, cfg, np.random.default_rng(1))
    for k in model:
        np.testing.assert_allclose(streamed.state[k], in_memory.state[k], rtol=1e-6, atol=1e-7)
    assert task.evaluate(streamed.state, files).metrics == pytest.approx(task.evaluate(streamed.state, arrays).metrics)


def test_dicom_table_problems_are_named(dicom, tmp_path):
    folder, table, _, _ = dicom
    frame = pd.read_csv(table)
    frame["label"] = frame["label"].astype(object)
    frame.loc[3, "file"] = "gone.dcm"
    frame.loc[4, "label"] = "n/a"
    with pytest.raises(
        DataError, match=r"label table: row 5: label 'n/a' is not a number; 1 listed file\(s\) not in .*gone.dcm"
    ):
        DicomFolder(folder, frame)
    with pytest.raises(DataError, match=r"missing column\(s\) 'diagnosis'"):
        DicomFolder(folder, frame, label_column="diagnosis")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.dcm").write_text("not dicom")
    data = DicomFolder(broken, pd.DataFrame({"file": ["a.dcm"], "label": [1]}), size=(8, 8))
    with pytest.raises(DataError, match=r"a.dcm: is not a DICOM file"):
        data.read(np.array([0]))


def test_parquet_rows_are_read_one_row_group_at_a_time(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 64)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(64)}, "label": y})
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, row_group_size=16)
    data = ParquetRecords(path, label="label")
    assert len(data) == 100 and data.features == [f"f{i}" for i in range(64)]
    idx = np.array([99, 0, 17, 16, 50])
    np.testing.assert_array_equal(data.read(idx), x[idx])
    order = list(data.batch_order(8, np.random.default_rng(0)))
    assert sorted(np.concatenate(order).tolist()) == list(range(100))
    groups = [set((b // 16).tolist()) for b in order]
    assert all(len(g) == 1 for g in groups)  # each batch comes from one row group
    task = _task(shape=(64,))
    model = task.init_model(np.random.default_rng(0))
    out = task.fit(model, data, {"batch_size": 8}, np.random.default_rng(0))
    assert np.isfinite(out.metrics["train_loss"]) and not np.array_equal(out.state["1.weight"], model["1.weight"])
    with pytest.raises(DataError, match=r"no label column 'outcome'"):
        ParquetRecords(path, label="outcome")


def test_dp_sgd_samples_records_from_the_files(dicom):
    folder, table, images, labels = dicom
    task = _task()
    files = DicomFolder(folder, table, size=(8, 8))
    arrays = ArrayDataset(files.read(np.arange(40)), labels.astype(np.float32))
    model = task.init_model(np.random.default_rng(0))
    cfg = {
        "dp.noise_multiplier": 1.0,
        "dp.sample_rate": 0.25,
        "dp.steps": 3,
        "dp.noise_seed": 5,
        "dp.secure_mode": False,
    }
    streamed = task.fit(model, files, cfg, np.random.default_rng(0))
    in_memory = task.fit(model, arrays, cfg, np.random.default_rng(0))
    assert streamed.metrics["dp.steps"] == 3.0
    for k in model:  # same Poisson samples and noise: the same DP-SGD run
        np.testing.assert_allclose(streamed.state[k], in_memory.state[k], rtol=1e-5, atol=1e-6)


def _site(folder, name, table, *, stream, kind="dicom"):
    from fedcare.study.site import parse_site

    data = {"kind": kind, "path": str(folder), "labels": str(table), "size": [8, 8], "stream": stream}
    return parse_site({"site": {"id": name}, "data": data}, origin=folder.parent / f"{name}.toml")


def _image_study():
    from fedcare.study.spec import parse_study

    return parse_study(
        {
            "study": {"name": "xray-stream"},
            "task": {"name": "cnn", "params": {"image_shape": [1, 8, 8], "channels": 2, "num_threads": 1}},
            "data": {"target": "label", "columns": {"label": {"type": "category", "codes": [0, 1]}}},
            "fit": {"batch_size": 8, "local_epochs": 1},
        }
    )


def test_a_dicom_site_with_stream_trains_the_builtin_cnn_a_batch_at_a_time(dicom):
    """``stream = true`` in the site file: the site builder gives the node files, not arrays; same model."""
    from fedcare.build.run import build_task
    from fedcare.build.site import build_site, load_site_data
    from fedcare.runtime.simulation import run_simulation
    from fedcare.strategies import FedAvg
    from fedcare.types import RunId

    folder, table, _, _ = dicom
    study = _image_study()
    streamed = load_site_data(_site(folder, "a", table, stream=True), study)
    in_memory = load_site_data(_site(folder, "a", table, stream=False), study)
    assert isinstance(streamed.data.train, DicomFolder) and isinstance(in_memory.data.train, ArrayDataset)
    assert streamed.n_features is None
    for part in ("train", "test"):  # the same seeded split as the in-memory connector
        np.testing.assert_array_equal(getattr(streamed.data, part).y, getattr(in_memory.data, part).y)
    task = build_task(study)
    assert task.name == "cnn" and build_site(_site(folder, "a", table, stream=True), study).node.data is not None
    runs = [
        run_simulation(
            sites={"a": inputs.data},
            task=task,
            strategy=FedAvg(fit_config=dict(study.fit)),
            rounds=2,
            seed=0,
            run_id=RunId("stream"),
        )
        for inputs in (streamed, in_memory)
    ]
    for k, v in runs[1].state.model.items():
        np.testing.assert_allclose(runs[0].state.model[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    assert runs[0].rounds[-1].site_eval["a"] == pytest.approx(runs[1].rounds[-1].site_eval["a"])


def test_stream_is_refused_where_it_cannot_hold(dicom, tmp_path):
    from fedcare.build.site import load_site_data
    from fedcare.errors import ConfigError
    from fedcare.simulate import simulate_study

    folder, table, _, _ = dicom
    study = _image_study()
    with pytest.raises(ConfigError, match=r"data.stream = true: fedcare simulate holds every site's images in memory"):
        simulate_study(study, [_site(folder, "a", table, stream=True)])
    (tmp_path / "t.csv").write_text("label\n1\n")
    with pytest.raises(ConfigError, match=r"data.stream = true reads a DICOM folder .* kind 'csv' is read whole"):
        load_site_data(_site(tmp_path / "t.csv", "b", table, stream=True, kind="csv"), study)
    with pytest.raises(ConfigError, match=r"data.stream must be true or false, got 'yes'"):
        load_site_data(_site(folder, "c", table, stream="yes"), study)
