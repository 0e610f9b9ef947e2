"""Browser screenshots of report.html at 4 sites and at 50 sites, for the README.

4 sites: the heart-disease demo; 50 sites: PneumoniaMNIST split by Dirichlet label skew.
Headless Debian chromium takes the screenshots (a ``#section`` in the URL scrolls to it).

Usage: python scripts/report_screenshots.py --out docs/img [--work DIR] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import numpy as np

from fedcare.data.federated import FederatedDataset
from fedcare.data.partition import dirichlet_label_partition
from fedcare.datasets.pneumonia import load_arrays
from fedcare.demos import get_demo
from fedcare.experiment import ExperimentConfig, run_experiment
from fedcare.report import write_outputs
from fedcare.task import ArrayDataset, SiteData
from fedcare.tasks import make_task
from fedcare.types import SiteId

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def fifty_sites(n_sites: int = 50, alpha: float = 1.0, seed: int = 0) -> FederatedDataset:
    """PneumoniaMNIST (all official images) split over ``n_sites`` by Dirichlet(alpha) label skew, 75/25 per site."""
    arrays = load_arrays()
    x = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test") if f"{s}_images" in arrays])
    y = np.concatenate([arrays[f"{s}_labels"] for s in ("train", "val", "test") if f"{s}_labels" in arrays])
    x = x.reshape(len(x), -1).astype(np.float32) / (255.0 if x.max() > 1 else 1.0)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)  # pooled statistics: a rehearsal, not a benchmark
    y = y.reshape(-1).astype(np.float32)
    rng = np.random.default_rng(seed)
    parts = dirichlet_label_partition(y, n_sites, alpha, rng, min_size=12)
    sites: dict[SiteId, SiteData] = {}
    for i, idx in enumerate(parts):
        idx = rng.permutation(idx)
        cut = max(1, int(round(0.75 * len(idx))))
        tr, te = idx[:cut], idx[cut:]
        sites[SiteId(f"site-{i + 1:02d}")] = SiteData(ArrayDataset(x[tr], y[tr]), ArrayDataset(x[te], y[te]))
    view = MappingProxyType(sites)
    return FederatedDataset(
        name="pneumonia-50",
        kind="binary",
        sites=view,
        local_view=view,
        pooled_view=view,
        feature_names=tuple(f"px{i}" for i in range(x.shape[1])),
        display_names={s: f"Hospital {s[-2:]}" for s in sites},
        provenance=f"PneumoniaMNIST (MedMNIST v2), CC BY 4.0; {n_sites} simulated sites, Dirichlet(α={alpha}) label "
        f"skew, seed {seed}; logistic regression on pixels",
    )


def screenshot(html: Path, png: Path, *, width: int = 1200, height: int = 2400, section: str = "") -> None:
    """Screenshot ``html`` with Playwright driving Debian's headless chromium (no browser download).

    With ``section``, the shot starts at the element with that id (``height`` pixels of it).
    """
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS[1:])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(html.resolve().as_uri())
            top = 0.0
            if section:
                box = page.locator(f"#{section}").bounding_box()
                top = box["y"] - 10 if box else 0.0
            page.screenshot(path=str(png), full_page=True, clip={"x": 0, "y": top, "width": width, "height": height})
        finally:
            browser.close()


def main() -> None:
    """Run both reports (or re-render them) and take the screenshots."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--rerender", action="store_true", help="Re-render the reports of --work from their summary.json.")
    args = ap.parse_args()
    if args.rerender:
        for name in ("heart-4", "pneumonia-50"):
            write_outputs(json.loads((args.work / name / "summary.json").read_text()), args.work / name)
        shoot(args.work, args.out)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="fedcare-shots-"))
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = get_demo("heart-disease")
    data = recipe.load()
    summary = run_experiment(
        data, recipe.make_task(data), replace(recipe.config, rounds=args.rounds), experiment_id="heart-4"
    )
    write_outputs(summary, work / "heart-4")
    data = fifty_sites()
    cfg = ExperimentConfig(
        rounds=args.rounds,
        fit_config={"optimizer": "sgd", "lr": 0.01, "batch_size": 32, "local_epochs": 1},
        baseline_config={"optimizer": "adam", "lr": 0.001, "batch_size": 32, "local_epochs": 5},
    )
    summary = run_experiment(data, make_task("logreg", n_features=data.n_features), cfg, experiment_id="pneumonia-50")
    write_outputs(summary, work / "pneumonia-50")
    shoot(work, args.out)
    print(work)


def shoot(work: Path, out: Path) -> None:
    """Screenshots the README shows: the 4-site report's top, the 50-site tables and forest plots."""
    screenshot(work / "heart-4" / "report.html", out / "report-4-sites.png", height=1900)
    screenshot(work / "pneumonia-50" / "report.html", out / "report-50-sites-table.png", height=1500)
    screenshot(work / "pneumonia-50" / "report.html", out / "report-50-sites-forest.png", height=1500, section="forest")


if __name__ == "__main__":
    main()
