# ruff: noqa: C408  (row dicts read best as keyword calls)
"""Dashboard responsiveness: 200 runs and one 1,000-round run in a SQLite store.

The store is filled with bulk inserts into the real tables (the rows the Coordinator's
recorder writes: runs, rounds, per-site fit/eval/traffic metrics, refusals); then the
dashboard is served by uvicorn on 127.0.0.1 and every request goes over HTTP:

* API latency: ``/api/runs`` (200+ runs), ``/api/runs/{id}`` and ``/api/runs/{id}/metrics``
  of the 1,000-round run and of a 20-round run: the first call ("cold": the dashboard
  builds a finished run's JSON once and keeps it), then median and p95 over ``--repeats``.
* page latency: the HTML of ``/`` and ``/runs/{id}``, and, when Debian's chromium is
  installed, the time a headless browser takes from navigation until the page has drawn
  its charts (runs list: every row; run page: the last chart's curves) — what a user waits.

Usage::

    python benchmarks/dashboard.py                      # 200 runs x 20 rounds + one 1,000-round run, 8 sites
    python benchmarks/dashboard.py --runs 50 --repeats 5

The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session

from fedcare.dashboard.app import create_app
from fedcare.dashboard.web import BackgroundServer
from fedcare.store import SqlStore
from fedcare.store.models import RoundRow, RunRow, SiteEventRow, SiteMetricRow

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip


def fill(url: str, *, runs: int, rounds: int, big_rounds: int, sites: int, seed: int = 0) -> tuple[str, str, int]:
    """Write ``runs`` runs of ``rounds`` rounds plus one of ``big_rounds``; return (big id, small id, metric rows)."""
    rng = np.random.default_rng(seed)
    store = SqlStore(url)
    names = [f"hospital-{i:02d}" for i in range(sites)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    n_metric_rows = 0
    with Session(store.engine) as s:
        specs = [(f"run-{i:04d}", rounds) for i in range(runs)] + [("run-big", big_rounds)]
        for k, (run_id, n_rounds) in enumerate(specs):
            t0 = start + timedelta(hours=k)
            s.execute(
                insert(RunRow),
                [
                    dict(id=run_id, experiment=f"study-{k % 7}", name=f"fedavg {k}", dataset="heart-disease",
                         strategy="fedavg", task="logreg", task_hash=f"{k:064x}", seed=k, rounds=n_rounds,
                         config={"study": f"study-{k % 7}", "fit_config": {"lr": 0.05, "local_epochs": 1}},
                         status="completed", message="", created_at=t0, finished_at=t0 + timedelta(seconds=n_rounds))
                ],
            )  # fmt: skip
            acc = 0.6 + 0.2 * (1 - np.exp(-np.arange(1, n_rounds + 1) / 20))
            rounds_rows, metric_rows, events = [], [], []
            for r in range(1, n_rounds + 1):
                t = t0 + timedelta(seconds=r)
                refusing = names[-1] if r % 10 == 0 else None
                ok = [n for n in names if n != refusing]
                rounds_rows.append(
                    dict(run_id=run_id, round_no=r, n_sampled=sites, n_succeeded=len(ok), duration_s=0.5,
                         fit_metrics={"train_loss": 1 - acc[r - 1], "num_examples": 100.0 * len(ok)},
                         eval_metrics={"accuracy": acc[r - 1], "loss": 1 - acc[r - 1], "num_examples": 50.0 * sites},
                         finished_at=t)
                )  # fmt: skip
                for site in names:
                    noise = rng.normal(0, 0.02, size=3)
                    values = [("eval", "accuracy", acc[r - 1] + noise[0]), ("eval", "auc", acc[r - 1] + noise[1]),
                              ("eval", "loss", 1 - acc[r - 1] + noise[2]), ("eval", "num_examples", 50.0),
                              ("traffic", "bytes_to_site", 112.0)]  # fmt: skip
                    if site != refusing:
                        values += [("fit", "train_loss", 1 - acc[r - 1] + noise[2]), ("fit", "num_examples", 100.0),
                                   ("traffic", "bytes_from_site", 56.0)]  # fmt: skip
                    metric_rows += [
                        dict(run_id=run_id, round_no=r, site=site, phase=p, name=n, value=float(v))
                        for p, n, v in values
                    ]
                if refusing:
                    events.append(
                        dict(run_id=run_id, round_no=r, site=refusing, kind="refusal", created_at=t,
                             message=f"refused: round {r} would exceed the privacy budget")
                    )  # fmt: skip
            s.execute(insert(RoundRow), rounds_rows)
            s.execute(insert(SiteMetricRow), metric_rows)
            if events:
                s.execute(insert(SiteEventRow), events)
            n_metric_rows += len(metric_rows)
        s.commit()
    store.close()
    return "run-big", "run-0000", n_metric_rows


def timed(client: httpx.Client, path: str, repeats: int) -> dict[str, float]:
    """The first ("cold": nothing cached yet) GET, then median and p95 of ``repeats`` more (ms), and the size."""
    times, size = [], 0
    t = time.perf_counter()
    client.get(path).raise_for_status()
    cold = (time.perf_counter() - t) * 1000
    for _ in range(repeats):
        t = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        size = len(r.content)
    times.sort()
    return {
        "cold_ms": round(cold, 2),
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2),
        "bytes": size,
    }


def browser_times(base: str, big: str, repeats: int) -> dict[str, dict[str, float]] | None:
    """Navigation until drawn, in headless chromium (None without chromium or playwright)."""
    if not Path(CHROMIUM).exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    out: dict[str, list[float]] = {"runs_list_drawn": [], "big_run_drawn": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for _ in range(repeats + 1):  # the first is a warm-up
            t = time.perf_counter()
            page.goto(f"{base}/")
            page.locator("tr[data-run='run-0000']").wait_for(timeout=120_000)
            out["runs_list_drawn"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            page.goto(f"{base}/runs/{big}")
            page.locator("#chart-traffic-bytes_to_site polyline").first.wait_for(state="attached", timeout=120_000)
            page.locator("#participation rect").first.wait_for(state="attached", timeout=120_000)
            out["big_run_drawn"].append((time.perf_counter() - t) * 1000)
        browser.close()
    return {
        k: {"median_ms": round(statistics.median(v[1:]), 1), "max_ms": round(max(v[1:]), 1)} for k, v in out.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20, help="rounds of each of the --runs runs")
    ap.add_argument("--big-rounds", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--browser-repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'fedcare.db'}"
        t = time.perf_counter()
        big, small, rows = fill(url, runs=args.runs, rounds=args.rounds, big_rounds=args.big_rounds, sites=args.sites)
        fill_s = time.perf_counter() - t
        db_mb = (Path(tmp) / "fedcare.db").stat().st_size / 1e6
        print(f"store: {args.runs + 1} runs, {rows} per-site metric rows, {db_mb:.1f} MB, filled in {fill_s:.1f} s")
        server = BackgroundServer(create_app(url), host="127.0.0.1", port=0).start()
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                api = {
                    "runs_list": timed(client, "/api/runs", args.repeats),
                    "big_run": timed(client, f"/api/runs/{big}", args.repeats),
                    "big_run_metrics": timed(client, f"/api/runs/{big}/metrics", args.repeats),
                    "small_run": timed(client, f"/api/runs/{small}", args.repeats),
                    "small_run_metrics": timed(client, f"/api/runs/{small}/metrics", args.repeats),
                }
                pages = {
                    "runs_page_html": timed(client, "/", args.repeats),
                    "big_run_page_html": timed(client, f"/runs/{big}", args.repeats),
                }
            drawn = browser_times(server.url, big, args.browser_repeats) if args.browser_repeats else None
        finally:
            server.stop()
    print(f"{'request':24s} {'cold ms':>10s} {'median ms':>10s} {'p95 ms':>10s} {'bytes':>10s}")
    for name, m in {**api, **pages}.items():
        print(f"{name:24s} {m['cold_ms']:10.1f} {m['median_ms']:10.1f} {m['p95_ms']:10.1f} {m['bytes']:10d}")
    if drawn:
        for name, m in drawn.items():
            print(f"{name:24s} {'':10s} {m['median_ms']:10.1f} (max {m['max_ms']:.1f}) headless chromium, until drawn")
    result = {
        "benchmark": "dashboard",
        "runs": args.runs + 1,
        "rounds_per_run": args.rounds,
        "big_run_rounds": args.big_rounds,
        "sites": args.sites,
        "metric_rows": rows,
        "db_mb": round(db_mb, 1),
        "repeats": args.repeats,
        "api": api,
        "pages": pages,
        "browser": drawn,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
