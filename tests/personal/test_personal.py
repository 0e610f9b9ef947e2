"""FedBN / FedPer / Ditto / fine-tuning: local entries stay local, every site ends with its own model."""

import numpy as np
import pytest

from fedcare.data.federated import FederatedDataset
from fedcare.errors import ConfigError
from fedcare.experiment import ExperimentConfig, run_experiment
from fedcare.personal import model_for
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import build_nodes
from fedcare.strategies.fedavg import FedAvg
from fedcare.task import ArrayDataset, SiteData, task_hash
from fedcare.tasks import make_task
from fedcare.transport.inprocess import InProcessChannel
from fedcare.types import RunId, SiteId

FIT = {"optimizer": "sgd", "lr": 0.1, "batch_size": 8, "local_epochs": 1}


def shifted_sites(n_sites: int = 3, rows: int = 40) -> dict[SiteId, SiteData]:
    """Sites whose features are shifted and scaled differently (FedBN's feature shift)."""
    rng = np.random.default_rng(0)
    sites = {}

    def make(k, n):
        z = rng.normal(size=(n, 4))
        y = (z[:, 0] + (0.5 if k == 1 else -0.5) * z[:, 1] > 0).astype(np.float32)
        return ArrayDataset((z * (1 + k) + 3 * k).astype(np.float32), y)

    for k in range(n_sites):
        sites[SiteId(f"site-{k}")] = SiteData(make(k, rows), make(k, rows // 2))
    return sites


def as_dataset(sites):
    return FederatedDataset(
        name="toy", kind="binary", sites=sites, local_view=sites, pooled_view=sites, feature_names=tuple("abcd")
    )


def test_fedbn_norm_entries_never_leave_the_site():
    task = make_task("mlp", n_features=4, hidden=(4,), input_norm=True, hidden_norm=True, local="norm")
    local = task.local_keys()
    names = task.init_model(np.random.default_rng(0))
    assert local == {k for k in names if k.startswith(("body.0.", "body.2."))}  # the two BatchNorm layers
    assert "body.0.running_var" in local and "head.weight" not in local
    nodes = build_nodes(shifted_sites(), task)
    replies = []

    def spy(node):
        def handle(message):
            reply = node.handle(message)
            replies.append(reply)
            return reply

        return handle

    channel = InProcessChannel({s: spy(n) for s, n in nodes.items()}, max_workers=1)
    shared = {k: v for k, v in task.init_model(np.random.default_rng(0)).items() if k not in local}
    coordinator = Coordinator(
        channel=channel, strategy=FedAvg(fit_config=FIT), task_name=task.name, task_hash=task_hash(task), rounds=3
    )
    spec = RunSpec(RunId("r"), "fedbn", "toy", "fedavg", task.name, task_hash(task), 0, 3, {})
    result = coordinator.run(shared, spec=spec)
    channel.close()
    assert len(replies) == 3 * 3 * 2  # fit + evaluate, 3 sites, 3 rounds
    for reply in replies:
        assert not reply.has_error, reply.error
        for record in reply.payload.arrays.values():
            assert not set(record) & local
    assert not set(result.state.model) & local
    # each site kept its own statistics: the input BN running means follow each site's shift
    means = [
        model_for(task, result.state.model, n.site_state[RunId("r")])["body.0.running_mean"] for n in nodes.values()
    ]
    assert means[0][0] < means[1][0] < means[2][0]


def test_unknown_or_unsupported_personalisation_is_a_config_error():
    data = as_dataset(shifted_sites())
    with pytest.raises(ConfigError, match="shares everything"):
        run_experiment(
            data,
            make_task("logreg", n_features=4),
            ExperimentConfig(rounds=1, personalization="fedbn"),
            settings=("federated",),
        )
    with pytest.raises(ConfigError, match="ditto_lambda"):
        run_experiment(
            data,
            make_task("mlp", n_features=4),
            ExperimentConfig(rounds=1, personalization="ditto"),
            settings=("federated",),
        )


@pytest.mark.parametrize(
    ("method", "task_kw", "personal_config"),
    [
        ("fedper", {"hidden": (4,), "local": "head"}, {}),
        ("ditto", {"hidden": ()}, {"ditto_lambda": 0.1}),
        ("fedbn", {"hidden": (), "input_norm": True, "local": "norm"}, {}),
        ("finetune", {"hidden": ()}, {"optimizer": "sgd", "lr": 0.1, "local_epochs": 3}),
    ],
)
def test_personalised_methods_end_with_different_per_site_models(method, task_kw, personal_config, monkeypatch):
    import fedcare.experiment as experiment

    captured = {}
    original = experiment._personal_models

    def capture(*args, **kwargs):
        captured["models"] = original(*args, **kwargs)
        return captured["models"]

    monkeypatch.setattr(experiment, "_personal_models", capture)
    data = as_dataset(shifted_sites())
    task = make_task("mlp", n_features=4, **task_kw)
    cfg = ExperimentConfig(rounds=3, fit_config=FIT, personalization=method, personal_config=personal_config)
    summary = run_experiment(data, task, cfg, settings=("federated",))
    result = summary["settings"][f"fedavg+{method}"]
    models = list(captured["models"].values())
    assert len(models) == 3
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert any(not np.array_equal(models[a][k], models[b][k]) for k in models[a])
    # per_site is each site's own model on its own test set
    for site, model in captured["models"].items():
        own = task.evaluate(model, data.sites[site].test).metrics["accuracy"]
        assert result["per_site"][site]["accuracy"] == pytest.approx(own)
    assert set(result["calibration"]) == set(data.sites)
