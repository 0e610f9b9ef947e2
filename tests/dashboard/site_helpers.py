"""A site's own records for the console tests: site.toml, its audit log and its privacy ledger.

The audit entries are written with the real AuditLog, in the words and fields the deployed
node (fedcare.transport.grpc_node) uses; the ledger is charged through the real PrivacyLedger.
"""

from __future__ import annotations

from pathlib import Path

from fedcare.privacy.accounting import Mechanism, PrivacyCost
from fedcare.store import SqlStore
from fedcare.store.audit import AuditLog
from fedcare.store.ledger import sql_ledger

SITE = "hospital-a"
APPROVED = "a" * 64
UNAPPROVED = "b" * 64
BUDGET = 8.0


def build_site(root: Path) -> Path:
    """Write site.toml + audit log + ledger: run-1 executed two rounds, run-2's task was refused."""
    audit_path, ledger = root / "audit.jsonl", root / "ledger.db"
    config = root / "site.toml"
    config.write_text(
        f"""
[site]
name = "{SITE}"
[server]
address = "coordinator.example:50051"
ca = "ca.pem"
cert = "site.pem"
key = "site.key"
[policy]
studies = ["cardio"]
approved_task_hashes = ["{APPROVED}"]
max_epsilon = {BUDGET}
ledger = "sqlite:///{ledger}"
[data]
dataset = "heart-disease"
site = "cleveland"
[audit]
path = "{audit_path}"
""",
        encoding="utf-8",
    )
    store = SqlStore(f"sqlite:///{ledger}")
    book = sql_ledger(store, site=SITE, study="all-studies")
    log = AuditLog(audit_path, actor=SITE)
    log.append("start", task="logreg", task_hash=APPROVED, studies=["cardio"], server="coordinator.example:50051")
    log.append("joined", study="cardio", run_id="run-1", task="logreg", task_hash=APPROVED, protocol="1.2")
    for round_no in (1, 2):
        model = [{"name": "model", "size": 56, "blake3": f"{round_no}" * 64}]
        log.append(
            "received",
            kind="fit",
            run_id="run-1",
            round_no=round_no,
            message_id=f"m{round_no}",
            task_hash=APPROVED,
            records=model,
        )
        cost = PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=1.1, sample_rate=0.05, steps=20)
        book.charge(run_id="run-1", round_no=round_no, costs=[cost], max_epsilon=BUDGET)
        log.append("executed", kind="fit", round_no=round_no, duration_s=0.25)
        update = [{"name": "model", "size": 56, "blake3": f"{round_no + 4}" * 64}]
        log.append(
            "sent",
            kind="fit",
            round_no=round_no,
            reply_to=f"m{round_no}",
            error=False,
            metrics=["num_examples", "train_loss"],
            records=update,
        )
    log.append("run_finished", run_id="run-1", reason="completed 2 rounds")
    log.append("joined", study="cardio", run_id="run-2", task="logreg", task_hash=UNAPPROVED, protocol="1.2")
    log.append("received", kind="fit", run_id="run-2", round_no=1, message_id="m9", task_hash=UNAPPROVED, records=[])
    reason = f"refused: task hash {UNAPPROVED} is not approved by this site"
    log.append("refused", kind="fit", round_no=1, reason=reason)
    log.append("sent", kind="fit", round_no=1, reply_to="m9", error=True, metrics=[], records=[])
    for _ in range(3):  # the coordinator went away: the node retries
        log.append("connection_failed", reason="the coordinator is unreachable")
    log.close()
    store.close()
    return config
