"""A release bundle: everything a clinic needs to score patients with a finished study's model.

``fedcare release RUN --out DIR`` writes, from the run store alone:

* ``model.safetensors``: the final global model (the last verified checkpoint);
* ``model.onnx`` (torch tasks, with the ``clinic`` extra): the same model as ONNX, whose
  onnxruntime output was checked against torch to 1e-6 before it was written;
* ``bundle.json``: task name, parameters, content hash and fedcare version, and the
  preprocessing (raw features, categories, combined mean/std) the sites trained with;
* ``model_card.json`` / ``model_card.html``: the model card (:mod:`fedcare.release.card`);
* ``MANIFEST.json``: each file's sha256 and the bundle digest, the sha256 of the sorted
  ``name sha256`` lines. :func:`load_bundle` checks every file against it and the
  installed task's hash against the bundle's before anything is scored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcare import __version__
from fedcare.errors import ConfigError, StoreError
from fedcare.release.card import model_card, render_card
from fedcare.release.onnx_export import export_onnx, torch_module
from fedcare.release.sharing import what_was_shared
from fedcare.report.from_store import resolve_runs, summary_from_store
from fedcare.serde import decode_state, encode_state
from fedcare.store.sql import SqlStore
from fedcare.task import Task, task_hash
from fedcare.tasks import make_task
from fedcare.types import ModelState, RunId

__all__ = ["Bundle", "BundleError", "build_bundle", "bundle_digest", "load_bundle"]

MODEL_FILE, META_FILE, MANIFEST, ONNX_FILE = "model.safetensors", "bundle.json", "MANIFEST.json", "model.onnx"
CARD_JSON, CARD_HTML = "model_card.json", "model_card.html"


class BundleError(ConfigError):
    """A release bundle is incomplete, modified, or does not match the installed task."""


def bundle_digest(files: Mapping[str, str]) -> str:
    """sha256 over the sorted ``name sha256`` lines of the bundle's files."""
    lines = "".join(f"{name} {files[name]}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified release bundle."""

    path: Path
    task: Task
    model: ModelState
    meta: Mapping[str, Any]
    card: Mapping[str, Any]
    digest: str

    @property
    def preprocessing(self) -> Mapping[str, Any]:
        """Raw features, categories, encoded columns, combined mean/std."""
        return self.meta.get("preprocessing", {})


def _federated_run(store: SqlStore, ref: str) -> Any:
    _, runs = resolve_runs(store, ref)
    trained = [r for r in runs if r.rounds > 0]
    if not trained:
        raise StoreError(f"{ref!r} has no federated run (rounds > 0) to release")
    run = trained[-1]
    if run.status != "completed":
        raise StoreError(f"run {run.id} is {run.status}, not completed: only a finished model is released")
    return run


def _study_of(run: Any, summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The study a run trained: name, content hash, file, and the study itself (its describe()).

    The run row's config holds what the run builder recorded (hash and the canonical
    study); the summary's ``study`` (from the run's context) adds the file it was read from.
    """
    config = run.config or {}
    named = dict(summary.get("study") or {})
    digest = config.get("study_hash") or named.get("hash")
    if digest is None:
        return None
    return {
        "name": config.get("study") or named.get("name"),
        "hash": digest,
        "file": named.get("file"),
        "spec": config.get("study_spec"),
    }


def build_bundle(store: SqlStore, ref: str, out_dir: Path, *, audit_head: str | None = None) -> dict[str, Any]:
    """Write the release bundle of run or experiment ``ref`` into ``out_dir``; return its manifest."""
    run = _federated_run(store, ref)
    latest = store.latest_checkpoint(RunId(run.id))
    if latest is None:
        raise StoreError(f"run {run.id} has no checkpoint in the store (a store without checkpoint files?)")
    round_no, state = latest
    summary = summary_from_store(store, ref)
    context = store.results(run.id).get("context", {})
    task = make_task(run.task, **dict(summary["task"]["params"]))
    if task_hash(task) != run.task_hash:
        raise BundleError(
            f"the installed task {run.task!r} hashes to {task_hash(task)}, the run trained {run.task_hash}: "
            "install the task version the study used"
        )
    blob = encode_state(state.model, metadata={"run_id": run.id, "round_no": str(round_no), "task_hash": run.task_hash})
    fit_rows = [m for m in store.site_metrics(run.id, phase="fit") if m.name == "num_examples"]
    n_train = {m.site: int(m.value) for m in sorted(fit_rows, key=lambda m: m.round_no)}
    meta = {
        "format": "fedcare-bundle/1",
        "fedcare_version": __version__,
        "task": {"name": run.task, "params": summary["task"]["params"], "hash": run.task_hash},
        "run": run.id,
        "experiment": run.experiment,
        "setting": run.name,
        "round": round_no,
        "checkpoint_sha256": hashlib.sha256(blob).hexdigest(),
        "kind": "survival" if run.task == "cox" else "binary",
        "preprocessing": dict(context.get("preprocessing") or {}),
    }
    study = _study_of(run, summary)
    if study is not None:
        meta["study"] = study
    results = store.results(run.id)
    if "recalibration" in results:  # a failed fit is kept with its reason; predict then shows no calibrated risk
        meta["calibration"] = dict(results["recalibration"])
    reference = results.get("reference") or {}
    encoded = list(meta["preprocessing"].get("encoded", []))
    if len(reference.get("counts", [])) == len(encoded) and encoded:  # the training cohort's input histograms
        meta["reference"] = {
            **{k: v for k, v in reference.items() if k != "counts"},
            "histograms": dict(zip(encoded, reference["counts"], strict=True)),
        }
    meta["sharing"] = what_was_shared(store, run.id, task, state.model, (study or {}).get("spec"))
    onnx_blob = None
    width = len(meta["preprocessing"].get("encoded", [])) or int(summary["task"]["params"].get("n_features", 0))
    if width and torch_module(task, state.model) is not None:
        # standardised inputs: N(0, 1) rows exercise the whole input range the model was trained on
        sample = np.random.default_rng(0).normal(size=(64, width)).astype(np.float32)
        try:
            onnx_blob = export_onnx(task, state.model, sample)
            meta["onnx"] = {"file": ONNX_FILE, "checked_rows": 64, "tolerance": 1e-6, "output": "logit"}
        except ConfigError as exc:
            meta["onnx"] = {"file": None, "reason": str(exc)}
    card = model_card(summary, run.name, meta, n_train=n_train, audit_head=audit_head)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        META_FILE: json.dumps(meta, indent=2),
        CARD_JSON: json.dumps(card, indent=2),
        CARD_HTML: render_card(card),
    }
    files = {MODEL_FILE: hashlib.sha256(blob).hexdigest()}
    (out_dir / MODEL_FILE).write_bytes(blob)
    if onnx_blob is not None:
        (out_dir / ONNX_FILE).write_bytes(onnx_blob)
        files[ONNX_FILE] = hashlib.sha256(onnx_blob).hexdigest()
    for name, text in texts.items():
        (out_dir / name).write_text(text, encoding="utf-8")
        files[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    manifest = {"files": files, "digest": bundle_digest(files)}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def load_bundle(path: Path) -> Bundle:
    """Read and verify a bundle: every file against the manifest, the installed task against its hash.

    Raises
    ------
    BundleError
        A file is missing or modified, or the installed task's code differs.
    """
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files: dict[str, str] = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: not a release bundle ({MANIFEST}: {exc})") from None
    if bundle_digest(files) != manifest.get("digest"):
        raise BundleError(f"{path / MANIFEST}: the digest does not match the listed files")
    for name in (MODEL_FILE, META_FILE, CARD_JSON):
        if name not in files:
            raise BundleError(f"{path}: {name} is not listed in {MANIFEST}")
    raw: dict[str, bytes] = {}
    for name, sha in files.items():
        try:
            raw[name] = (path / name).read_bytes()
        except OSError as exc:
            raise BundleError(f"{path / name}: {exc.strerror or exc}") from None
        if hashlib.sha256(raw[name]).hexdigest() != sha:
            raise BundleError(f"{path / name}: sha256 differs from {MANIFEST}: the file was modified")
    meta = json.loads(raw[META_FILE])
    task = make_task(meta["task"]["name"], **dict(meta["task"]["params"]))
    if task_hash(task) != meta["task"]["hash"]:
        raise BundleError(
            f"{path}: the installed task {meta['task']['name']!r} hashes to {task_hash(task)}, "
            f"the bundle's model was trained by {meta['task']['hash']}"
        )
    model = decode_state(raw[MODEL_FILE], where=str(path / MODEL_FILE))
    return Bundle(path, task, model, meta, json.loads(raw[CARD_JSON]), manifest["digest"])
