"""The dashboard and the site console in a real browser: Playwright driving Debian's headless chromium.

Screenshots go to ``test-artifacts/screenshots/`` (``FEDCARE_ARTIFACTS`` overrides the folder).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect
from tests.conftest import ShiftTask, shift_sites
from tests.dashboard.helpers import REFUSING, RUN, add_heart_demo_run, build_store
from tests.dashboard.site_helpers import UNAPPROVED, build_site

from fedcare.dashboard.app import create_app
from fedcare.dashboard.site_console import create_console_app
from fedcare.dashboard.web import BackgroundServer
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import build_nodes
from fedcare.store import SqlStore
from fedcare.strategies import FedAvg
from fedcare.task import task_hash
from fedcare.transport import InProcessChannel
from fedcare.types import MessageKind, RunId

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = (
    Path(os.environ.get("FEDCARE_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")) / "screenshots"
)
HEART_SITES = ["cleveland", "hungary", "switzerland", "va-long-beach"]
WAIT_MS = 60_000  # the shared CI machine can be slow; every wait ends as soon as the page is ready


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed; .ci/run installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()
    assert errors == [], errors  # no script error, no blocked or missing resource


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    url, audit = build_store(root)
    demo = add_heart_demo_run(url, rounds=5)
    server = BackgroundServer(create_app(url, audit_log=audit, poll_s=0.2), host="127.0.0.1", port=0).start()
    yield server.url, demo
    server.stop()


def shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_runs_list_shows_the_finished_demo_run(page, finished):
    base, demo = finished
    page.goto(f"{base}/")
    row = page.locator(f"tr[data-run='{demo}']")
    row.wait_for(timeout=WAIT_MS)
    assert row.get_attribute("data-status") == "completed"
    text = row.inner_text()
    assert "5 / 5" in text and "fedavg" in text and all(site in text for site in HEART_SITES)
    assert page.locator("tr[data-run]").count() == 2
    shot(page, "dashboard-runs")


def test_run_page_draws_a_curve_with_points_for_every_site(page, finished):
    base, demo = finished
    page.goto(f"{base}/runs/{demo}")
    chart = page.locator("#chart-eval-accuracy")
    chart.locator("circle.pt").first.wait_for(timeout=WAIT_MS)
    for site in HEART_SITES:
        rounds = chart.locator(f"circle.pt[data-site='{site}']").evaluate_all("els => els.map(e => +e.dataset.round)")
        assert rounds == [1, 2, 3, 4, 5], site
    assert page.locator("#participation rect.cell.ok").count() == 4 * 5
    shot(page, "dashboard-run")
    # interactive: the legend hides a site's curve, hovering shows the values of a round
    page.locator("#chart-eval-accuracy .legend button[data-site='hungary']").click()
    assert not chart.locator("g.series[data-site='hungary']").is_visible()
    chart.locator("rect.overlay").hover()
    assert "round" in chart.locator(".tip").inner_text()


def test_run_page_shows_refusals_with_their_reason(page, finished):
    base, _ = finished
    page.goto(f"{base}/runs/{RUN}")
    refused = page.locator("#events tr[data-kind='refused']")
    refused.first.wait_for(timeout=WAIT_MS)
    assert refused.count() == 4
    assert REFUSING in refused.first.inner_text() and "not approved" in refused.first.inner_text()
    assert page.locator(f"#participation rect.cell.refused[data-site='{REFUSING}']").count() == 4
    assert "site-00" in page.locator("#privacy").inner_text()
    assert "chain intact" in page.locator("#audit").inner_text()
    shot(page, "dashboard-refusals")


def test_a_run_in_progress_updates_without_reload(page, tmp_path):
    # Prepare: a run whose sites wait at a gate the test opens round by round
    url = f"sqlite:///{tmp_path / 'live.db'}"
    store = SqlStore(url)
    task, rounds = ShiftTask(), 3
    nodes = build_nodes(shift_sites(3), task)
    gate = threading.Semaphore(0)

    def gated(handle):
        def answer(message):
            if message.kind is MessageKind.FIT:
                gate.acquire(timeout=120)
            return handle(message)

        return answer

    channel = InProcessChannel({s: gated(n.handle) for s, n in nodes.items()})
    coordinator = Coordinator(
        channel=channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        recorder=store,
    )
    spec = RunSpec(
        run_id=RunId("live"), name="live run", dataset="synthetic", strategy="fedavg", task=task.name,
        task_hash=task_hash(task), seed=0, rounds=rounds,
    )  # fmt: skip
    worker = threading.Thread(
        target=coordinator.run, args=(task.init_model(np.random.default_rng(0)),), kwargs={"spec": spec}
    )
    worker.start()
    server = None
    try:
        while store.summary_rows() == []:  # the run row exists before round 1 finishes
            threading.Event().wait(0.02)
        server = BackgroundServer(create_app(url, poll_s=0.2), host="127.0.0.1", port=0).start()
        # Execute: open the page while round 1 waits, then let the rounds finish one by one
        body = page.locator("body")
        page.goto(f"{server.url}/runs/live")
        expect(body).to_have_attribute("data-rounds-done", "0", timeout=WAIT_MS)
        assert page.locator("#live").is_visible()
        loads: list[str] = []
        page.on("load", lambda _: loads.append("load"))
        for done in range(1, rounds + 1):
            for _ in nodes:
                gate.release()
            expect(body).to_have_attribute("data-rounds-done", str(done), timeout=WAIT_MS)
            if done == 1:
                shot(page, "dashboard-live")
        expect(body).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
        # Assert: the same page (never reloaded) now shows every round of every site
        assert loads == []
        assert not page.locator("#live").is_visible()
        for site in nodes:
            assert page.locator(f"#chart-eval-loss circle.pt[data-site='{site}']").count() == rounds
    finally:
        for _ in range(rounds * len(nodes)):
            gate.release()
        worker.join(30)
        channel.close()
        store.close()
        if server is not None:
            server.stop()


def test_site_console_shows_a_refused_instruction_and_the_privacy_spent(page, tmp_path):
    config = build_site(tmp_path)
    server = BackgroundServer(create_console_app(config), host="127.0.0.1", port=0).start()
    try:
        page.goto(f"{server.url}/")
        refused = page.locator("#instructions tr[data-outcome='refused']")
        refused.first.wait_for(timeout=WAIT_MS)
        assert refused.count() == 1
        text = refused.inner_text()
        assert "run-2" in text and "not approved" in text and UNAPPROVED[:12] in text
        assert page.locator("#instructions tr[data-outcome='executed']").count() == 2
        epsilon = page.locator("#epsilon").inner_text()
        assert epsilon.startswith("ε spent 2.") and "of 8" in epsilon
        assert "intact" in page.locator("[data-card='audit verify']").inner_text()
        shot(page, "site-console")
    finally:
        server.stop()
