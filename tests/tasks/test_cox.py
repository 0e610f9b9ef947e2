import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index

from fedcare.errors import DataError
from fedcare.task import ArrayDataset
from fedcare.tasks import make_task
from fedcare.tasks.cox import cox_partial_likelihood_loss


def breslow_reference(risk, time, event):
    """Plain-loop Breslow negative log partial likelihood per event."""
    total = 0.0
    for i in range(len(time)):
        if event[i]:
            at_risk = time >= time[i]
            total += risk[i] - np.log(np.exp(risk[at_risk]).sum())
    return -total / event.sum()


def test_loss_matches_loop_reference_with_ties():
    risk = np.array([0.3, -1.2, 0.5, 2.0, 0.0, -0.4, 1.1])
    time = np.array([5.0, 3.0, 3.0, 8.0, 1.0, 3.0, 8.0])
    event = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    ours = cox_partial_likelihood_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert float(ours) == pytest.approx(breslow_reference(risk, time, event), rel=1e-12)


def test_loss_at_lifelines_optimum_equals_its_partial_log_likelihood():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    time = rng.exponential(np.exp(-x @ np.array([0.8, -0.5])))  # continuous: no ties, Breslow == Efron
    event = (rng.random(40) < 0.7).astype(float)
    cph = CoxPHFitter().fit(pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "T": time, "E": event}), "T", "E")
    risk = x @ cph.params_.to_numpy()
    ours = float(cox_partial_likelihood_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event)))
    assert ours * event.sum() == pytest.approx(-cph.log_likelihood_, rel=1e-6)


def test_no_event_gives_zero_loss():
    loss = cox_partial_likelihood_loss(torch.ones(3, requires_grad=True), torch.ones(3), torch.zeros(3))
    assert float(loss.detach()) == 0.0


def test_evaluate_uses_lifelines_c_index_on_minus_risk():
    task = make_task("cox", n_features=2)
    model = {"weight": np.array([[1.0, -2.0]], np.float32), "bias": np.zeros(1, np.float32)}
    x = np.array([[0.1, 0.2], [1.0, 0.0], [0.0, 1.0], [2.0, 0.5], [0.3, 0.3]], np.float32)
    y = np.array([[5, 1], [2, 1], [9, 0], [1, 1], [4, 0]], np.float32)
    result = task.evaluate(model, ArrayDataset(x, y))
    risk = x.astype(np.float64) @ np.array([1.0, -2.0])
    assert result.metrics["c_index"] == pytest.approx(concordance_index(y[:, 0], -risk, y[:, 1]))
    flipped = task.evaluate({"weight": -model["weight"], "bias": model["bias"]}, ArrayDataset(x, y))
    assert flipped.metrics["c_index"] == pytest.approx(1 - result.metrics["c_index"])  # the sign matters


def test_training_learns_the_risk_direction():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    time = rng.exponential(np.exp(-(2.0 * x[:, 0]))).astype(np.float32)
    y = np.stack([time, np.ones(200, np.float32)], axis=1)
    task = make_task("cox", n_features=3)
    data = ArrayDataset(x, y)
    start = task.init_model(np.random.default_rng(0))
    before = task.evaluate(start, data).metrics["c_index"]
    cfg = {"optimizer": "adam", "lr": 0.05, "batch_size": 0, "local_epochs": 100}
    fitted = task.fit(start, data, cfg, np.random.default_rng(0)).state
    assert task.evaluate(fitted, data).metrics["c_index"] > max(before, 0.75)
    assert fitted["weight"][0, 0] > 1.0


def test_fit_rejects_labels_without_time_and_event():
    task = make_task("cox", n_features=2)
    with pytest.raises(DataError, match="time, event"):
        task.fit(task.init_model(np.random.default_rng(0)), ArrayDataset(np.zeros((3, 2)), np.zeros(3)), {}, None)
