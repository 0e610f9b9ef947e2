"""``fedcare export``: a run of the store into MLflow or TensorBoard, where teams keep their experiments.

Both targets get the same content: parameters (strategy, task and its hash, seed, rounds,
the run's configuration flattened), every round's aggregate metrics (``fit/*``,
``eval/*``), every site's metrics per round (``site/<site>/<phase>/<name>``), the round
duration and participation (``round/*``), each site's final test metrics
(``test/<site>/<name>``), and the run's report and model card as artefacts when they
exist. MLflow and TensorBoard are optional extras, imported only here.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fedcare.dashboard.readstore import RunReader, sqlite_file
from fedcare.errors import ConfigError, StoreError

__all__ = ["ExportResult", "find_artifacts", "flat_params", "run_series", "to_mlflow", "to_tensorboard"]

#: files written next to a run (``fedcare demo``/``simulate`` output, ``fedcare report``) that are exported
ARTIFACT_NAMES = ("report.html", "summary.json", "model_card.md", "model_card.html", "model_card.json")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    target: str
    location: str
    metrics: int
    points: int
    params: int
    artifacts: tuple[str, ...]


@dataclass(frozen=True)
class _Point:
    key: str
    value: float
    step: int
    time_s: float


def flat_params(run: Mapping[str, Any]) -> dict[str, str]:
    """The run's identity and configuration as flat ``key -> str`` parameters."""
    out = {k: str(run[k]) for k in ("strategy", "task", "task_hash", "seed", "rounds", "dataset", "study")}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list | tuple):
            out[prefix] = json.dumps(value)[:500]
        else:
            out[prefix] = str(value)[:500]

    walk("config", run.get("config") or {})
    return out


def _epoch(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def run_series(run: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[_Point]:
    """Every scalar to export, with its round as the step."""
    when = {r["round_no"]: _epoch(r["finished_at"]) for r in run["rounds_list"]}
    start = _epoch(run["started"])
    points: list[_Point] = []
    for phase, names in metrics["aggregate"].items():
        for name, series in names.items():
            points += [_Point(f"{phase}/{name}", float(v), int(r), when.get(int(r), start)) for r, v in series]
    for phase, names in metrics["per_site"].items():
        for name, sites in names.items():
            for site, series in sites.items():
                key = f"site/{site}/{phase}/{name}"
                points += [_Point(key, float(v), int(r), when.get(int(r), start)) for r, v in series]
    for r in run["rounds_list"]:
        t = when[r["round_no"]]
        for name in ("duration_s", "n_sampled", "n_succeeded", "bytes_to_sites", "bytes_from_sites"):
            points.append(_Point(f"round/{name}", float(r[name]), r["round_no"], t))
    end = _epoch(run["ended"]) or start
    for site, values in run["test_metrics"].items():
        points += [_Point(f"test/{site}/{name}", float(v), 0, end) for name, v in values.items()]
    for site, p in run["privacy"].items():
        points.append(_Point(f"privacy/{site}/epsilon", float(p["epsilon_run"]), run["rounds_done"], end))
    return points


def find_artifacts(db_url: str, run: Mapping[str, Any], extra: Sequence[Path] = ()) -> list[Path]:
    """The run's report and model card: beside a SQLite store in ``<experiment>/``, plus ``extra`` files.

    Raises
    ------
    ConfigError
        A file given in ``extra`` does not exist.
    """
    found: list[Path] = []
    db = sqlite_file(db_url)
    if db is not None:
        for folder in {run.get("experiment") or "", run["id"]} - {""}:
            for name in ARTIFACT_NAMES:
                candidate = db.parent / folder / name
                if candidate.is_file():
                    found.append(candidate)
    for path in extra:
        if not Path(path).is_file():
            raise ConfigError(f"--artifact {path}: no such file")
        found.append(Path(path))
    return found


def _load(db_url: str, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    reader = RunReader(db_url)
    try:
        run = reader.run(run_id)
        if run is None:
            known = ", ".join(r["id"] for r in reader.runs()[:5])
            raise StoreError(f"unknown run {run_id!r} in the store" + (f" (latest: {known})" if known else ""))
        return run, reader.metrics(run_id)
    finally:
        reader.close()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def to_mlflow(
    db_url: str, run_id: str, *, tracking_uri: str, experiment: str | None = None, artifacts: Sequence[Path] = ()
) -> ExportResult:
    """Export one run as an MLflow run (a new one each time) under ``experiment`` (default: the run's study).

    A ``file:`` (or plain path) tracking URI is MLflow's file store, which MLflow 3 only
    opens when ``MLFLOW_ALLOW_FILE_STORE`` is set: asking for it here is that consent.
    """
    run, metrics = _load(db_url, run_id)
    files = find_artifacts(db_url, run, artifacts)
    if "://" not in tracking_uri or tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name = experiment or f"fedcare/{run['study'] or run['name']}"
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(name)
        exp_id = found.experiment_id if found is not None else client.create_experiment(name)
        tags = {
            "fedcare.run_id": run["id"],
            "fedcare.status": run["status"],
            "fedcare.study": run["study"],
            "fedcare.sites": ",".join(run["sites"]),
        }
        created = client.create_run(exp_id, run_name=f"{run['name']} ({run['id']})", tags=tags)
        mlflow_id = created.info.run_id
        params = flat_params(run)
        for batch in _chunks(list(params.items()), 100):
            client.log_batch(mlflow_id, params=[Param(k, v) for k, v in batch])
        points = run_series(run, metrics)
        for batch in _chunks(points, 1000):
            client.log_batch(mlflow_id, metrics=[Metric(p.key, p.value, int(p.time_s * 1000), p.step) for p in batch])
        client.log_batch(mlflow_id, tags=[RunTag("fedcare.task_hash", run["task_hash"])])
        for path in files:
            client.log_artifact(mlflow_id, str(path))
        status = {"completed": "FINISHED", "failed": "FAILED"}.get(run["status"])
        if status is not None:
            client.set_terminated(mlflow_id, status=status, end_time=int(_epoch(run["ended"]) * 1000) or None)
    except MlflowException as exc:
        raise StoreError(f"MLflow at {tracking_uri}: {str(exc).splitlines()[0]}") from None
    return ExportResult(
        target="mlflow",
        location=f"{tracking_uri} experiment {name!r} run {mlflow_id}",
        metrics=len({p.key for p in points}),
        points=len(points),
        params=len(params),
        artifacts=tuple(p.name for p in files),
    )


def to_tensorboard(db_url: str, run_id: str, *, logdir: Path, artifacts: Sequence[Path] = ()) -> ExportResult:
    """Write one run as TensorBoard event files in ``logdir/<run id>/`` (artefacts copied beside them)."""
    run, metrics = _load(db_url, run_id)
    files = find_artifacts(db_url, run, artifacts)
    from torch.utils.tensorboard import SummaryWriter

    target = Path(logdir) / run["id"]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--logdir {logdir}: {exc.strerror or exc}") from None
    points = run_series(run, metrics)
    params = flat_params(run)
    writer = SummaryWriter(log_dir=str(target))
    try:
        for p in points:
            writer.add_scalar(p.key, p.value, global_step=p.step, walltime=p.time_s)
        table = "| parameter | value |\n|---|---|\n" + "\n".join(f"| {k} | `{v}` |" for k, v in params.items())
        writer.add_text("fedcare/parameters", table, global_step=0)
        writer.add_text(
            "fedcare/run", f"run `{run['id']}` · status **{run['status']}** · sites {', '.join(run['sites'])}"
        )
        copied = []
        for path in files:
            dest = target / "artifacts" / path.name
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(path, dest)
            copied.append(path.name)
            if path.suffix in (".md", ".json"):  # readable in TensorBoard's text tab
                text = path.read_text(encoding="utf-8")[:100_000]
                writer.add_text(f"artifacts/{path.name}", text if path.suffix == ".md" else f"```\n{text}\n```")
    finally:
        writer.close()
    return ExportResult(
        target="tensorboard",
        location=str(target),
        metrics=len({p.key for p in points}),
        points=len(points),
        params=len(params),
        artifacts=tuple(copied),
    )
