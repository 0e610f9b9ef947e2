"""The contract: one study file gives the same model in `fedcare simulate` and in `fedcare up`.

`simulate` runs every site in one process; `up` runs a real `fedcare server` and one
`fedcare node` per site as separate processes over gRPC with mutual TLS. Both read the
same study file and the same site files (the heart-disease CSVs of two hospitals), and
each site prepares its data with statistics the sites combine. Same seed, same final
model (float tolerance), same privacy ledgers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

import fedcare.cli.study  # noqa: F401  (registers simulate, up)
from fedcare.cli.app import app
from fedcare.he import find_openfhe_python
from fedcare.store import SqlStore
from fedcare.study.toml import dump_toml
from fedcare.types import RunId

pytestmark = [pytest.mark.slow, pytest.mark.grpc]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "heart-study"
SITES = ("cleveland", "hungary")
#: SecAgg+ needs at least three sites (two neighbours each for the default threshold).
SECAGG_SITES = ("cleveland", "hungary", "va-long-beach")
COLUMNS = {
    "age": {"type": "number"},
    "sex": {"type": "integer"},
    "cp": {"type": "category", "codes": [1, 2, 3, 4]},
    "trestbps": {"type": "number"},
    "chol": {"type": "number"},
    "thalach": {"type": "number"},
    "oldpeak": {"type": "number"},
    "num": {"type": "integer"},
}
MLP_NORM = {"name": "mlp", "params": {"hidden": [8], "input_norm": True, "local": "norm"}}
SECAGG = {"enabled": True, "seeded": True, "clip": 4.0, "bits": 20}
RECORD_DP = {"level": "record", "epsilon": 3.0, "seeded_noise": True, "batch_size": 100000}
#: Threshold CKKS (docs/he.md); the sites' policy requires it (require_encryption).
CKKS = {"enabled": True, "mode": "ckks"}
#: Peer-to-peer rounds (docs/p2p.md); the sites' policy requires them (require_peer_to_peer).
P2P = {"enabled": True, "mode": "p2p", "seeded": True, "clip": 4.0, "bits": 20}

CASES = {
    "fedavg": {},
    "secagg-record-dp": {"secure_aggregation": SECAGG, "privacy": RECORD_DP},
    "ckks-record-dp": {"secure_aggregation": CKKS, "privacy": RECORD_DP},
    "p2p-record-dp": {"secure_aggregation": P2P, "privacy": RECORD_DP},
    "fedbn": {"task": MLP_NORM, "personalization": {"method": "fedbn"}},
    "fedbn-secagg": {"task": MLP_NORM, "personalization": {"method": "fedbn"}, "secure_aggregation": SECAGG},
    "scaffold": {"strategy": {"name": "scaffold"}},
}


def _write_study(folder: Path, name: str, extra: dict) -> Path:
    study = {
        "study": {"name": f"contract-{name}", "seed": 3},
        "task": {"name": "logreg"},
        "data": {
            "target": "num",
            "positive": [1, 2, 3, 4],
            "test_fraction": 0.3,
            "split_seed": 1,
            "columns": COLUMNS,
        },
        "strategy": {"name": "fedavg"},
        "federation": {"rounds": 2, "min_sites": 2, "round_timeout_s": 120},
        "fit": {"optimizer": "sgd", "lr": 0.05, "batch_size": 8, "local_epochs": 1},
        "baseline": {"optimizer": "sgd", "lr": 0.05, "batch_size": 8, "local_epochs": 1},
        **extra,
    }
    path = folder / "study.toml"
    path.write_text(dump_toml(study))
    return path


def _write_sites(
    folder: Path,
    study_name: str,
    *,
    budget: bool,
    sites: tuple[str, ...] = SITES,
    encrypted: bool = False,
    peer_to_peer: bool = False,
) -> list[Path]:
    paths = []
    policy: dict = {"studies": [study_name]}
    if budget:
        policy.update(max_epsilon=10.0, allow_seeded_noise=True)
    if encrypted:
        policy.update(require_encryption=True)
    if peer_to_peer:
        policy.update(require_peer_to_peer=True)
    for site in sites:
        path = folder / f"{site}.toml"
        path.write_text(
            dump_toml(
                {
                    "site": {"id": site},
                    "data": {"kind": "csv", "path": str(DATA / f"{site}.csv")},
                    "policy": policy,
                }
            )
        )
        paths.append(path)
    return paths


def _final_model(db: str, prefix: str) -> dict[str, np.ndarray]:
    store = SqlStore(db)
    try:
        runs = [r.id for r in store.list_runs() if r.id.endswith(prefix) or r.id.startswith(prefix)]
        runs = [r for r in runs if r.startswith(prefix) or not r.endswith(("-local", "-pooled"))]
        assert len(runs) == 1, runs
        latest = store.latest_checkpoint(RunId(runs[0]))
        assert latest is not None and latest[0] == 2
        if "ckks" in prefix:  # every round was encrypted (the coordinator saw ciphertexts only)
            assert all("ckks_sites" in r.fit_metrics for r in store.rounds(runs[0]))
        if "p2p" in prefix:  # every round ran at the sites; they agreed on the model's digest each round
            assert all(r.fit_metrics.get("p2p_sites") == 3 for r in store.rounds(runs[0]))
            results = store.results(runs[0])
            assert [results[f"p2p_digest_round_{r}"]["round"] for r in (1, 2)] == [1, 2]
        return latest[1].model
    finally:
        store.close()


def _ledger(db: str) -> list[tuple[str, int, float]]:
    engine = create_engine(db)
    with engine.connect() as c:
        rows = c.execute(text("select site, round_no, epsilon_round from privacy_ledger order by site, round_no"))
        out = [(r[0], int(r[1]), float(r[2])) for r in rows]
    engine.dispose()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_simulate_and_up_give_the_same_model(case: str, tmp_path: Path):
    encrypted = CASES[case].get("secure_aggregation", {}).get("mode") == "ckks"
    if encrypted and find_openfhe_python() is None:
        pytest.skip("no Python with OpenFHE's bindings (make openfhe-env)")
    study = _write_study(tmp_path, case, CASES[case])
    names = SECAGG_SITES if "secure_aggregation" in CASES[case] else SITES
    peer_to_peer = CASES[case].get("secure_aggregation", {}).get("mode") == "p2p"
    sites = _write_sites(
        tmp_path,
        f"contract-{case}",
        budget="privacy" in CASES[case],
        sites=names,
        encrypted=encrypted,
        peer_to_peer=peer_to_peer,
    )
    site_args = [arg for p in sites for arg in ("--site", str(p))]
    sim_db = f"sqlite:///{tmp_path / 'sim.db'}"
    sim = CliRunner().invoke(
        app, ["simulate", "--study", str(study), *site_args, "--out", str(tmp_path / "sim"), "--db", sim_db]
    )
    assert sim.exit_code == 0, sim.output
    up_db = f"sqlite:///{tmp_path / 'up.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    up = subprocess.run(
        [sys.executable, "-m", "fedcare", "up", "--study", str(study), *site_args, "--out", str(tmp_path / "up")]
        + ["--db", up_db, "--timeout", "600"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    setting = "-fedavg" if "fedbn" not in case else "-fedavg+fedbn"
    setting = "-scaffold" if case == "scaffold" else setting
    simulated = _final_model(sim_db, setting)
    rehearsed = _final_model(up_db, f"contract-{case}-")
    assert simulated.keys() == rehearsed.keys()
    for name in simulated:
        np.testing.assert_allclose(rehearsed[name], simulated[name], rtol=1e-5, atol=1e-6, err_msg=name)
    if peer_to_peer:  # the server's audit log holds the digest the sites agreed on, per round
        audit = (tmp_path / "up" / "rehearsal" / "server-audit.jsonl").read_text().splitlines()
        agreed = [json.loads(line) for line in audit if '"p2p_agreed"' in line]
        assert [e["round"] for e in agreed] == [1, 2] and all(len(e["digest"]) == 64 for e in agreed)
    if "privacy" in CASES[case]:
        sim_ledger = _ledger(sim_db)
        rehearsal = tmp_path / "up" / "rehearsal"
        up_ledger = [e for s in sorted(names) for e in _ledger(f"sqlite:///{rehearsal / f'privacy-{s}.db'}")]
        assert len(sim_ledger) == len(up_ledger) == 2 * len(names)
        for (s1, r1, e1), (s2, r2, e2) in zip(sim_ledger, up_ledger, strict=True):
            assert (s1, r1) == (s2, r2) and e1 == pytest.approx(e2, rel=1e-9)
