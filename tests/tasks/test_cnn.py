import numpy as np
import pytest
import torch

from fedcare.datasets.pneumonia import load_pneumonia
from fedcare.errors import ConfigError, DataError
from fedcare.runtime.simulation import run_simulation
from fedcare.serde import check_state, decode_state, encode_state, spec_of
from fedcare.strategies.fedavg import WeightedMeanFold
from fedcare.strategies.registry import make_strategy
from fedcare.task import ArrayDataset, task_hash
from fedcare.tasks import make_task
from fedcare.tasks.cnn import CnnTask, SmallCnn
from fedcare.tasks.torch_common import native_bf16, resolved_precision
from fedcare.types import FitResult, RunId, SiteId

FAST = {"batch_size": 32, "local_epochs": 1}


@pytest.fixture(scope="module")
def subset():
    site = load_pneumonia(max_train_per_site=96).sites["regional"]
    return site.train


@pytest.fixture(scope="module")
def task():
    return CnnTask(channels=4, num_threads=1)


def test_fit_reduces_training_loss(task, subset):
    model = task.init_model(np.random.default_rng(0))
    before = task.evaluate(model, subset).loss
    fitted = task.fit(
        model, subset, {"lr": 0.01, "batch_size": 16, "local_epochs": 6, "augment": False}, np.random.default_rng(1)
    )
    after = task.evaluate(fitted.state, subset).loss
    assert fitted.num_examples == 96 and np.isfinite(fitted.metrics["train_loss"])
    assert after < 0.8 * before


def test_same_seed_same_model_other_seed_other_model(task, subset):
    init = task.init_model(np.random.default_rng(0))
    again = task.init_model(np.random.default_rng(0))
    assert list(init) == list(again) and all(np.array_equal(init[k], again[k]) for k in init)
    a = task.fit(init, subset, FAST, np.random.default_rng(5)).state
    b = task.fit(init, subset, FAST, np.random.default_rng(5)).state
    c = task.fit(init, subset, FAST, np.random.default_rng(6)).state
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["head.weight"], c["head.weight"])


def test_fit_does_not_modify_inputs(task, subset):
    model = task.init_model(np.random.default_rng(0))
    for arr in model.values():
        arr.flags.writeable = False
    x_before = subset.x.copy()
    task.fit(model, subset, FAST, np.random.default_rng(0))
    assert np.array_equal(subset.x, x_before)


def test_state_round_trips_through_serde_with_batchnorm_buffers(task, subset):
    state = task.fit(task.init_model(np.random.default_rng(0)), subset, FAST, np.random.default_rng(0)).state
    assert state["features.1.num_batches_tracked"].dtype == np.int64
    assert int(state["features.1.num_batches_tracked"]) == 3  # 96 images / batch 32
    decoded = decode_state(encode_state(state), spec=spec_of(state))
    assert list(decoded) == list(state)
    assert all(decoded[k].dtype == state[k].dtype and np.array_equal(decoded[k], state[k]) for k in state)
    p1, p2 = task.predict(state, subset.x), task.predict(decoded, subset.x)
    assert np.array_equal(p1, p2)


def test_fedavg_of_batchnorm_states_keeps_dtypes_and_averages_running_stats(task, subset):
    init = task.init_model(np.random.default_rng(0))
    a = task.fit(init, subset, FAST, np.random.default_rng(1)).state
    b = task.fit(init, ArrayDataset(subset.x[:64], subset.y[:64]), FAST, np.random.default_rng(2)).state
    fold = WeightedMeanFold(init)
    fold.add(SiteId("a"), FitResult(state=a, num_examples=96))
    fold.add(SiteId("b"), FitResult(state=b, num_examples=64))
    mean = fold.mean()
    check_state(mean, spec_of(init))  # what a site checks before using the global model
    assert mean["features.1.num_batches_tracked"].dtype == np.int64
    assert int(mean["features.1.num_batches_tracked"]) == 2  # (96*3 + 64*2) / 160 = 2.6, cast to int64
    expected = (96 * a["features.1.running_mean"].astype(np.float64) + 64 * b["features.1.running_mean"]) / 160
    np.testing.assert_allclose(mean["features.1.running_mean"], expected, rtol=1e-6)
    assert np.all(np.isfinite(task.predict(mean, subset.x)))


@pytest.mark.parametrize("norm", ["group", "none"])
def test_other_norms_have_no_buffers_and_train(norm, subset):
    task = CnnTask(channels=4, norm=norm, num_threads=1)
    state = task.fit(task.init_model(np.random.default_rng(0)), subset, FAST, np.random.default_rng(0)).state
    assert all(v.dtype == np.float32 for v in state.values())
    assert task.evaluate(state, subset).num_examples == 96


def test_predict_accepts_flat_pixels_and_rejects_wrong_shapes(task, subset):
    model = task.init_model(np.random.default_rng(0))
    flat = subset.x.reshape(len(subset), -1)
    assert np.array_equal(task.predict(model, flat), task.predict(model, subset.x))
    with pytest.raises(
        DataError, match=r"prediction input: images must have shape \(n, 1, 28, 28\), got \(2, 1, 14, 14\)"
    ):
        task.predict(model, np.zeros((2, 1, 14, 14), dtype=np.float32))


def test_bad_configuration_is_a_one_line_error(task, subset):
    model = task.init_model(np.random.default_rng(0))
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="config 'class_weight' must be one of balanced, none, got 'auto'"):
        task.fit(model, subset, {"class_weight": "auto"}, rng)
    with pytest.raises(ConfigError, match="config 'augment' must be true or false, got 1"):
        task.fit(model, subset, {"augment": 1}, rng)
    with pytest.raises(ConfigError, match="config 'optimizer' must be 'sgd' or 'adam'"):
        task.fit(model, subset, {"optimizer": "lbfgs"}, rng)
    with pytest.raises(DataError, match="cannot fit on an empty training set"):
        task.fit(model, ArrayDataset(subset.x[:0], subset.y[:0]), {}, rng)
    with pytest.raises(ConfigError, match="norm must be one of batch, group, none, got 'layer'"):
        CnnTask(norm="layer")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dropout must be in"):
        CnnTask(dropout=1.0)
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        CnnTask(precision="fp16")  # type: ignore[arg-type]


def test_registered_and_hash_covers_architecture_not_threads():
    task = make_task("cnn", channels=8)
    assert isinstance(task, CnnTask) and task.name == "cnn"
    assert task_hash(CnnTask(channels=8)) == task_hash(CnnTask(channels=8, num_threads=1))
    assert task_hash(CnnTask(channels=8)) != task_hash(CnnTask(channels=16))
    assert task_hash(CnnTask(norm="batch")) != task_hash(CnnTask(norm="group"))


def test_precision_is_in_the_hash_and_fp32_keeps_the_earlier_hash():
    assert "precision" not in CnnTask().params()  # runs stored before the parameter existed still match
    assert task_hash(CnnTask(precision="fp32")) == task_hash(CnnTask())
    hashes = {task_hash(CnnTask(precision=p)) for p in ("fp32", "bf16", "auto")}
    assert len(hashes) == 3


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_units(subset):
    assert native_bf16({"avx512_bf16": True}) and native_bf16({"amx_bf16": True}) and native_bf16({"bf16": True})
    assert not native_bf16({"avx512_f": True, "avx512_bw": True, "avx2": True}) and not native_bf16({})
    here = "bf16" if native_bf16() else "fp32"
    assert resolved_precision("auto") == here and resolved_precision("fp32") == "fp32"
    auto = CnnTask(channels=4, num_threads=1, precision="auto")
    same = CnnTask(channels=4, num_threads=1, precision=here)
    init = auto.init_model(np.random.default_rng(0))
    a = auto.fit(init, subset, FAST, np.random.default_rng(1)).state
    b = same.fit(init, subset, FAST, np.random.default_rng(1)).state
    assert all(np.array_equal(a[k], b[k]) for k in init)  # auto trains exactly as the arithmetic it resolves to


def test_bf16_trains_a_float32_model_reproducibly_and_predicts_in_float32(subset):
    fp32, bf16 = CnnTask(channels=4, num_threads=1), CnnTask(channels=4, num_threads=1, precision="bf16")
    init = fp32.init_model(np.random.default_rng(0))
    assert all(np.array_equal(init[k], v) for k, v in bf16.init_model(np.random.default_rng(0)).items())
    config = {"lr": 0.01, "batch_size": 16, "local_epochs": 6, "augment": False}
    a = bf16.fit(init, subset, config, np.random.default_rng(1))
    b = bf16.fit(init, subset, config, np.random.default_rng(1)).state
    full = fp32.fit(init, subset, config, np.random.default_rng(1)).state
    assert all(a.state[k].dtype == init[k].dtype and np.array_equal(a.state[k], b[k]) for k in init)
    assert not np.array_equal(a.state["head.weight"], full["head.weight"])  # bf16 arithmetic did run
    assert fp32.evaluate(a.state, subset).loss < 0.8 * fp32.evaluate(init, subset).loss
    # Predictions of a bf16-trained model do not depend on the machine's bf16 units.
    assert np.array_equal(bf16.predict(a.state, subset.x), fp32.predict(a.state, subset.x))


@pytest.mark.parametrize(("strategy", "params"), [("fedprox", {"mu": 0.01}), ("scaffold", {})])
def test_cnn_runs_under_fedprox_and_scaffold_with_batchnorm(strategy, params):
    sites = load_pneumonia(max_train_per_site=32).sites
    fit_config = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16}
    result = run_simulation(
        sites=sites,
        task=CnnTask(channels=4, num_threads=1),
        strategy=make_strategy(strategy, fit_config=fit_config, **params),
        rounds=2,
        seed=0,
        run_id=RunId("r"),
    )
    assert [r.round_no for r in result.rounds] == [1, 2]
    assert all(not r.failures for r in result.rounds)
    assert result.state.model["features.1.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_pool_then_relu_is_the_textbook_block_bit_for_bit(norm, subset):
    """SmallCnn pools before its (in-place) ReLU: same outputs and gradients as conv -> norm -> ReLU -> pool."""
    torch.manual_seed(0)
    fast = SmallCnn(in_channels=1, channels=4, norm=norm, dropout=0.0, side=28)
    textbook = SmallCnn(in_channels=1, channels=4, norm=norm, dropout=0.0, side=28)
    textbook.load_state_dict(fast.state_dict())
    layers = list(textbook.features)
    for i in range(0, len(layers), 4):  # back to conv, norm, ReLU, pool
        assert isinstance(layers[i + 2], torch.nn.MaxPool2d) and isinstance(layers[i + 3], torch.nn.ReLU)
        layers[i + 2], layers[i + 3] = torch.nn.ReLU(), layers[i + 2]
    textbook.features = torch.nn.Sequential(*layers)
    x = torch.from_numpy(subset.x[:32]) - 0.3  # many negative pre-activations
    outs = []
    for net in (fast, textbook):
        net.train()
        out = net(x)
        out.square().sum().backward()
        outs.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1], strict=True))
