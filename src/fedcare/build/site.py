"""The site builder: one site file + the study → the site's data, its SiteNode and its front door.

``fedcare data check``, ``stats``, a simulated site, a rehearsed one and ``fedcare node``
all read a site through :func:`load_site_data` and :func:`build_site`, so the data a
deployed node trains on is prepared by the same code as in simulation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fedcare.build.prep import SiteGate, TabularSource
from fedcare.build.run import build_task
from fedcare.data.connect import LoadedSite, load_site
from fedcare.data.tabular import split_indices
from fedcare.datasets import load_builtin
from fedcare.errors import ConfigError, DataError
from fedcare.privacy.ledger import PrivacyLedger
from fedcare.runtime.node import SiteNode
from fedcare.runtime.policy import SitePolicy
from fedcare.store.ledger import sql_ledger
from fedcare.store.site_memory import SiteMemoryFiles
from fedcare.store.sql import SqlStore
from fedcare.study.prep_stats import recipe_of
from fedcare.study.site import SiteSpec
from fedcare.study.spec import StudySpec
from fedcare.task import ArrayDataset, SiteData, Task

__all__ = ["SITE_BUDGET", "BuiltSite", "SiteInputs", "build_site", "deployed_site", "load_site_data"]

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
        x = self.data.train.x
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


@dataclass
class BuiltSite:
    """A site ready to answer: its inputs, its node and the gate in front of it."""

    spec: SiteSpec
    inputs: SiteInputs
    node: SiteNode
    gate: SiteGate

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
    on_study: Callable[[str, str], None] | None = None,
) -> BuiltSite:
    """The SiteNode for ``spec`` in ``study``, refused up front if the site does not opt in."""
    refusal = spec.policy_for(study)
    if refusal is not None:
        raise ConfigError(f"{spec.where}: {refusal}")
    inputs = inputs or load_site_data(spec, study)
    task = task or build_task(study, n_features=inputs.n_features)
    node = SiteNode(
        site_id=spec.site_id,
        task=task,
        data=inputs.data,
        policy=policy or spec.policy,
        ledger=ledger,
        memory_files=memory_files,
    )
    return BuiltSite(spec=spec, inputs=inputs, node=node, gate=SiteGate(node, study, inputs.source, on_study=on_study))


def deployed_site(spec: SiteSpec, study: StudySpec, *, on_study: Callable[[str, str], None] | None = None) -> BuiltSite:
    """A node's site: its persistent privacy ledger and per-run memory on disk (they survive restarts)."""
    ledger = sql_ledger(SqlStore(spec.ledger_url), site=spec.site_id, study=SITE_BUDGET, delta=spec.policy.delta)
    return build_site(spec, study, ledger=ledger, memory_files=SiteMemoryFiles(spec.memory_dir), on_study=on_study)


def simulated_sites(
    specs: Mapping[str, SiteSpec], study: StudySpec, inputs: Mapping[str, SiteInputs]
) -> dict[str, BuiltSite]:
    """Every site of a simulation, each built from its own file (one task shared: same hash)."""
    built: dict[str, BuiltSite] = {}
    task: Task | None = None
    for site, spec in specs.items():
        b = build_site(spec, study, inputs=inputs[site], task=task)
        task = b.task
        built[site] = b
    return built
