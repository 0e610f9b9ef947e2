"""The site builder: one site file + the study → the site's data, its SiteNode and its front door.

``fedcare data check``, ``stats``, a simulated site, a rehearsed one and ``fedcare node``
all read a site through :func:`load_site_data` and :func:`build_site`, so the data a
deployed node trains on is prepared by the same code as in simulation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fedcare.build.prep import StudySite, TabularSource
from fedcare.build.run import build_task, ckks_params
from fedcare.build.validation import VALIDATE_QUERY, ValidateQuery
from fedcare.data.check import check_frame
from fedcare.data.cohort import StatsQuery
from fedcare.data.connect import LoadedSite, load_site
from fedcare.data.dicom import DEFAULT_SIZE
from fedcare.data.schema import CheckReport
from fedcare.data.streaming import DicomFolder
from fedcare.data.table import read_csv
from fedcare.data.tabular import split_indices
from fedcare.datasets import load_builtin
from fedcare.errors import ConfigError, DataError, FedcareError, PolicyError
from fedcare.he import OpenFheEngine
from fedcare.privacy.ledger import PrivacyLedger
from fedcare.runtime.node import SiteNode
from fedcare.runtime.policy import SitePolicy
from fedcare.store.ledger import sql_ledger
from fedcare.store.site_memory import SiteMemoryFiles
from fedcare.store.sql import SqlStore
from fedcare.study.prep_stats import recipe_of
from fedcare.study.site import SiteSpec, parse_site
from fedcare.study.spec import StudySpec, study_from_json
from fedcare.task import ArrayDataset, SiteData, Task
from fedcare.types import Message, SiteId

__all__ = [
    "SITE_BUDGET",
    "BuiltSite",
    "SiteGate",
    "SiteInputs",
    "build_site",
    "builtin_site_spec",
    "deployed_site",
    "load_site_data",
    "site_gate",
]

log = logging.getLogger(__name__)

#: Ledger scope of a deployed node: one budget for everything it takes part in.
SITE_BUDGET = "all-studies"


@dataclass
class SiteInputs:
    """A site's data as its node holds it.

    ``data`` is what the node trains on until (for ``normalization = "federated"``) the
    combined statistics arrive; ``source`` then holds the encoded, not yet standardised rows.
    """

    data: SiteData
    source: TabularSource | None = None
    loaded: LoadedSite | None = None

    @property
    def n_features(self) -> int | None:
        """Model inputs per row for tabular data (None for images)."""
        if self.source is not None:
            return int(self.source.x_train.shape[1])
        x = getattr(self.data.train, "x", None)  # a streamed source holds no array
        return int(x.shape[1]) if getattr(x, "ndim", 0) == 2 else None


def load_site_data(spec: SiteSpec, study: StudySpec) -> SiteInputs:
    """Read, check and split a site's data as the study says.

    Raises
    ------
    DataError
        Every problem with the site's files, naming file, row (FHIR bundle, DICOM file)
        and field, before any training.
    ConfigError
        The site's data does not fit the study (a built-in site for a schema study...).
    """
    if spec.builtin:
        dataset = str(spec.options.get("dataset"))
        if study.data.dataset is not None and study.data.dataset != dataset:
            raise ConfigError(f"{spec.where}: data set {dataset!r}, but the study trains on {study.data.dataset!r}")
        data = load_builtin(dataset)
        site = str(spec.options.get("site", spec.site_id))
        if site not in data.sites:
            raise ConfigError(
                f"{spec.where}: data set {dataset!r} has no site {site!r}; sites: {', '.join(data.sites)}"
            )
        return SiteInputs(data=data.sites[site])  # type: ignore[index]
    if study.data.schema is None:
        raise ConfigError(
            f"{spec.where}: the study trains on the built-in data set {study.data.dataset!r}; "
            f"this site's data ({spec.kind}) needs a study with a [data] schema"
        )
    if spec.options.get("stream", False) is not False:
        return SiteInputs(data=_streamed(spec, study))
    loaded = load_site(spec.data_config(study))
    if loaded.images is not None:
        return SiteInputs(data=_images(loaded, study), loaded=loaded)
    source = TabularSource.from_loaded(loaded, recipe_of(study), study.data.positive)
    if len(source.y_train) < 2 or len(source.y_test) < 1:
        raise DataError(f"site {spec.site_id}: too few rows to split ({len(loaded.frame)})")
    data = source.local()
    return SiteInputs(data=data, source=source if study.data.normalization == "federated" else None, loaded=loaded)


def _images(loaded: LoadedSite, study: StudySpec) -> SiteData:
    labels = loaded.target.astype("int64")
    assert loaded.images is not None
    if "split" in loaded.raw.columns:
        split = loaded.raw["split"].to_numpy()
        tr, te = (split == "train").nonzero()[0], (split == "test").nonzero()[0]
    else:
        tr, te = split_indices(labels, test_fraction=study.data.test_fraction, seed=study.data.split_seed)
    return SiteData(ArrayDataset(loaded.images[tr], labels[tr]), ArrayDataset(loaded.images[te], labels[te]))


def _streamed(spec: SiteSpec, study: StudySpec) -> SiteData:
    """A DICOM folder read a batch at a time (``stream = true``): the label table is checked now, pixels when read.

    The split is the one the in-memory connector makes (the table's ``split`` column, or
    the study's seeded stratified split), so streamed and in-memory sites train on the
    same images.
    """
    if spec.options.get("stream") is not True:
        raise ConfigError(f"{spec.where}: data.stream must be true or false, got {spec.options.get('stream')!r}")
    if spec.kind != "dicom":
        raise ConfigError(
            f"{spec.where}: data.stream = true reads a DICOM folder a batch at a time; kind {spec.kind!r} "
            "is read whole (tables are prepared with statistics combined over all rows)"
        )
    config = spec.data_config(study)
    labels_opt = config.option("labels", None)
    if not isinstance(labels_opt, str):
        raise ConfigError(f"{spec.where}: kind = 'dicom' needs data.labels = '<label table CSV>'")
    file_column = str(config.option("file_column", "file"))
    size = config.option("size", list(DEFAULT_SIZE))
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ConfigError(f"{spec.where}: data.size must be [rows, columns] of positive integers, got {size!r}")
    window = config.option("window", None)
    if window is not None and not (
        isinstance(window, list)
        and len(window) == 2
        and all(isinstance(w, int | float) and not isinstance(w, bool) for w in window)
        and window[1] > 0
    ):
        raise ConfigError(f"{spec.where}: data.window must be [center, width > 0], got {window!r:.80}")
    labels_path = config.resolve(labels_opt)
    report = CheckReport()
    table = read_csv(labels_path, report)
    if table is None or file_column not in table.columns:
        report.raise_if_problems(f"site {spec.site_id} ({labels_path})")
        raise DataError(f"site {spec.site_id} ({labels_path}): no {file_column!r} column naming the image files")
    names = [str(f) for f in table[file_column]]
    frame = check_frame(table, config.schema, source=labels_path.name, report=report, row_label=names)
    loaded = LoadedSite(config=config, frame=frame, raw=table, images=None, report=report)
    report.raise_if_problems(f"site {spec.site_id} ({labels_path})")
    y = loaded.target.astype("int64")
    if "split" in table.columns:
        split = table["split"].to_numpy()
        tr, te = (split == "train").nonzero()[0], (split == "test").nonzero()[0]
    else:
        tr, te = split_indices(y, test_fraction=study.data.test_fraction, seed=study.data.split_seed)
    if len(tr) == 0 or len(te) == 0:
        raise DataError(f"site {spec.site_id} ({labels_path}): too few images to split ({len(y)})")

    def part(rows: Any) -> Any:
        labels = pd.DataFrame({"file": [names[i] for i in rows], "label": y[rows]})
        return DicomFolder(config.path, labels, size=(size[0], size[1]), window=window)

    return SiteData(part(tr), part(te))


@dataclass
class BuiltSite:
    """One study at one site, ready to answer: its inputs, its node and its front door."""

    spec: SiteSpec
    inputs: SiteInputs
    node: SiteNode
    study_site: StudySite

    @property
    def task(self) -> Task:
        """The installed task the node runs."""
        return self.node.task


def build_site(
    spec: SiteSpec,
    study: StudySpec,
    *,
    inputs: SiteInputs | None = None,
    task: Task | None = None,
    ledger: PrivacyLedger | None = None,
    memory_files: SiteMemoryFiles | None = None,
    policy: SitePolicy | None = None,
) -> BuiltSite:
    """The SiteNode for ``spec`` in ``study``, refused up front if the site does not opt in."""
    refusal = spec.policy_for(study)
    if refusal is not None:
        raise PolicyError(f"{spec.where}: {refusal}")
    inputs = inputs or load_site_data(spec, study)
    task = task or build_task(study, n_features=inputs.n_features)
    queries = []
    if inputs.loaded is not None and inputs.loaded.images is None:  # cohort statistics under the site's own rules
        loaded = inputs.loaded
        queries.append(
            StatsQuery(site_id=spec.site_id, frame=loaded.frame, schema=loaded.config.schema, spec=loaded.config.stats)
        )
    node = SiteNode(
        site_id=spec.site_id,
        task=task,
        data=inputs.data,
        policy=policy or spec.policy,
        ledger=ledger,
        memory_files=memory_files,
        queries=queries,
        # the site's own OpenFHE engine (started on the first CKKS stage; its key shares never leave it)
        ckks_backend=OpenFheEngine(ckks_params(study)) if study.secure_aggregation.is_ckks else None,
    )
    if inputs.loaded is not None and inputs.loaded.images is None:  # external validation of a released model
        loaded = inputs.loaded
        node.queries.queries[VALIDATE_QUERY] = ValidateQuery(
            node, loaded, study.data.positive, min_cell=loaded.config.stats.min_count
        )
    return BuiltSite(spec=spec, inputs=inputs, node=node, study_site=StudySite(node, study, inputs.source))


#: Studies a site keeps built at once (their data, task and node); older ones are rebuilt on demand.
MAX_STUDIES = 4


class SiteGate:
    """A site's front door: admits the study an instruction names, builds its part, hands it over.

    Every instruction carries the study (its canonical JSON and content hash). The gate
    recomputes the hash, checks the site's opt-in and pinned study hashes, and builds —
    once per study — the site's data (its connector, checked against the study's schema),
    task and node with the site builder, so a node needs no copy of the study and a
    refusal names the study and hash it saw.

    Parameters
    ----------
    spec : SiteSpec
        The site file.
    pinned : StudySpec or None
        A study the operator reviewed (``fedcare node --study``): only its hash is accepted.
    built : Mapping[str, BuiltSite] or None
        Sites already built, by study hash (a simulation that has loaded the data).
    ledger, memory_files
        The site's privacy ledger and per-run memory, shared by its studies.
    policy : SitePolicy or None
        Overrides the site file's policy (simulated sites without a file).
    on_study : callable or None
        Called with (run id, study hash) the first time a run names a study (the audit log).
    """

    def __init__(
        self,
        spec: SiteSpec,
        *,
        pinned: StudySpec | None = None,
        built: Mapping[str, BuiltSite] | None = None,
        ledger: PrivacyLedger | None = None,
        memory_files: SiteMemoryFiles | None = None,
        policy: SitePolicy | None = None,
        on_study: Callable[[str, str], None] | None = None,
    ) -> None:
        self.spec, self.pinned = spec, pinned
        self.ledger, self.memory_files, self.policy, self.on_study = ledger, memory_files, policy, on_study
        self.built: dict[str, BuiltSite] = dict(built or {})
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @property
    def site_id(self) -> SiteId:
        """The site's id."""
        return self.spec.site_id

    def site_for(self, study: StudySpec) -> BuiltSite:
        """The site's part of ``study`` (built on first use)."""
        with self._lock:
            site = self.built.get(study.hash)
            if site is None:
                site = build_site(
                    self.spec,
                    study,
                    ledger=self.ledger,
                    memory_files=self.memory_files,
                    policy=self.policy,
                )
                while len(self.built) >= MAX_STUDIES:
                    del self.built[next(iter(self.built))]
                self.built[study.hash] = site
            return site

    @property
    def node(self) -> SiteNode:
        """The node of the most recently built study (simulations read its state)."""
        return next(reversed(self.built.values())).node

    def __getstate__(self) -> dict[str, Any]:
        # a Ray actor receives the site by serialisation; its lock is made anew there
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def handle(self, message: Message) -> Message:
        """Admit the instruction's study, then let that study's site answer it."""
        config = message.payload.config
        seen, text = config.get("study_hash"), config.get("study_spec")
        if not isinstance(seen, str) or not isinstance(text, str):
            return message.reply(error="refused: the instruction names no study (study_hash and study_spec)")
        try:
            site = self.built.get(seen)
            if site is None:
                study = study_from_json(text, where=f"study {config.get('study')!r} announced by the coordinator")
                if study.hash != seen:
                    return message.reply(error=f"refused: the announced study does not match its hash {seen}")
                if self.pinned is not None and self.pinned.hash != seen:
                    return message.reply(
                        error=f"refused: the coordinator runs study {study.name!r} with hash {seen}; this node was "
                        f"started for {self.pinned.name!r} with hash {self.pinned.hash}"
                    )
                refusal = self.spec.policy_for(study)
                if refusal is not None:
                    return message.reply(error=refusal)
                site = self.site_for(study)
        except FedcareError as exc:
            log.warning("site %s cannot take part in study %s: %s", self.site_id, config.get("study"), exc)
            return message.reply(error=f"{type(exc).__name__}: {exc}")
        if self.on_study is not None and (message.run_id, seen) not in self._seen:
            self._seen.add((message.run_id, seen))
            self.on_study(message.run_id, seen)
        return site.study_site.handle(message)


def site_gate(
    spec: SiteSpec,
    study: StudySpec | None = None,
    *,
    ledger: PrivacyLedger | None = None,
    memory_files: SiteMemoryFiles | None = None,
    policy: SitePolicy | None = None,
    inputs: SiteInputs | None = None,
    task: Task | None = None,
    on_study: Callable[[str, str], None] | None = None,
) -> SiteGate:
    """A gate for ``spec``; with ``study``, that study is built now (its data checked before any message)."""
    gate = SiteGate(spec, pinned=None, ledger=ledger, memory_files=memory_files, policy=policy, on_study=on_study)
    if study is not None:
        site = build_site(
            spec, study, inputs=inputs, task=task, ledger=ledger, memory_files=memory_files, policy=policy
        )
        gate.built[study.hash] = site
    return gate


def deployed_site(
    spec: SiteSpec, study: StudySpec | None = None, *, on_study: Callable[[str, str], None] | None = None
) -> SiteGate:
    """A node's gate: its persistent privacy ledger and per-run memory on disk (they survive restarts).

    With ``study`` (``fedcare node --study``) the node checks its data now and accepts only that study.
    """
    ledger = sql_ledger(SqlStore(spec.ledger_url), site=spec.site_id, study=SITE_BUDGET, delta=spec.policy.delta)
    gate = site_gate(spec, study, ledger=ledger, memory_files=SiteMemoryFiles(spec.memory_dir), on_study=on_study)
    gate.pinned = study
    return gate


def builtin_site_spec(dataset: str, site: SiteId, display_name: str = "") -> SiteSpec:
    """A simulated site of a built-in data set that brings no site file (default policy)."""
    return parse_site(
        {"site": {"id": site, "name": display_name or site}, "data": {"kind": "builtin", "dataset": dataset}}
    )
