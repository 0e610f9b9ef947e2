"""TorchTask: a user's nn.Module becomes a complete task that every strategy, DP, SecAgg+ and personalisation run."""

import numpy as np
import pytest

from fedcare.errors import ConfigError
from fedcare.task import ArrayDataset, SiteData
from fedcare.tasks import make_task
from fedcare.testing import TaskContractError, check_task

# What a user writes: the whole task module (about 20 lines).
USER_TASK = """
import torch
from fedcare.tasks.torch_adapter import TorchTask


class Net(torch.nn.Module):
    def __init__(self, width, norm):
        super().__init__()
        norm_layer = torch.nn.BatchNorm2d(4) if norm == "batch" else torch.nn.GroupNorm(2, 4)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), norm_layer, torch.nn.ReLU(),
                                        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, width))
        self.head = torch.nn.Linear(width, 1)

    def forward(self, x):
        return self.head(torch.relu(self.body(x))).squeeze(-1)


def make_task(width=8, norm="group", local="", trainable="", precision="fp32"):
    return TorchTask(
        name="user-cnn",
        model=lambda: Net(width, norm),
        loss=torch.nn.BCEWithLogitsLoss(),
        params={"width": width, "norm": norm},
        input_shape=(1, 8, 8),
        local=tuple(p for p in local.split(",") if p),
        trainable=tuple(p for p in trainable.split(",") if p) or None,
        precision=precision,
    )
"""


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.float32)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32) + y[:, None, None, None]
    return SiteData(train=ArrayDataset(x[: n // 2 * 2 - 20], y[: n // 2 * 2 - 20]), test=ArrayDataset(x[-20:], y[-20:]))


@pytest.fixture
def user_task(installer):
    installer(dist="user-cnn", module="user_cnn", source=USER_TASK, entry="user-cnn = user_cnn:make_task")


@pytest.mark.slow
def test_user_module_meets_the_whole_contract(user_task):
    report = check_task("user-cnn", data=_data(), fit_config={"batch_size": 8})
    assert {"strategy fedavg", "strategy scaffold", "strategy krum", "SecAgg+", "record-level DP-SGD"} <= set(
        report.passed
    )
    assert "Ditto personal model" in report.passed


def test_batchnorm_is_refused_under_dp_naming_the_layer(user_task):
    task = make_task("user-cnn", norm="batch")
    model = task.init_model(np.random.default_rng(0))
    config = {"dp.noise_multiplier": 1.0, "dp.sample_rate": 0.5, "dp.steps": 1, "dp.noise_seed": 0}
    with pytest.raises(
        ConfigError,
        match=r"task 'user-cnn' cannot train with DP-SGD: layer 'body.1' \(BatchNorm2d\): use torch.nn.GroupNorm",
    ):
        task.fit(model, _data().train, config, np.random.default_rng(0))
    report = check_task("user-cnn", params={"norm": "batch"}, data=_data(), strategies=["fedavg"], secagg=False)
    assert "body.1" in report.skipped["record-level DP-SGD"]


def test_only_declared_entries_travel_and_local_ones_stay(user_task):
    full = make_task("user-cnn")
    head = make_task("user-cnn", trainable="head.")
    assert set(head.init_model(np.random.default_rng(0))) == {"head.weight", "head.bias"}
    sent = lambda t: sum(v.nbytes for v in t.init_model(np.random.default_rng(0)).values())  # noqa: E731
    assert sent(head) < sent(full) / 10
    model = head.init_model(np.random.default_rng(0))
    out = head.fit(model, _data().train, {"local_steps": 3}, np.random.default_rng(0))
    assert set(out.state) == {"head.weight", "head.bias"} and not np.array_equal(
        out.state["head.weight"], model["head.weight"]
    )
    personal = make_task("user-cnn", local="head.")
    assert personal.local_keys() == {"head.weight", "head.bias"}
    report = check_task(
        "user-cnn", params={"local": "head."}, data=_data(), strategies=["fedavg"], secagg=False, dp=False
    )
    assert "local entries stay at the site" in report.passed


def test_contract_reports_a_task_that_writes_into_its_input(installer):
    bad = (
        USER_TASK
        + """

class Sloppy(TorchTask):
    def fit(self, model, data, config, rng, *, context=None):
        out = super().fit(model, data, config, rng, context=context)
        data.x[0] = 0  # writes into the site's data
        return out


def make_sloppy():
    t = make_task()
    t.__class__ = Sloppy
    t.name = "sloppy"
    return t
"""
    )
    installer(dist="sloppy", module="sloppy_task", source=bad, entry="sloppy = sloppy_task:make_sloppy")
    with pytest.raises(
        TaskContractError,
        match=r"task 'sloppy' breaks the fedcare task contract:\n  - fit is sound: ValueError: assignment "
        r"destination is "
        "read-only",
    ):
        check_task("sloppy", data=_data(), strategies=[], secagg=False, dp=False, personal=False)


def test_hash_covers_the_user_package_the_adapter_and_a_weights_file(user_task, tmp_path):
    from safetensors.numpy import save_file

    from fedcare.task import task_hash
    from fedcare.task_manifest import task_manifest
    from fedcare.tasks.torch_adapter import TorchTask

    m = task_manifest(make_task("user-cnn"))
    assert {"user_cnn/__init__.py", "fedcare/tasks/torch_adapter.py", "fedcare/tasks/torch_common.py"} <= set(m.files)
    assert (m.distribution, m.version) == ("user-cnn", "0.1")
    base = make_task("user-cnn")
    weights = tmp_path / "pretrained.safetensors"
    save_file(base.init_model(np.random.default_rng(3)), str(weights))

    def with_weights():
        return TorchTask(name="user-cnn", model=base._factory, loss=base._loss, input_shape=(1, 8, 8), weights=weights)

    first = with_weights()
    assert "extra/pretrained.safetensors" in task_manifest(first).files
    np.testing.assert_array_equal(
        first.init_model(np.random.default_rng(0))["head.bias"], base.init_model(np.random.default_rng(3))["head.bias"]
    )
    before = task_hash(first)
    save_file(base.init_model(np.random.default_rng(4)), str(weights))
    assert task_hash(with_weights()) != before


def test_bf16_precision_is_hashed_trains_a_float32_model_and_is_refused_under_dp(user_task):
    from fedcare.task import task_hash

    fp32, bf16 = make_task("user-cnn"), make_task("user-cnn", precision="bf16")
    assert task_hash(make_task("user-cnn", precision="fp32")) == task_hash(fp32) != task_hash(bf16)
    init = fp32.init_model(np.random.default_rng(0))
    data = _data()
    a = bf16.fit(init, data.train, {"batch_size": 8, "local_epochs": 3}, np.random.default_rng(1)).state
    b = bf16.fit(init, data.train, {"batch_size": 8, "local_epochs": 3}, np.random.default_rng(1)).state
    c = fp32.fit(init, data.train, {"batch_size": 8, "local_epochs": 3}, np.random.default_rng(1)).state
    assert all(a[k].dtype == init[k].dtype and np.array_equal(a[k], b[k]) for k in init)
    assert not np.array_equal(a["head.weight"], c["head.weight"])
    assert np.array_equal(bf16.predict(a, data.test.x), fp32.predict(a, data.test.x))  # predictions in float32
    dp = {"dp.noise_multiplier": 1.0, "dp.sample_rate": 0.5, "dp.steps": 1, "dp.noise_seed": 0}
    with pytest.raises(ConfigError, match=r"^task 'user-cnn': precision='bf16' cannot train with DP-SGD"):
        bf16.fit(init, data.train, dp, np.random.default_rng(0))
    auto = make_task("user-cnn", precision="auto")  # DP-SGD: auto trains in fp32, as the DP path always does
    assert auto.fit(init, data.train, dp, np.random.default_rng(0)).metrics["dp.steps"] >= 1
    with pytest.raises(
        ConfigError, match=r"^TorchTask 'user-cnn': precision must be one of fp32, bf16, auto, got 'fp8'$"
    ):
        make_task("user-cnn", precision="fp8")


def test_an_unknown_fit_config_key_is_refused_naming_it(user_task):
    task = make_task("user-cnn")
    model = task.init_model(np.random.default_rng(0))
    with pytest.raises(
        ConfigError,
        match=r"^task 'user-cnn': unknown fit config key\(s\) \['lr_shedule'\]; accepted: batch_size, local_epochs, "
        r"local_steps, lr, lr_schedule, momentum, optimizer, proximal_mu, weight_decay$",
    ):
        task.fit(model, _data().train, {"lr_shedule": "cosine"}, np.random.default_rng(0))
    stamped = {"lr_schedule": "cosine", "local_steps": 2, "task": "user-cnn", "task_hash": "x", "seed": 3}
    assert task.fit(model, _data().train, stamped, np.random.default_rng(0)).metrics["train_loss"] > 0


class _DropoutNet:
    """A net with dropout, built through a factory the test hands to TorchTask."""

    @staticmethod
    def build():
        import torch

        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Dropout2d(0.2),
            torch.nn.Flatten(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(4 * 8 * 8, 1),
            torch.nn.Flatten(0),
        )


def _noise_two_args(x, generator):
    import torch

    return x + 0.1 * torch.randn(x.shape, generator=generator)


def _noise_one_arg(x):
    import torch

    return x + 0.1 * torch.randn(x.shape)


@pytest.mark.parametrize("augment", [_noise_two_args, _noise_one_arg], ids=["augment(x, generator)", "augment(x)"])
def test_threaded_simulations_with_one_seed_give_one_model(augment):
    import torch

    from fedcare.runtime.simulation import run_simulation
    from fedcare.strategies import FedAvg
    from fedcare.tasks.torch_adapter import TorchTask
    from fedcare.types import RunId, SiteId

    task = TorchTask(
        name="dropout-net",
        model=_DropoutNet.build,
        loss=torch.nn.BCEWithLogitsLoss(),
        input_shape=(1, 8, 8),
        augment=augment,
        num_threads=1,
    )
    sites = {SiteId(f"site-{i}"): _data(n=200, seed=i) for i in range(3)}

    def run():
        return run_simulation(
            sites=sites,
            task=task,
            strategy=FedAvg(fit_config={"batch_size": 4, "local_epochs": 1}),
            rounds=2,
            seed=11,
            run_id=RunId("threads"),
            max_workers=3,
        ).state.model

    first, second = run(), run()
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
