"""``fedcare console``: a site's own view for its data-protection officer (local only, read-only).

Everything comes from what the site itself keeps, nothing from the coordinator: its
``site.toml`` (policy, approved hashes, budget), its hash-chained audit log (every
instruction received, refused or executed, and what left the site: kind, size, BLAKE3
digest) and its privacy ledger (ε spent against the budget).

Routes: ``GET /`` (HTML), ``/api/site``, ``/api/instructions``, ``/api/outgoing``,
``/api/runs``, ``/api/privacy``, ``/api/audit``.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import select

from fedcare.dashboard.app import audit_state
from fedcare.dashboard.readstore import open_read_only, redact_url
from fedcare.dashboard.web import add_common, not_found, page
from fedcare.deploy.config import SiteConfig, load_site_config
from fedcare.errors import StoreError
from fedcare.store.models import PrivacyLedgerRow

__all__ = ["SiteView", "create_console_app", "read_audit_entries", "site_config"]

#: audit events of a node that are about the site's own security (shown with the instructions)
_NOTABLE = {"declined_study", "refused_by_server", "malformed", "reply_refused", "connection_failed", "run_finished"}
_OUTCOMES = {"refused", "failed", "executed"}


def site_config(path: str | Path) -> SiteConfig:
    """The site's configuration (the one place the console reads ``site.toml``)."""
    return load_site_config(path)


def read_audit_entries(path: Path) -> list[dict[str, Any]]:
    """Every complete entry of a JSONL audit log (a line being written right now is skipped)."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read audit log {path}: {exc}") from None
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the verify result says whether the chain is intact
        if isinstance(entry, dict):
            out.append(entry)
    return out


@dataclass
class SiteView:
    """What the console shows, computed from the site's config, audit log and ledger."""

    cfg: SiteConfig

    def instructions(self) -> list[dict[str, Any]]:
        """Each instruction received with what the site did about it; newest first."""
        pending: dict[tuple[str, int], deque[dict[str, Any]]] = defaultdict(deque)
        out: list[dict[str, Any]] = []
        approved = set(self.cfg.approved_task_hashes)
        for e in read_audit_entries(self.cfg.audit_log):
            event = e.get("event")
            if event == "received":
                records = e.get("records") or []
                item = {
                    "seq": e.get("seq"),
                    "time": e.get("time"),
                    "run_id": e.get("run_id", ""),
                    "round_no": e.get("round_no"),
                    "kind": e.get("kind", ""),
                    "task_hash": e.get("task_hash", ""),
                    "hash_approved": e.get("task_hash", "") in approved,
                    "bytes_in": sum(int(r.get("size", 0)) for r in records if isinstance(r, dict)),
                    "outcome": "pending",
                    "reason": "",
                }
                out.append(item)
                pending[(str(item["kind"]), int(item["round_no"] or 0))].append(item)
            elif event in _OUTCOMES:
                queue = pending.get((str(e.get("kind", "")), int(e.get("round_no") or 0)))
                if queue:
                    item = queue.popleft()
                    item["outcome"] = event
                    item["reason"] = e.get("reason", "")
                    item["duration_s"] = e.get("duration_s")
            elif event in _NOTABLE:
                reason = e.get("reason") or e.get("error") or ""
                previous = out[-1] if out else None
                if previous is not None and previous["kind"] == event and previous["reason"] == reason:
                    previous["count"] += 1  # a node retrying for hours writes one line per attempt: show one row
                    previous["last_time"] = e.get("time")
                    continue
                out.append(
                    {
                        "seq": e.get("seq"),
                        "time": e.get("time"),
                        "run_id": e.get("run_id", ""),
                        "round_no": None,
                        "kind": event,
                        "task_hash": "",
                        "hash_approved": None,
                        "bytes_in": 0,
                        "outcome": "refused" if event in ("declined_study", "reply_refused") else "event",
                        "reason": reason or (f"study {e.get('study')}" if e.get("study") else ""),
                        "count": 1,
                        "last_time": e.get("time"),
                    }
                )
        return out[::-1]

    def outgoing(self) -> list[dict[str, Any]]:
        """What left the site: every reply sent, with its records' sizes and digests; newest first."""
        out = []
        for e in read_audit_entries(self.cfg.audit_log):
            if e.get("event") != "sent":
                continue
            records = [r for r in (e.get("records") or []) if isinstance(r, dict)]
            out.append(
                {
                    "seq": e.get("seq"),
                    "time": e.get("time"),
                    "round_no": e.get("round_no"),
                    "kind": e.get("kind", ""),
                    "error": bool(e.get("error")),
                    "metrics": list(e.get("metrics") or []),
                    "records": [
                        {"name": r.get("name", ""), "size": int(r.get("size", 0)), "blake3": r.get("blake3", "")}
                        for r in records
                    ],
                    "bytes": sum(int(r.get("size", 0)) for r in records),
                }
            )
        return out[::-1]

    def runs(self) -> list[dict[str, Any]]:
        """Runs this site joined (from its audit log), with what it did in each."""
        runs: dict[str, dict[str, Any]] = {}
        current = ""
        for e in read_audit_entries(self.cfg.audit_log):
            event = e.get("event")
            if event == "joined":
                current = str(e.get("run_id", ""))
                run = runs.setdefault(
                    current,
                    {
                        "run_id": current,
                        "study": e.get("study", ""),
                        "task": e.get("task", ""),
                        "task_hash": e.get("task_hash", ""),
                        "hash_approved": e.get("task_hash", "") in set(self.cfg.approved_task_hashes),
                        "first_joined": e.get("time"),
                        "joins": 0,
                        "executed": 0,
                        "refused": 0,
                        "failed": 0,
                        "bytes_out": 0,
                        "finished": False,
                    },
                )
                run["joins"] += 1
            elif current in runs:
                run = runs[current]
                if event in _OUTCOMES:
                    run[event] += 1
                elif event == "sent":
                    run["bytes_out"] += sum(
                        int(r.get("size", 0)) for r in e.get("records") or [] if isinstance(r, dict)
                    )
                elif event == "run_finished":
                    run["finished"] = True
        privacy = self.privacy()["per_run"]
        for run_id, run in runs.items():
            run["epsilon"] = privacy.get(run_id, {}).get("epsilon_run")
        return list(runs.values())[::-1]

    def privacy(self) -> dict[str, Any]:
        """ε spent against the budget, per run and entry, from the site's own ledger."""
        budget = self.cfg.policy.max_epsilon
        base: dict[str, Any] = {
            "ledger": redact_url(self.cfg.ledger_url),
            "budget": budget,
            "delta": self.cfg.policy.delta,
            "spent": 0.0,
            "per_run": {},
            "entries": [],
        }
        try:
            engine = open_read_only(self.cfg.ledger_url)
        except StoreError as exc:
            base["problem"] = str(exc)
            return base
        try:
            with engine.connect() as conn:
                table = PrivacyLedgerRow.__table__
                rows = list(conn.execute(select(table).where(table.c.site == self.cfg.site).order_by(table.c.id)))
        except Exception as exc:  # an older ledger without the table: nothing spent yet
            base["problem"] = f"cannot read the ledger: {exc.__class__.__name__}"
            rows = []
        finally:
            engine.dispose()
        per_run: dict[str, dict[str, Any]] = {}
        for r in rows:
            entry = per_run.setdefault(r.run_id, {"epsilon_run": 0.0, "rounds": 0, "mechanism": r.mechanism})
            entry["epsilon_run"] = max(entry["epsilon_run"], r.epsilon_run)
            entry["rounds"] += 1
        base["spent"] = max((r.epsilon_total for r in rows), default=0.0)
        base["per_run"] = per_run
        base["entries"] = [
            {
                "run_id": r.run_id,
                "round_no": r.round_no,
                "study": r.study,
                "mechanism": r.mechanism,
                "noise_multiplier": r.noise_multiplier,
                "sample_rate": r.sample_rate,
                "steps": r.steps,
                "epsilon_round": r.epsilon_round,
                "epsilon_total": r.epsilon_total,
                "accountant": r.accountant,
            }
            for r in rows[::-1]
        ]
        return base

    def site(self) -> dict[str, Any]:
        """Identity, policy and the state of the audit chain."""
        p = self.cfg.policy
        return {
            "site": self.cfg.site,
            "coordinator": self.cfg.address,
            "studies": list(self.cfg.studies),
            "approved_task_hashes": list(self.cfg.approved_task_hashes),
            "approved_study_hashes": sorted(p.approved_study_hashes or ()),
            "policy": {
                "max_epsilon": p.max_epsilon,
                "delta": p.delta,
                "min_peers": p.min_peers,
                "require_secure_aggregation": p.require_secure_aggregation,
                "trust_central_noise": p.trust_central_noise,
                "allow_seeded_noise": p.allow_seeded_noise,
            },
            "audit": audit_state(self.cfg.audit_log),
        }


def create_console_app(config: str | Path) -> FastAPI:
    """The site console for the site described by ``config`` (its ``site.toml``)."""
    view = SiteView(site_config(config))
    app = FastAPI(title="fedcare site console", docs_url=None, redoc_url=None, openapi_url=None)
    add_common(app, None)  # local only: the command binds 127.0.0.1 and nothing else

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        body = (
            "<header><h1 id='title'>site console</h1><p id='subtitle' class='muted'></p></header><main>"
            "<section id='cards' class='cards'></section>"
            "<section><h2>Privacy budget</h2><div id='budget'></div><div id='ledger'></div></section>"
            "<section><h2>Runs this site took part in</h2><div id='runs'></div></section>"
            "<section><h2>Instructions received</h2><div class='scroll tall'><table id='instructions' class='grid'>"
            "<thead><tr><th>#</th><th>time</th><th>run</th><th>round</th><th>instruction</th><th>task hash</th>"
            "<th>outcome</th><th>reason</th></tr></thead><tbody></tbody></table></div></section>"
            "<section><h2>What left the site</h2><div class='scroll tall'><table id='outgoing' class='grid'>"
            "<thead><tr><th>#</th><th>time</th><th>round</th><th>kind</th><th>records (size · BLAKE3)</th>"
            "<th>metrics</th></tr></thead><tbody></tbody></table></div></section>"
            "<section><h2>Policy</h2><div id='policy'></div></section></main>"
        )
        return page("fedcare · site console", body, script="console.js", data={"view": "console"})

    @app.get("/api/site")
    def api_site() -> dict[str, Any]:
        return view.site()

    @app.get("/api/instructions")
    def api_instructions() -> dict[str, Any]:
        return {"instructions": view.instructions()}

    @app.get("/api/outgoing")
    def api_outgoing() -> dict[str, Any]:
        return {"outgoing": view.outgoing()}

    @app.get("/api/runs")
    def api_runs() -> dict[str, Any]:
        return {"runs": view.runs()}

    @app.get("/api/privacy")
    def api_privacy() -> dict[str, Any]:
        return view.privacy()

    @app.get("/api/audit")
    def api_audit() -> dict[str, Any]:
        return audit_state(view.cfg.audit_log)

    @app.get("/api/{rest:path}")
    def api_unknown(rest: str) -> JSONResponse:
        return not_found(f"no such endpoint /api/{rest}")

    app.state.view = view
    return app
