"""Torch tasks: the bundle's ONNX export and the bundle's torch model give the in-memory model's predictions."""

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("captum")

from fedcare.datasets.heart_disease import load_raw  # noqa: E402
from fedcare.demos import get_demo  # noqa: E402
from fedcare.experiment import run_experiment  # noqa: E402
from fedcare.release.bundle import build_bundle, load_bundle  # noqa: E402
from fedcare.release.onnx_export import onnx_logits, torch_module  # noqa: E402
from fedcare.release.predict import contributions, encode_rows, predict_rows  # noqa: E402
from fedcare.store import SqlStore  # noqa: E402
from fedcare.tasks import make_task  # noqa: E402
from fedcare.types import RunId  # noqa: E402


def test_mlp_bundle_torch_and_onnx_equal_the_in_memory_model_and_ig_is_complete(tmp_path):
    recipe = get_demo("heart-disease")
    data = recipe.load()
    task = make_task("mlp", n_features=data.n_features, hidden=[8])
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    cfg = replace(
        recipe.config, rounds=2, fit_config={"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "local_epochs": 1}
    )
    run_experiment(data, task, cfg, recorder=store, experiment_id="mlp", settings=("federated",))
    build_bundle(store, "mlp", tmp_path / "bundle")
    _, state = store.latest_checkpoint(RunId("mlp-fedavg"))
    store.close()
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.meta["onnx"]["file"] == "model.onnx"
    x, _, _ = encode_rows(load_raw()["cleveland"], bundle.preprocessing)
    in_memory = task.predict(state.model, x)
    np.testing.assert_allclose(bundle.task.predict(bundle.model, x), in_memory, atol=1e-6)
    logits = onnx_logits((tmp_path / "bundle" / "model.onnx").read_bytes(), x)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), in_memory, atol=1e-6)
    # integrated gradients: attributions add up to logit(x) - logit(baseline), the completeness axiom
    attr, method = contributions(bundle, x[:10])
    import torch

    module = torch_module(bundle.task, bundle.model)
    with torch.no_grad():
        base = float(module(torch.zeros(1, x.shape[1])).reshape(-1)[0])
    np.testing.assert_allclose(attr.sum(axis=1), logits[:10] - base, atol=2e-2)
    assert "integrated gradients" in method
    report = predict_rows(bundle, load_raw()["cleveland"].head(3).astype(str))
    assert len(report.predictions) == 3 and "logit" not in report.predictions[0]
