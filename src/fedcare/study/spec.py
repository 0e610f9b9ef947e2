"""``study.toml``: what is trained and how — one file for simulate, up and server.

A study names its task, the data schema every site's data is checked against, the
strategy, the local training, the rounds, privacy, secure aggregation,
personalisation and evaluation. It names no site and no path: where data lives and who
takes part is each site's own file (:mod:`fedcare.study.site`), and *where* the study
runs is the command (``fedcare simulate``, ``fedcare up``, ``fedcare server``).

Its content hash (:attr:`StudySpec.hash`, sha256 of the canonical JSON of the parsed
file, so comments and layout do not count) is announced to sites with every
instruction, written to both audit logs, and may be pinned in a site's policy.
The keys are documented in ``docs/study.md``::

    [study]
    name = "heart-disease"        # sites opt in to this name
    seed = 0

    [task]
    name = "logreg"
    params = {}

    [data]
    dataset = "heart-disease"     # a built-in data set ... or a schema:
    # target = "hypertension"; positive = [true]; normalization = "federated"
    # [data.columns.age] type = "number"

    [strategy]
    name = "fedavg"

    [federation]
    rounds = 20

    [fit]
    optimizer = "sgd"
    lr = 0.05
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fedcare.strategies  # noqa: F401  (registers the built-in strategies)
from fedcare.compression import Compression
from fedcare.data.fhir_mapping import FhirMapping
from fedcare.data.schema import ColumnType, StudySchema
from fedcare.errors import ConfigError
from fedcare.strategies.registry import available_strategies, make_strategy
from fedcare.study.toml import Checker, read_toml
from fedcare.types import ConfigValue

__all__ = [
    "DataSpec",
    "EvaluationSpec",
    "FederationSpec",
    "PersonalizationSpec",
    "SecureAggregationSpec",
    "SimulationSpec",
    "StudySpec",
    "load_study",
    "parse_study",
    "study_from_json",
]

PERSONALIZATIONS = ("none", "fedbn", "fedper", "ditto", "finetune")
#: Recalibrations ``[evaluation] calibration`` may name (fitted federatedly after the last round).
RECALIBRATIONS = ("platt",)
PRIVACY_LEVELS = ("none", "record", "client", "client-distributed")

_TOP = {
    "study",
    "task",
    "data",
    "strategy",
    "federation",
    "fit",
    "baseline",
    "privacy",
    "secure_aggregation",
    "personalization",
    "evaluation",
    "compression",
    "simulation",
}
_STUDY = {"name", "description", "seed"}
_TASK = {"name", "params"}
_DATA = {
    "dataset",
    "target",
    "positive",
    "columns",
    "normalization",
    "test_fraction",
    "split_seed",
    "missing",
    "fhir",
}
_STRATEGY = {"name", "params"}
_FEDERATION = {"rounds", "fraction_fit", "min_sites", "round_timeout_s", "evaluate", "wait_for_sites", "wait_timeout_s"}
_PRIVACY = {
    "level",
    "epsilon",
    "delta",
    "max_grad_norm",
    "batch_size",
    "local_steps",
    "local_epochs",
    "clip_norm",
    "adaptive_clipping",
    "site_max_epsilon",
    "seeded_noise",
    "trust_central_noise",
    "accountant",
    "lr",
}
_SECAGG = {
    "enabled",
    "mode",
    "neighbours",
    "threshold",
    "clip",
    "bits",
    "seeded",
    "scale_bits",
    "first_mod_bits",
    "encrypt",
    "verify_sum",
    "relay",
}
#: ``[secure_aggregation] mode``: SecAgg+ masking, threshold CKKS encryption (docs/he.md), or
#: serverless peer-to-peer rounds with SecAgg+ masks and a relay-only coordinator (docs/p2p.md).
SECAGG_MODES = ("secagg+", "ckks", "p2p")
#: ``[secure_aggregation] relay`` of peer-to-peer rounds: every masked vector to every site, or their sum.
P2P_RELAYS = ("all", "sum")
_PERSONAL = {"method", "ditto_lambda", "ditto_epochs", "local_epochs", "lr", "optimizer", "batch_size"}
_EVALUATION = {"metrics", "subgroups", "calibration"}
_COMPRESSION = {"codec", "fraction", "error_feedback"}
_SIMULATION = {"backend", "ray_address", "ray_actors", "cpus_per_site", "memory_per_site"}
#: ``[simulation] backend``: sites as threads of this process, or as Ray actors (the ray extra).
BACKENDS = ("inprocess", "ray")
_BYTE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_PLACES: dict[str, set[str]] = {
    "": _TOP,
    "study.": _STUDY,
    "task.": _TASK,
    "data.": _DATA,
    "strategy.": _STRATEGY,
    "federation.": _FEDERATION,
    "privacy.": _PRIVACY,
    "secure_aggregation.": _SECAGG,
    "personalization.": _PERSONAL,
    "evaluation.": _EVALUATION,
    "compression.": _COMPRESSION,
    "simulation.": _SIMULATION,
}

#: Local training per round when ``[fit]`` is not given (the heart-disease demo's recipe).
DEFAULT_FIT: dict[str, ConfigValue] = {"optimizer": "sgd", "lr": 0.05, "batch_size": 4, "local_epochs": 1}
#: Local and Pooled baseline training when ``[baseline]`` is not given (FLamby's recipe).
DEFAULT_BASELINE: dict[str, ConfigValue] = {"optimizer": "adam", "lr": 0.001, "batch_size": 4, "local_epochs": 50}


@dataclass(frozen=True)
class DataSpec:
    """What every site's data must look like, and how it is prepared at the site.

    Either ``dataset`` (a built-in data set, which brings its own schema, split and
    preprocessing) or ``schema`` (checked against each site's connector output).
    ``positive`` lists the target values of the positive class (binary tasks); with
    ``normalization = "federated"`` sites standardise with statistics combined from
    every site's counts and sums (only those leave a site), with ``"site"`` each with its own.
    """

    dataset: str | None = None
    schema: StudySchema | None = None
    positive: tuple[Any, ...] | None = None
    normalization: str = "federated"
    test_fraction: float = 0.25
    split_seed: int = 0
    missing: tuple[str, ...] = ("",)
    fhir: FhirMapping | None = None

    def describe(self) -> dict[str, Any]:
        """The ``[data]`` table, TOML-shaped (read back by :func:`parse_study`)."""
        if self.dataset is not None:
            return {"dataset": self.dataset}
        out: dict[str, Any] = {
            "normalization": self.normalization,
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            "missing": list(self.missing),
        }
        if self.positive is not None:
            out["positive"] = list(self.positive)
        if self.schema is not None:
            out["target"] = self.schema.target
            out["columns"] = {}
            for c in self.schema.columns:
                col: dict[str, Any] = {"type": c.type.value, "allow_missing": c.allow_missing}
                if c.min is not None:
                    col["min"] = c.min
                if c.max is not None:
                    col["max"] = c.max
                if c.codes is not None:
                    col["codes"] = list(c.codes)
                out["columns"][c.name] = col
        if self.fhir is not None:
            fhir: dict[str, Any] = {
                "conditions": {k: list(v) for k, v in self.fhir.conditions.items()},
                "observations": {
                    k: {key: val for key, val in asdict(v).items() if val is not None}
                    for k, v in self.fhir.observations.items()
                },
            }
            if self.fhir.reference_date is not None:
                fhir["reference_date"] = self.fhir.reference_date.isoformat()
            out["fhir"] = fhir
        return out


@dataclass(frozen=True)
class FederationSpec:
    """Rounds, sampling, minimum sites and deadlines."""

    rounds: int = 20
    fraction_fit: float = 1.0
    min_sites: int = 1
    round_timeout_s: float = 300.0
    evaluate: bool = True
    wait_for_sites: int | None = None
    wait_timeout_s: float = 600.0


@dataclass(frozen=True)
class SecureAggregationSpec:
    """The coordinator learns only the sum of the updates: SecAgg+ (Bell et al. 2020) or threshold CKKS.

    ``mode`` None is SecAgg+ (absent from the study's description, so older study hashes
    stay valid); ``"ckks"`` encrypts under threshold CKKS (``scale_bits`` and
    ``first_mod_bits`` then set its parameters, ``encrypt`` lists the model entries to
    encrypt when not all are — the others travel in clear, ``verify_sum`` has every site add
    the ciphertexts itself before decrypting; ``"p2p"`` runs serverless rounds in which
    every site unmasks the sum and averages itself (``relay = "sum"``: the coordinator adds the
    masked vectors it relays); ``neighbours``, ``threshold``,
    ``clip``, ``bits`` and ``seeded`` are SecAgg+'s).
    """

    enabled: bool = False
    neighbours: int | None = None
    threshold: float = 0.5
    clip: float = 1.0
    bits: int = 16
    seeded: bool = False
    mode: str | None = None
    scale_bits: int | None = None
    first_mod_bits: int | None = None
    encrypt: tuple[str, ...] | None = None
    verify_sum: bool | None = None
    relay: str | None = None

    @property
    def is_ckks(self) -> bool:
        """Threshold CKKS rather than SecAgg+."""
        return self.enabled and self.mode == "ckks"

    @property
    def is_p2p(self) -> bool:
        """Peer-to-peer rounds: the sites aggregate, the coordinator only relays."""
        return self.enabled and self.mode == "p2p"


@dataclass(frozen=True)
class PersonalizationSpec:
    """FedBN / FedPer (entries kept at the site), Ditto, or fine-tuning after the last round."""

    method: str = "none"
    config: Mapping[str, ConfigValue] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationSpec:
    """What the report shows besides the task's own metrics."""

    metrics: tuple[str, ...] | None = None
    subgroups: tuple[str, ...] = ()
    calibration: bool = True
    #: ``"platt"``: after the last round, fit Platt scaling federatedly (``calibration = "platt"``);
    #: the release bundle ships it and ``fedcare predict`` shows the calibrated probability.
    recalibration: str = "none"


@dataclass(frozen=True)
class SimulationSpec:
    """Where ``fedcare simulate`` runs the sites (``[simulation]``); not part of the study's hash.

    ``backend`` ``"inprocess"`` runs them as threads of one process, ``"ray"`` as Ray
    actors (:class:`fedcare.transport.ray_channel.RayChannel`): on the cluster at
    ``ray_address`` or a local Ray, a pool of ``ray_actors`` actors (default: the CPUs
    over ``cpus_per_site``), each site using ``cpus_per_site`` CPUs while it trains and
    holding ``memory_per_site`` bytes. The command line overrides each key.
    """

    backend: str = "inprocess"
    ray_address: str | None = None
    ray_actors: int | None = None
    cpus_per_site: float | None = None
    memory_per_site: int | None = None

    def merged(
        self,
        *,
        backend: str | None = None,
        ray_address: str | None = None,
        ray_actors: int | None = None,
        cpus_per_site: float | None = None,
        memory_per_site: int | str | None = None,
    ) -> SimulationSpec:
        """These settings with each given one (a command-line option) in place of the file's, checked."""
        # a backend other than Ray given on the command line drops the file's Ray settings
        base = self if backend in (None, "ray") else SimulationSpec()
        raw: dict[str, Any] = {
            "backend": backend or self.backend,
            "ray_address": ray_address or base.ray_address,
            "ray_actors": ray_actors if ray_actors is not None else base.ray_actors,
            "cpus_per_site": cpus_per_site if cpus_per_site is not None else base.cpus_per_site,
            "memory_per_site": memory_per_site if memory_per_site is not None else base.memory_per_site,
        }
        c = Checker("simulation settings (the study's [simulation] and the command line)", _PLACES)
        spec = _simulation(c, {k: v for k, v in raw.items() if v is not None})
        c.raise_bad()
        return spec


def parse_bytes(value: object, name: str) -> int:
    """A positive number of bytes: an integer or a string such as ``"512MB"`` or ``"2 GiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        unit = text.lstrip("0123456789.")
        number = text[: len(text) - len(unit)]
        try:
            amount = float(number) * _BYTE_UNITS[unit or "b"]
        except (KeyError, ValueError):
            amount = 0
        if amount >= 1:
            return int(amount)
    units = ", ".join(u for u in _BYTE_UNITS if u != "b")
    raise ConfigError(f"{name} must be a positive number of bytes (e.g. 536870912 or '512MiB'; {units}), got {value!r}")


@dataclass(frozen=True)
class StudySpec:
    """A validated ``study.toml``.

    Attributes
    ----------
    name : str
        The study's name; sites opt in to it.
    task, task_params
        The task (by name; sites approve its hash) and its architecture parameters.
    data : DataSpec
        Schema and preparation.
    strategy, strategy_params
        The registered strategy and its keyword arguments.
    fit, baseline
        Local training per round; Local/Pooled reference training (simulation only).
    privacy : Mapping[str, Any]
        :class:`fedcare.privacy.setup.PrivacySettings` fields; empty means non-private.
    secure_aggregation, personalization, evaluation
        As their classes say.
    path : Path or None
        The file, when read from disk (not part of the hash).
    simulation : SimulationSpec
        ``[simulation]``: where ``fedcare simulate`` runs the sites (not part of the hash).
    """

    name: str
    seed: int
    task: str
    task_params: Mapping[str, Any]
    data: DataSpec
    strategy: str
    strategy_params: Mapping[str, Any]
    federation: FederationSpec
    fit: Mapping[str, ConfigValue]
    baseline: Mapping[str, ConfigValue]
    privacy: Mapping[str, Any] = field(default_factory=dict)
    secure_aggregation: SecureAggregationSpec = field(default_factory=SecureAggregationSpec)
    personalization: PersonalizationSpec = field(default_factory=PersonalizationSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    compression: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    path: Path | None = None
    #: Where ``fedcare simulate`` runs the sites: not what is trained, so not in the hash.
    simulation: SimulationSpec = field(default_factory=SimulationSpec, compare=False)

    @property
    def rounds(self) -> int:
        """Federated rounds."""
        return self.federation.rounds

    def describe(self) -> dict[str, Any]:
        """The whole study as plain, TOML-shaped data: :func:`parse_study` reads it back to an equal study.

        This is what the content hash covers and what travels to sites with every instruction.
        """
        fed = {k: v for k, v in asdict(self.federation).items() if v is not None}
        secagg = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(self.secure_aggregation).items()
            if v is not None
        }
        evaluation: dict[str, Any] = {
            "subgroups": list(self.evaluation.subgroups),
            "calibration": self.evaluation.recalibration
            if self.evaluation.recalibration != "none"
            else self.evaluation.calibration,
        }
        if self.evaluation.metrics is not None:
            evaluation["metrics"] = list(self.evaluation.metrics)
        return {
            "study": {"name": self.name, "description": self.description, "seed": self.seed},
            "task": {"name": self.task, "params": dict(self.task_params)},
            "data": self.data.describe(),
            "strategy": {"name": self.strategy, "params": dict(self.strategy_params)},
            "federation": fed,
            "fit": dict(self.fit),
            "baseline": dict(self.baseline),
            "privacy": dict(self.privacy),
            "secure_aggregation": secagg,
            "personalization": {"method": self.personalization.method, **dict(self.personalization.config)},
            "evaluation": evaluation,
            "compression": dict(self.compression),
        }

    def to_json(self) -> str:
        """Canonical JSON of :meth:`describe`: what the hash covers and what travels to sites.

        Keys are sorted, except the schema's columns, whose order is the model's input order.
        """
        return json.dumps(_canonical(self.describe()), separators=(",", ":"), default=str)

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`describe` (layout and comments do not count)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @property
    def where(self) -> str:
        """How messages name this study's file."""
        return str(self.path) if self.path is not None else f"study {self.name!r}"


def _canonical(value: Any, *, keep_order: bool = False) -> Any:
    """``value`` with every mapping's keys sorted, but the order of ``columns`` kept."""
    if isinstance(value, Mapping):
        keys = list(value) if keep_order else sorted(value)
        return {k: _canonical(value[k], keep_order=(k == "columns" and not keep_order)) for k in keys}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def study_from_json(text: str, *, where: str = "announced study") -> StudySpec:
    """A study as it travels with instructions (JSON of :meth:`StudySpec.describe`)."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    return parse_study(raw, where=where)


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a ``study.toml`` (see :func:`parse_study`)."""
    p = Path(path)
    return parse_study(read_toml(p, "study file"), where=str(p), path=p)


def parse_study(raw: Mapping[str, Any], *, where: str = "study", path: Path | None = None) -> StudySpec:
    """Validate a parsed study file.

    Raises
    ------
    ConfigError
        One line starting with ``where``: unknown keys (with a "did you mean"), wrong
        types or values, an unknown task or strategy, strategy parameters it does not
        accept, a personalisation the task cannot do.
    """
    c = Checker(where, _PLACES)
    c.keys(raw, _TOP, "")
    t = {name: c.table(raw, name, f"[{name}]") for name in _TOP}
    for name, keys in _PLACES.items():
        if name and name[:-1] in t and name[:-1] not in ("fit", "baseline"):
            c.keys(t[name[:-1]], keys, name)
    task_name = c.string(t["task"], "name", "task.name")
    if task_name is None:
        c.bad.append("task.name is required (e.g. 'logreg')")
    c.raise_unknown()

    study_name = c.string(t["study"], "name", "study.name", path.stem if path is not None else None)
    if study_name is None:
        c.bad.append("study.name is required (sites opt in to it)")
    seed = c.integer(t["study"], "seed", "study.seed", 0)
    description = t["study"].get("description", "")
    if not isinstance(description, str):
        c.bad.append(f"study.description must be a string, got {description!r}")
        description = ""
    task_params = c.table(t["task"], "params", "task.params")
    strategy = c.string(t["strategy"], "name", "strategy.name", "fedavg") or "fedavg"
    strategy_params = c.table(t["strategy"], "params", "strategy.params")
    fed = t["federation"]
    wait_for = c.optional_integer(fed, "wait_for_sites", "federation.wait_for_sites", 1)
    federation = FederationSpec(
        rounds=c.integer(fed, "rounds", "federation.rounds", 20, minimum=1),
        fraction_fit=c.fraction(fed, "fraction_fit", "federation.fraction_fit", 1.0, closed=True),
        min_sites=c.integer(fed, "min_sites", "federation.min_sites", 1, minimum=1),
        round_timeout_s=c.number(fed, "round_timeout_s", "federation.round_timeout_s", 300.0, positive=True) or 300.0,
        evaluate=c.boolean(fed, "evaluate", "federation.evaluate", True),
        wait_for_sites=wait_for,
        wait_timeout_s=c.number(fed, "wait_timeout_s", "federation.wait_timeout_s", 600.0, positive=True) or 600.0,
    )
    fit = {**DEFAULT_FIT, **c.config(t["fit"], "fit")}
    baseline = {**DEFAULT_BASELINE, **c.config(t["baseline"], "baseline")}
    data = _data(c, t["data"])
    privacy = _privacy(c, t["privacy"])
    secagg = _secagg(c, t["secure_aggregation"])
    personal = _personal(c, t["personalization"])
    ev = t["evaluation"]
    recalibration = "none"
    if isinstance(ev.get("calibration"), str):  # a method: assess calibration and recalibrate
        recalibration = str(ev["calibration"])
        if recalibration not in RECALIBRATIONS:
            c.bad.append(
                f"evaluation.calibration must be true, false or one of {', '.join(map(repr, RECALIBRATIONS))}, "
                f"got {recalibration!r}"
            )
            recalibration = "none"
        calibration = True
    else:
        calibration = c.boolean(ev, "calibration", "evaluation.calibration", True)
    evaluation = EvaluationSpec(
        metrics=c.names(ev, "metrics", "evaluation.metrics"),
        subgroups=c.names(ev, "subgroups", "evaluation.subgroups") or (),
        calibration=calibration,
        recalibration=recalibration,
    )
    compression = dict(t["compression"])
    if compression:
        try:
            Compression(
                codec=compression.get("codec", "none"),
                fraction=compression.get("fraction", 0.01),
                error_feedback=compression.get("error_feedback"),
            )
        except ConfigError as exc:
            c.bad.append(f"[compression] {exc}")
    if data.schema is not None:
        for g in evaluation.subgroups:
            if g not in data.schema.names:
                c.bad.append(f"evaluation.subgroups names {g!r}, which is not a [data.columns] column")
    simulation = _simulation(c, t["simulation"])
    c.raise_bad()
    spec = StudySpec(
        name=str(study_name),
        seed=seed,
        task=str(task_name),
        task_params=dict(task_params),
        data=data,
        strategy=strategy,
        strategy_params=dict(strategy_params),
        federation=federation,
        fit=fit,
        baseline=baseline,
        privacy=privacy,
        secure_aggregation=secagg,
        personalization=personal,
        evaluation=evaluation,
        compression=compression,
        description=description,
        path=path,
        simulation=simulation,
    )
    _check_names(spec)
    return spec


def _data(c: Checker, d: Mapping[str, Any]) -> DataSpec:
    dataset = c.string(d, "dataset", "data.dataset")
    has_schema = "target" in d or "columns" in d
    if dataset is not None and has_schema:
        c.bad.append("give data.dataset (a built-in data set) or a schema (data.target, [data.columns]), not both")
        return DataSpec(dataset=dataset)
    normalization = c.choice(d, "normalization", "data.normalization", "federated", ("federated", "site"))
    test_fraction = c.fraction(d, "test_fraction", "data.test_fraction", 0.25, closed=False)
    split_seed = c.integer(d, "split_seed", "data.split_seed", 0)
    missing = c.scalars(d, "missing", "data.missing")
    positive = c.scalars(d, "positive", "data.positive")
    if dataset is not None:
        return DataSpec(dataset=dataset)
    if not has_schema:
        c.bad.append("[data] needs a built-in dataset = '...' or a schema (target and [data.columns.<name>] tables)")
        return DataSpec()
    schema: StudySchema | None = None
    fhir: FhirMapping | None = None
    try:
        schema = StudySchema.from_mapping({"target": d.get("target"), "columns": d.get("columns")})
        if "fhir" in d:
            fhir = FhirMapping.from_mapping(d["fhir"])
    except ConfigError as exc:
        c.bad.append(f"[data] {exc}")
    if schema is not None and positive is not None:
        spec = schema.column(schema.target)
        if spec.type is ColumnType.CATEGORY:
            unknown = [p for p in positive if p not in (spec.codes or ())]
            if unknown:
                c.bad.append(f"data.positive {unknown} are not codes of the target {schema.target!r}: {spec.codes}")
    return DataSpec(
        schema=schema,
        positive=positive,
        normalization=normalization,
        test_fraction=test_fraction,
        split_seed=split_seed,
        missing=tuple(str(m) for m in missing) if missing is not None else ("",),
        fhir=fhir,
    )


def _privacy(c: Checker, p: Mapping[str, Any]) -> dict[str, Any]:
    if not p:
        return {}
    level = c.choice(p, "level", "privacy.level", "none", PRIVACY_LEVELS)
    out: dict[str, Any] = {"level": level}
    for key in ("epsilon", "delta", "max_grad_norm", "clip_norm", "site_max_epsilon", "lr"):
        if key in p:
            out[key] = c.number(p, key, f"privacy.{key}", None, positive=True)
    for key in ("batch_size", "local_steps", "local_epochs"):
        if key in p:
            out[key] = c.integer(p, key, f"privacy.{key}", 1, minimum=0)
    for key in ("adaptive_clipping", "seeded_noise", "trust_central_noise"):
        if key in p:
            out[key] = c.boolean(p, key, f"privacy.{key}", False)
    if "accountant" in p:
        out["accountant"] = c.choice(p, "accountant", "privacy.accountant", "rdp", ("rdp", "prv"))
    if level != "none" and "epsilon" not in p:
        c.bad.append(f"privacy.level = {level!r} needs privacy.epsilon (the target over the run)")
    if "delta" in out and out["delta"] is not None and not out["delta"] < 1:
        c.bad.append(f"privacy.delta must be below 1, got {out['delta']}")
    return out


def _secagg(c: Checker, s: Mapping[str, Any]) -> SecureAggregationSpec:
    if not s:
        return SecureAggregationSpec()
    threshold = s.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold <= 0:
        c.bad.append(
            f"secure_aggregation.threshold must be a fraction in (0, 1] or a share count >= 2, got {threshold!r}"
        )
        threshold = 0.5
    return SecureAggregationSpec(
        enabled=c.boolean(s, "enabled", "secure_aggregation.enabled", True),
        neighbours=c.optional_integer(s, "neighbours", "secure_aggregation.neighbours", 1),
        threshold=float(threshold) if threshold <= 1 else int(threshold),
        clip=c.number(s, "clip", "secure_aggregation.clip", 1.0, positive=True) or 1.0,
        bits=c.integer(s, "bits", "secure_aggregation.bits", 16, minimum=2),
        seeded=c.boolean(s, "seeded", "secure_aggregation.seeded", False),
        mode=c.choice(s, "mode", "secure_aggregation.mode", "secagg+", SECAGG_MODES) if "mode" in s else None,
        scale_bits=c.integer(s, "scale_bits", "secure_aggregation.scale_bits", 45, minimum=20)
        if "scale_bits" in s
        else None,
        first_mod_bits=c.integer(s, "first_mod_bits", "secure_aggregation.first_mod_bits", 60, minimum=24)
        if "first_mod_bits" in s
        else None,
        encrypt=c.names(s, "encrypt", "secure_aggregation.encrypt"),
        verify_sum=c.boolean(s, "verify_sum", "secure_aggregation.verify_sum", False) if "verify_sum" in s else None,
        relay=c.choice(s, "relay", "secure_aggregation.relay", "all", P2P_RELAYS) if "relay" in s else None,
    )


def _simulation(c: Checker, s: Mapping[str, Any]) -> SimulationSpec:
    backend = c.choice(s, "backend", "simulation.backend", "inprocess", BACKENDS)
    memory = None
    if "memory_per_site" in s:
        try:
            memory = parse_bytes(s["memory_per_site"], "simulation.memory_per_site")
        except ConfigError as exc:
            c.bad.append(str(exc))
    cpus = c.number(s, "cpus_per_site", "simulation.cpus_per_site", None, positive=True)
    ray_keys = sorted(k for k in s if k != "backend")
    if backend != "ray" and ray_keys:
        c.bad.append(f"simulation.{ray_keys[0]} applies only to backend = 'ray'")
    return SimulationSpec(
        backend=backend,
        ray_address=c.string(s, "ray_address", "simulation.ray_address"),
        ray_actors=c.optional_integer(s, "ray_actors", "simulation.ray_actors", 1),
        cpus_per_site=cpus,
        memory_per_site=memory,
    )


def _personal(c: Checker, p: Mapping[str, Any]) -> PersonalizationSpec:
    method = c.choice(p, "method", "personalization.method", "none", PERSONALIZATIONS)
    config = c.config({k: v for k, v in p.items() if k != "method"}, "personalization")
    if method == "ditto":
        lam = config.get("ditto_lambda")
        if isinstance(lam, bool) or not isinstance(lam, int | float) or lam <= 0:
            c.bad.append(f"personalization.method = 'ditto' needs ditto_lambda > 0, got {lam!r}")
    return PersonalizationSpec(method=method, config=config)


def _check_names(spec: StudySpec) -> None:
    """The strategy exists and accepts its parameters (the task is checked when it is built)."""
    where = spec.where
    if spec.strategy not in available_strategies():
        known = ", ".join(available_strategies())
        raise ConfigError(f"{where}: unknown strategy {spec.strategy!r} in strategy.name; available: {known}")
    if spec.strategy in ("local", "pooled"):
        raise ConfigError(f"{where}: strategy name {spec.strategy!r} clashes with a baseline setting")
    try:
        make_strategy(spec.strategy, fit_config=dict(spec.fit), **dict(spec.strategy_params))
    except ConfigError as exc:
        raise ConfigError(f"{where}: strategy: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: strategy.params: {exc}") from None


def setting_name(study: StudySpec) -> str:
    """The federated setting's key in summary.json: the strategy, ``+method`` when personalised."""
    method = study.personalization.method
    return study.strategy if method == "none" else f"{study.strategy}+{method}"


def study_from_experiment(cfg: Any, dataset: str) -> StudySpec:
    """The study an :class:`fedcare.experiment.ExperimentConfig` describes, on a built-in data set."""
    if cfg.personalization not in PERSONALIZATIONS:
        raise ConfigError(f"personalization must be one of {', '.join(PERSONALIZATIONS)}, got {cfg.personalization!r}")
    if cfg.personalization == "ditto":
        lam = cfg.personal_config.get("ditto_lambda")
        if isinstance(lam, bool) or not isinstance(lam, int | float) or lam <= 0:
            raise ConfigError(f"personalization 'ditto' needs personal_config['ditto_lambda'] > 0, got {lam!r}")
    return StudySpec(
        name=dataset,
        seed=cfg.seed,
        task="",
        task_params={},
        data=DataSpec(dataset=dataset),
        strategy=cfg.strategy,
        strategy_params=dict(cfg.strategy_params),
        federation=FederationSpec(rounds=cfg.rounds, fraction_fit=cfg.fraction_fit, min_sites=cfg.min_sites),
        fit=dict(cfg.fit_config),
        baseline=dict(cfg.baseline_config),
        privacy=dict(cfg.privacy),
        personalization=PersonalizationSpec(method=cfg.personalization, config=dict(cfg.personal_config)),
    )
