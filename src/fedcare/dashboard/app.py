"""``fedcare dashboard``: the coordinating centre's live view of its runs (read-only).

Routes
------
``GET /``                         runs list (HTML)
``GET /runs/{id}``                one run: curves per site, participation, events, bytes, ε, config (HTML)
``GET /api/runs``                 runs list (JSON)
``GET /api/runs/{id}``            one run (JSON; the audit chain is ``/api/audit``)
``GET /api/runs/{id}/metrics``    per-round, per-site curves (JSON)
``GET /api/runs/{id}/stream``     server-sent events while the run changes; ends when it is over
``GET /api/audit``                state of the coordinator's audit chain (JSON)

Simulated, rehearsed and deployed runs are all rows of the same store, so the same
pages show them.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from fedcare.dashboard.readstore import RunReader, redact_url
from fedcare.dashboard.web import add_common, fast_json, not_found, page
from fedcare.store.audit import verify_audit_log

__all__ = ["audit_state", "create_app"]


def audit_state(path: Path | None) -> dict[str, Any]:
    """The chain check of an audit log, as JSON (``configured: false`` without one)."""
    if path is None:
        return {"configured": False}
    if not Path(path).exists():
        return {"configured": True, "path": str(path), "ok": False, "entries": 0, "problem": "the log does not exist"}
    report = verify_audit_log(path)
    return {
        "configured": True,
        "path": str(path),
        "ok": report.ok,
        "entries": report.entries,
        "head": report.head,
        "problem": report.problem,
    }


def create_app(
    db_url: str,
    *,
    token: str | None = None,
    audit_log: Path | None = None,
    poll_s: float = 1.0,
    stream_max_s: float = 300.0,
) -> FastAPI:
    """The dashboard over the store at ``db_url`` (opened read-only).

    Parameters
    ----------
    db_url : str
        SQLAlchemy URL of the run store.
    token : str or None (default: None)
        When set, every page and API call needs it (``Authorization: Bearer``, ``?token=``
        once in the browser, then a cookie).
    audit_log : Path or None (default: None)
        The coordinator's audit log, whose chain the pages report.
    poll_s : float (default: 1.0)
        How often a live stream looks for new rounds.
    stream_max_s : float (default: 300.0)
        A stream ends after this long (the browser reconnects), so no connection is held forever.
    """
    reader = RunReader(db_url)
    finished: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # JSON of finished runs, which never change

    def run_json(kind: str, run_id: str, build: Callable[[str], dict[str, Any] | None]) -> Response:
        """The JSON of a run; a finished run's is built once (LRU of 64): a 1,000-round run's takes seconds."""
        body = finished.get((kind, run_id))
        if body is None:
            state = reader.version(run_id)
            content = build(run_id) if state is not None else None
            if content is None:
                return not_found(f"unknown run {run_id!r}")
            body = json.dumps(content, separators=(",", ":")).encode()
            if state is not None and state["status"] != "running":
                finished[(kind, run_id)] = body
                while len(finished) > 64:
                    finished.popitem(last=False)
        else:
            finished.move_to_end((kind, run_id))
        return Response(body, media_type="application/json")

    app = FastAPI(title="fedcare dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    add_common(app, token)
    store_label = redact_url(db_url)

    @app.get("/", response_class=HTMLResponse)
    def runs_page() -> str:
        body = (
            "<header><h1>fedcare · runs</h1>"
            f"<p class='muted'>store {html.escape(store_label)} · read-only</p></header>"
            "<main><p id='audit' class='muted'></p><table id='runs' class='grid'><thead><tr>"
            "<th>run</th><th>status</th><th>study</th><th>strategy</th><th>task · hash</th><th>sites</th>"
            "<th>rounds</th><th>started</th><th>ended</th></tr></thead><tbody></tbody></table>"
            "<p id='empty' class='muted' hidden>No runs in this store yet.</p></main>"
        )
        return page("fedcare · runs", body, script="dashboard.js", data={"view": "runs"})

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: str) -> HTMLResponse:
        if reader.version(run_id) is None:
            body = f"<main><p class='error'>unknown run {html.escape(run_id)}</p><p><a href='/'>all runs</a></p></main>"
            return HTMLResponse(page("fedcare · unknown run", body), status_code=404)
        body = (
            "<header><p><a href='/'>← all runs</a></p><h1 id='title'></h1><p id='subtitle' class='muted'></p>"
            "<p id='live' class='live' hidden>live</p></header><main>"
            "<section id='cards' class='cards'></section>"
            "<section><h2>Metrics per round and site</h2><div id='charts' class='charts'></div></section>"
            "<section><h2>Participation</h2><p class='muted'>one cell per site and round: "
            "<span class='chip ok'>update</span> <span class='chip refused'>refused</span> "
            "<span class='chip dropped'>dropped</span> <span class='chip failed'>failed</span> "
            "<span class='chip none'>not sampled</span></p><div id='participation' class='scroll'></div></section>"
            "<section><h2>Refusals, dropouts and failures</h2><table id='events' class='grid'><thead><tr>"
            "<th class='num'>round</th><th>site</th><th>what</th><th>reason</th></tr></thead><tbody></tbody>"
            "</table></section>"
            "<section><h2>Rounds</h2><div class='scroll tall'><table id='rounds' class='grid'><thead><tr>"
            "<th class='num'>round</th><th class='num'>sites ok / sampled</th><th class='num'>duration</th>"
            "<th class='num'>bytes to sites</th><th class='num'>bytes from sites</th><th>eval (weighted mean)</th>"
            "</tr></thead><tbody></tbody></table></div></section>"
            "<section><h2>Privacy spent (ε) per site</h2><div id='privacy'></div></section>"
            "<section><h2>Final test metrics per site</h2><div id='tests'></div></section>"
            "<section><h2>Audit chain</h2><p id='audit'></p></section>"
            "<section><h2>Strategy and study configuration</h2><pre id='config'></pre></section></main>"
        )
        return HTMLResponse(
            page(f"fedcare · {run_id}", body, script="dashboard.js", data={"view": "run", "run": run_id})
        )

    @app.get("/api/runs")
    def api_runs() -> Any:
        return fast_json({"store": store_label, "runs": reader.runs()})

    @app.get("/api/runs/{run_id}")
    def api_run(run_id: str) -> Response:
        return run_json("run", run_id, reader.run)

    @app.get("/api/runs/{run_id}/metrics")
    def api_metrics(run_id: str) -> Response:
        return run_json("metrics", run_id, reader.metrics)

    @app.get("/api/runs/{run_id}/stream")
    async def api_stream(run_id: str, request: Request) -> Any:
        first = await asyncio.to_thread(reader.version, run_id)
        if first is None:
            return not_found(f"unknown run {run_id!r}")

        async def events() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            last: dict[str, Any] | None = None
            waited = 0.0
            while waited < stream_max_s:
                now = await asyncio.to_thread(reader.version, run_id)
                if now is None:
                    return
                if now != last:
                    yield f"event: update\ndata: {json.dumps(now)}\n\n"
                    last = now
                if now["status"] != "running":
                    yield "event: end\ndata: {}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(poll_s)
                waited += poll_s

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get("/api/audit")
    def api_audit() -> dict[str, Any]:
        return audit_state(audit_log)

    @app.get("/api/{rest:path}")
    def api_unknown(rest: str) -> JSONResponse:
        return not_found(f"no such endpoint /api/{rest}")

    app.state.reader = reader
    return app


def start_beside(
    db_url: str, *, audit_log: Path | None, host: str = "127.0.0.1", port: int = 8050, token: str | None = None
) -> Any:
    """Serve the dashboard on a background thread next to a running study (``fedcare server --dashboard``).

    The store is created first if the study has not written it yet, so the read-only
    dashboard can open it; returns the started :class:`~fedcare.dashboard.web.BackgroundServer`.
    """
    from fedcare.dashboard.web import BackgroundServer, check_bind
    from fedcare.store.sql import SqlStore

    check_bind(host, token)
    SqlStore(db_url, checkpoint_dir=None).close()  # tables exist before the read-only open
    return BackgroundServer(create_app(db_url, token=token, audit_log=audit_log), host=host, port=port).start()
