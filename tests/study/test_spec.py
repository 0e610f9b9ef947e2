"""study.toml and site.toml: validation with one-line errors, content hash, round trip, site policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedcare.build.site import site_gate
from fedcare.errors import ConfigError
from fedcare.study.builtin import BUILTIN_STUDIES, resolve_study
from fedcare.study.site import load_site, parse_site
from fedcare.study.spec import load_study, parse_study, study_from_json
from fedcare.study.toml import dump_toml
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "heart-study"


def _study(**tables: object) -> dict:
    base = {
        "study": {"name": "s"},
        "task": {"name": "logreg"},
        "data": {"dataset": "heart-disease"},
        "federation": {"rounds": 2},
    }
    base.update(tables)  # type: ignore[arg-type]
    return base


def test_unknown_keys_are_errors_with_did_you_mean(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(dump_toml(_study(federation={"round": 3}, strategy={"nmae": "fedavg"})))
    with pytest.raises(ConfigError) as err:
        load_study(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "'federation.round' (did you mean 'federation.rounds'?)" in message
    assert "'strategy.nmae' (did you mean 'strategy.name'?)" in message
    # a key written in the wrong table is pointed to the right one
    with pytest.raises(ConfigError, match=r"'study.rounds' \(did you mean 'federation.rounds'\?\)"):
        parse_study(_study(study={"name": "s", "rounds": 3}))


def test_bad_values_unknown_strategy_and_parameters_are_one_line_errors():
    with pytest.raises(ConfigError, match="federation.rounds must be an integer >= 1, got 0"):
        parse_study(_study(federation={"rounds": 0}))
    with pytest.raises(ConfigError, match="unknown strategy 'fedsgd'"):
        parse_study(_study(strategy={"name": "fedsgd"}))
    with pytest.raises(ConfigError, match="strategy"):
        parse_study(_study(strategy={"name": "fedprox", "params": {"mu_typo": 1}}))
    with pytest.raises(ConfigError, match="privacy.level = 'record' needs privacy.epsilon"):
        parse_study(_study(privacy={"level": "record"}))
    with pytest.raises(ConfigError, match="personalization.method = 'ditto' needs ditto_lambda > 0"):
        parse_study(_study(personalization={"method": "ditto"}))


def test_the_hash_covers_content_not_layout_and_survives_the_wire(tmp_path):
    text = (EXAMPLE / "study.toml").read_text()
    a = tmp_path / "a.toml"
    a.write_text(text)
    b = tmp_path / "b.toml"
    b.write_text("# a comment\n" + text.replace("rounds = 20", "rounds   =   20  # same"))
    c = tmp_path / "c.toml"
    c.write_text(text.replace("rounds = 20", "rounds = 21"))
    assert load_study(a).hash == load_study(b).hash != load_study(c).hash
    study = load_study(a)
    back = study_from_json(study.to_json())
    assert back.hash == study.hash
    # the schema's column order is the model's input order: it survives the canonical form
    assert [c.name for c in back.data.schema.columns] == [c.name for c in study.data.schema.columns]
    for name in BUILTIN_STUDIES:
        assert study_from_json(resolve_study(name).to_json()).hash == resolve_study(name).hash


def test_site_files_of_either_former_layout_read_the_same(tmp_path):
    new = parse_site(
        {
            "site": {"id": "north"},
            "data": {"kind": "builtin", "dataset": "heart-disease", "site": "cleveland"},
            "policy": {"studies": ["s"]},
            "coordinator": {"address": "h:1", "ca": "ca.pem", "cert": "c.pem", "key": "c.key"},
        },
        origin=tmp_path / "site.toml",
    )
    old = parse_site(
        {
            "site": {"name": "north"},
            "data": {"dataset": "heart-disease", "site": "cleveland"},
            "policy": {"studies": ["s"]},
            "server": {"address": "h:1", "ca": "ca.pem", "cert": "c.pem", "key": "c.key"},
        },
        origin=tmp_path / "site.toml",
    )
    assert (new.site_id, new.kind, new.options, new.coordinator) == (
        old.site_id,
        old.kind,
        old.options,
        old.coordinator,
    )
    assert new.coordinator is not None and new.coordinator.tls.ca == tmp_path / "ca.pem"
    with pytest.raises(ConfigError, match=r"'policy.max_epsilom' \(did you mean 'policy.max_epsilon'\?\)"):
        parse_site({"site": {"id": "a"}, "data": {"kind": "builtin", "dataset": "x"}, "policy": {"max_epsilom": 1}})


def _fit(study, site: str, config: dict) -> Message:
    return Message(
        MessageKind.EVALUATE,
        RunId("r"),
        1,
        SiteId(site),
        Payload(
            arrays={"model": {"weight": np.zeros((1, 13), np.float32), "bias": np.zeros(1, np.float32)}},
            config={"study": study.name, "study_hash": study.hash, "study_spec": study.to_json(), **config},
        ),
    )


def test_a_site_refuses_a_study_it_did_not_opt_in_to_or_pin_and_builds_the_one_it_did():
    heart = resolve_study("heart-disease")
    spec = parse_site(
        {
            "site": {"id": "cleveland"},
            "data": {"kind": "builtin", "dataset": "heart-disease"},
            "policy": {"studies": ["other"]},
        }
    )
    gate = site_gate(spec)
    refused = gate.handle(_fit(heart, "cleveland", {}))
    assert refused.error is not None and "not in this site's opt-in list" in refused.error
    pinned = replace(spec, policy=replace(spec.policy, studies=None, approved_study_hashes=frozenset({"0" * 64})))
    refused = site_gate(pinned).handle(_fit(heart, "cleveland", {}))
    assert refused.error is not None and f"study {heart.name!r} hash {heart.hash} is not approved" in refused.error
    # a forged announcement (content that does not match its hash) is refused
    forged = replace(heart, seed=99)
    message = _fit(heart, "cleveland", {})
    message = replace(
        message, payload=replace(message.payload, config={**message.payload.config, "study_spec": forged.to_json()})
    )
    assert "does not match its hash" in (
        site_gate(replace(spec, policy=replace(spec.policy, studies=None))).handle(message).error or ""
    )
    # opted in: the site builds its data, task and node from the announced study
    ok_gate = site_gate(replace(spec, policy=replace(spec.policy, studies=frozenset({heart.name}))))
    reply = ok_gate.handle(_fit(heart, "cleveland", {"task": "logreg"}))
    node_task_hash = ok_gate.node.task_hash
    assert reply.error is not None and "task hash" in reply.error  # the instruction named no approved task hash
    reply = ok_gate.handle(_fit(heart, "cleveland", {"task": "logreg", "task_hash": node_task_hash}))
    assert reply.error is None and reply.payload.metrics["num_examples"] > 0


def test_site_data_is_checked_against_the_study_before_training(tmp_path):
    study = load_study(EXAMPLE / "study.toml")
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak\n63,1,9,145,233,1,2,150,0,2.3\n")
    site = tmp_path / "bad.toml"
    site.write_text(dump_toml({"site": {"id": "bad"}, "data": {"kind": "csv", "path": str(bad)}}))
    from fedcare.build.site import load_site_data
    from fedcare.errors import DataError

    with pytest.raises(DataError) as err:
        load_site_data(load_site(site), study)
    assert "bad.csv" in str(err.value) and "num" in str(err.value)  # the missing target column is named


def test_simulation_table_says_where_sites_run_and_is_not_part_of_the_hash():
    plain = parse_study(_study())
    ray = parse_study(
        _study(simulation={"backend": "ray", "ray_actors": 4, "cpus_per_site": 0.5, "memory_per_site": "512MiB"})
    )
    assert ray.simulation.backend == "ray" and ray.simulation.ray_actors == 4
    assert ray.simulation.cpus_per_site == 0.5 and ray.simulation.memory_per_site == 512 << 20
    assert plain.simulation.backend == "inprocess"
    assert ray.hash == plain.hash  # where it runs is not what is trained
    # the command line replaces a setting of the file; another backend drops the file's Ray settings
    assert ray.simulation.merged(ray_actors=8, memory_per_site="1GB").ray_actors == 8
    assert ray.simulation.merged(memory_per_site="1GB").memory_per_site == 10**9
    assert ray.simulation.merged(backend="inprocess").ray_actors is None


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"backend": "spark"}, "simulation.backend must be one of 'inprocess', 'ray', got 'spark'"),
        ({"ray_actors": 2}, "simulation.ray_actors applies only to backend = 'ray'"),
        ({"backend": "ray", "ray_actors": 0}, "simulation.ray_actors must be an integer >= 1, got 0"),
        ({"backend": "ray", "cpus_per_site": 0}, "simulation.cpus_per_site must be a positive number, got 0"),
        ({"backend": "ray", "memory_per_site": "lots"}, "simulation.memory_per_site must be a positive number of"),
        ({"backend": "ray", "actors": 2}, "'simulation.actors' (did you mean 'simulation.ray_actors'?)"),
    ],
)
def test_simulation_settings_are_checked_with_one_line_errors(table, expected):
    with pytest.raises(ConfigError) as err:
        parse_study(_study(simulation=table))
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("option", ["ray_actors", "cpus_per_site", "memory_per_site"])
def test_an_in_process_channel_refuses_each_ray_option_by_name(option):
    from fedcare.build.federated import site_channel

    with pytest.raises(ConfigError, match=rf"^{option} applies only to the ray backend$"):
        site_channel({}, backend="inprocess", **{option: 1})


def test_command_line_simulation_overrides_are_checked_with_one_line_errors():
    spec = parse_study(_study()).simulation
    with pytest.raises(ConfigError, match=r"simulation.ray_actors must be an integer >= 1, got 0$"):
        spec.merged(backend="ray", ray_actors=0)
    with pytest.raises(ConfigError, match="simulation.memory_per_site applies only to backend = 'ray'"):
        spec.merged(memory_per_site="1GB")
