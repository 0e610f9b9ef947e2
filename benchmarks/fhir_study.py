"""A FHIR study with meaningful numbers: thousands of synthetic patients at three sites.

Generates synthetic FHIR R4 patients with carebundle (``fedcare data synth-fhir``: site k
is older and more often hypertensive than site k-1), reads every site through the FHIR
connector, trains the generated study.toml with ``fedcare simulate`` (FedAvg next to its
Local and Pooled references) and, with ``--up``, with ``fedcare up`` (one server and one
node per site as real processes, mutual TLS). A centralised reference fits scikit-learn's
logistic regression on all sites' connector rows (5-fold cross-validated AUC) and on the
same train/test split as the study. Prints figures; the LAST line is JSON.

    PYTHONPATH=src python benchmarks/fhir_study.py --patients 3000 --sites 3 --seed 1 [--up]

Needs the ``synth`` extra (carebundle).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedcare.build.site import load_site_data
from fedcare.study.site import load_site
from fedcare.study.spec import load_study
from fedcare.study.synthetic_fhir import write_synthetic_fhir

ROOT = Path(__file__).resolve().parents[1]


def fedcare(*args: str, timeout: float) -> tuple[float, str]:
    """Run ``python -m fedcare ARGS`` from this checkout; (seconds, output)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedcare", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"fedcare {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def scores(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """AUC and accuracy of every setting in a summary.json: on the pooled test set, and the sites' mean.

    A deployed run (``fedcare up``) has no pooled AUC: only the sites' own metrics leave them.
    """
    out = {}
    for name, s in summary["settings"].items():
        row = {f"pooled_{k}": round(float(v), 4) for k, v in s["pooled_test"].items() if k in ("auc", "accuracy")}
        row |= {f"site_mean_{k}": round(float(v), 4) for k, v in s["site_mean"].items() if k in ("auc", "accuracy")}
        out[name] = row
    return out


def site_metrics(summary: dict[str, Any], setting: str) -> dict[str, dict[str, float]]:
    """The sites' own test metrics of one setting."""
    return summary["settings"][setting]["per_site"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=3000)
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--up", action="store_true", help="also run the study with fedcare up (real processes)")
    ap.add_argument("--out", type=Path, default=None, help="keep the bundles and runs here (default: a temp dir)")
    args = ap.parse_args()
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="fedcare-fhir-study-")
        args.out = Path(tmp.name)
    data = args.out / "fhir"
    result: dict[str, Any] = {"patients": args.patients, "sites": args.sites, "seed": args.seed, "rounds": args.rounds}

    started = time.perf_counter()
    synth = write_synthetic_fhir(data, patients=args.patients, sites=args.sites, seed=args.seed, rounds=args.rounds)
    result["generate_s"] = round(time.perf_counter() - started, 1)
    result["generator"] = synth.generator
    size = sum(p.stat().st_size for p in data.rglob("*.json"))
    print(
        f"generated {args.patients} patients at {args.sites} sites in {result['generate_s']} s ({synth.generator}, "
        f"{size / 1e6:.1f} MB of bundles)"
    )

    # every site through the FHIR connector and the study's schema (as simulate and the nodes read them)
    study = load_study(synth.study)
    started = time.perf_counter()
    per_site: dict[str, Any] = {}
    xs_tr, ys_tr, xs_te, ys_te, xs, ys = [], [], [], [], [], []
    for path in synth.site_files:
        spec = load_site(path)
        inputs = load_site_data(spec, study)
        assert inputs.source is not None and inputs.loaded is not None
        src = inputs.source
        frame = inputs.loaded.raw
        y = np.concatenate([src.y_train, src.y_test])
        per_site[spec.site_id] = {
            "n": int(len(y)),
            "hypertension": round(float(y.mean()), 3),
            "age_mean": round(float(frame["age"].mean()), 1),
            "sbp_mean": round(float(frame["systolic_bp"].mean()), 1),
            "bmi_mean": round(float(frame["bmi"].mean()), 1),
        }
        xs_tr.append(src.x_train)
        ys_tr.append(src.y_train)
        xs_te.append(src.x_test)
        ys_te.append(src.y_test)
        xs.append(np.concatenate([src.x_train, src.x_test]))
        ys.append(y)
    result["read_s"] = round(time.perf_counter() - started, 1)
    result["per_site"] = per_site
    for site, row in per_site.items():
        print(f"  {site}: {row}")
    print(f"read and checked every site with the FHIR connector in {result['read_s']} s")

    # the centralised reference: scikit-learn on all rows (encoded by the sites, not yet standardised)
    x_all, y_all = (np.concatenate(xs)), np.concatenate(ys)
    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=1000))
    cv = cross_val_predict(model, x_all, y_all, cv=5, method="predict_proba")[:, 1]
    fit = model.fit((np.concatenate(xs_tr)), np.concatenate(ys_tr))
    x_te, y_te = (np.concatenate(xs_te)), np.concatenate(ys_te)
    p_te = fit.predict_proba(x_te)[:, 1]
    result["sklearn_pooled"] = {
        "cv5_auc": round(float(roc_auc_score(y_all, cv)), 4),
        "auc": round(float(roc_auc_score(y_te, p_te)), 4),
        "accuracy": round(float(accuracy_score(y_te, p_te >= 0.5)), 4),
        "n_test": int(len(y_te)),
    }
    print(f"centralised scikit-learn logistic regression: {result['sklearn_pooled']}")

    sites = [a for p in synth.site_files for a in ("--site", str(p))]
    out = args.out / "simulate"
    seconds, _ = fedcare(
        "simulate",
        "--study",
        str(synth.study),
        *sites,
        "--out",
        str(out),
        "--db",
        f"sqlite:///{args.out / 'sim.db'}",
        timeout=3600,
    )
    result["simulate_s"] = round(seconds, 1)
    simulated = json.loads((out / "summary.json").read_text())
    result["simulate"] = scores(simulated)
    print(f"fedcare simulate ({args.rounds} rounds) in {result['simulate_s']} s: {result['simulate']}")

    if args.up:
        out = args.out / "up"
        seconds, _ = fedcare(
            "up",
            "--study",
            str(synth.study),
            *sites,
            "--out",
            str(out),
            "--db",
            f"sqlite:///{args.out / 'up.db'}",
            "--timeout",
            "1800",
            timeout=2400,
        )
        result["up_s"] = round(seconds, 1)
        up = json.loads((out / "summary.json").read_text())
        result["up"] = scores(up)
        # the same study by simulate and by up: the sites' own metrics agree
        sim = site_metrics(simulated, "fedavg")
        dep = site_metrics(up, next(iter(up["settings"])))
        result["up_vs_simulate_max_diff"] = max(
            abs(float(sim[site][k]) - float(dep[site][k])) for site in sim for k in ("auc", "accuracy", "loss")
        )
        print(f"fedcare up ({args.rounds} rounds, real processes, mTLS) in {result['up_s']} s: {result['up']}")
        print(f"largest difference of a site's metric between simulate and up: {result['up_vs_simulate_max_diff']:.2e}")
    print(json.dumps(result, sort_keys=True))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
