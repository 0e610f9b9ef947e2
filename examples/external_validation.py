"""Train on three heart-disease hospitals, release the model, validate it at the fourth.

The fourth hospital (VA Long Beach) never takes part in training: it receives the release
bundle and, through ``fedcare validate``, shares only binned score counts and sums. Run:

    python examples/external_validation.py --out fedcare-out/external

It prints the validation table (AUC with its 95 % CI, Brier, ECE, drift flags).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedcare.data.federated import FederatedDataset
from fedcare.data.tabular import prepare_sites
from fedcare.datasets.heart_disease import RECIPE, SITES, load_raw
from fedcare.demos import get_demo
from fedcare.experiment import run_experiment
from fedcare.release.bundle import build_bundle
from fedcare.store import SqlStore

TRAIN = ("cleveland", "hungary", "switzerland")
HELD_OUT = "va-long-beach"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("fedcare-out/external"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    frames = load_raw()
    train = {s: frames[s] for s in TRAIN}
    labels = {s: (df["num"].to_numpy() > 0).astype(np.float32) for s, df in train.items()}
    prepared = prepare_sites(train, labels, RECIPE)  # statistics combined over the three training sites only
    data = FederatedDataset(
        name="heart-disease-3",
        kind="binary",
        sites=prepared.federated,
        local_view=prepared.local,
        pooled_view=prepared.pooled,
        feature_names=RECIPE.encoded_names(),
        display_names={s: SITES[s][1] for s in TRAIN},
        provenance="UCI Heart Disease, CC BY 4.0; trained at Cleveland, Hungary, Switzerland",
        preprocessing={**prepared.preprocessing, "target": "num > 0 (angiographic disease)"},
    )
    recipe = get_demo("heart-disease")
    store = SqlStore(f"sqlite:///{(args.out / 'fedcare.db').resolve()}")
    run_experiment(
        data,
        recipe.make_task(data),
        replace(recipe.config),
        recorder=store,
        experiment_id="three-sites",
        settings=("federated",),
    )
    manifest = build_bundle(store, "three-sites", args.out / "bundle")
    store.close()
    frames[HELD_OUT].to_csv(args.out / "va.csv", index=False)
    print(f"bundle {args.out / 'bundle'} (digest {manifest['digest'][:16]}…)")
    cmd = [
        sys.executable,
        "-m",
        "fedcare",
        "validate",
        "--bundle",
        str(args.out / "bundle"),
        "--outcome",
        "num>0",
        "--site",
        f"va-long-beach={args.out / 'va.csv'}",
        "--out",
        str(args.out / "validation.json"),
    ]
    print("$", " ".join(cmd[2:]))
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
