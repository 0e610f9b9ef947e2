"""Preparing a site's data at the site, from the study's schema and statistics the sites combine.

In simulation and in deployment alike, the coordinator first asks every site for the
:class:`~fedcare.data.tabular.Moments` (counts, sums, sums of squares) of its encoded
training rows, adds them up, and then stamps the combined mean and standard deviation
on every instruction it sends (:class:`StudyChannel`, record ``prep``). Each site's
:class:`StudySite` prepares its own rows with them (impute with the mean, standardise),
so nothing but counts and sums ever leaves a site, a restarted node needs no memory to
rejoin, and the prepared arrays equal the pooled-statistics preparation to rounding.

:class:`StudyChannel` also stamps the study itself (its canonical JSON), its name and
its content hash on every instruction: sites build their part of the study from it
(:class:`fedcare.build.site.SiteGate`) and refuse what their site file does not accept.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedcare.data.connect import LoadedSite
from fedcare.data.moments_query import MOMENTS_QUERY
from fedcare.data.schema import ColumnType
from fedcare.data.tabular import Moments, Standardizer, TabularRecipe, impute_and_standardize, split_indices
from fedcare.errors import DataError
from fedcare.protocols import PrefoldRequest, can_prefold
from fedcare.runtime.node import SiteNode
from fedcare.study.spec import StudySpec
from fedcare.task import ArrayDataset, SiteData
from fedcare.transport.base import Channel
from fedcare.types import Message, MessageKind, Payload, SiteId

__all__ = ["PREP_RECORD", "StudyChannel", "StudySite", "TabularSource", "labels_of"]

#: Instruction record carrying the combined preprocessing statistics (``mean``, ``std``).
PREP_RECORD = "prep"


def labels_of(loaded: LoadedSite, positive: Sequence[object] | None) -> np.ndarray:
    """The target as float64: 1.0 where it is one of ``positive``, else the connector's coding."""
    if positive is None:
        return loaded.target
    spec = loaded.config.schema.column(loaded.config.schema.target)
    values = loaded.frame[spec.name]
    if spec.type is ColumnType.BOOLEAN:
        wanted = {bool(p) for p in positive}
        return values.map(lambda v: float(bool(v) in wanted)).to_numpy(dtype=np.float64)
    return values.isin(list(positive)).to_numpy(dtype=np.float64)


@dataclass
class TabularSource:
    """One site's checked table, split and encoded, not yet imputed or standardised."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @classmethod
    def from_loaded(cls, loaded: LoadedSite, recipe: TabularRecipe, positive: Sequence[object] | None) -> TabularSource:
        """Split (stratified, seeded by the study) and one-hot encode a site's table."""
        loaded.report.raise_if_problems(f"site {loaded.config.site_id}")
        if loaded.images is not None:
            raise DataError(f"site {loaded.config.site_id} holds images, not a table")
        y = labels_of(loaded, positive)
        if len(y) == 0:
            raise DataError(f"site {loaded.config.site_id!r} has no rows")
        train, test = split_indices(y, test_fraction=recipe.test_fraction, seed=recipe.seed)
        x = recipe.encode(loaded.frame)
        return cls(x[train], y[train], x[test], y[test])

    def moments(self) -> Moments:
        """Counts, sums and sums of squares of the training rows (missing values left out)."""
        return Moments.of(self.x_train)

    def prepared(self, stats: Standardizer, *, standardize: bool = True) -> SiteData:
        """Impute with ``stats.mean`` and standardise (the same arithmetic as ``prepare_sites``)."""
        a, b = impute_and_standardize(self.x_train, self.x_test, stats, standardize)
        return SiteData(ArrayDataset(a, self.y_train), ArrayDataset(b, self.y_test))

    def local(self, *, standardize: bool = True) -> SiteData:
        """Prepared with this site's own training statistics (``normalization = "site"``)."""
        return self.prepared(Moments.of(self.x_train).standardizer(), standardize=standardize)


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], dtype=np.float64)
        h.update(name.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


class StudyChannel:
    """A Channel that stamps the study (name, hash) and the combined statistics on every instruction."""

    def __init__(self, inner: Channel, study: StudySpec, prep: Standardizer | None = None) -> None:
        self.inner, self.study = inner, study
        self._json = study.to_json()
        self.prep: dict[str, np.ndarray] | None = None
        if prep is not None:
            self.set_prep(prep)

    def set_prep(self, stats: Standardizer) -> None:
        """Send ``stats`` (combined mean and std) with every later instruction."""
        mean = np.asarray(stats.mean, dtype=np.float64)
        std = np.asarray(stats.std, dtype=np.float64)
        mean.flags.writeable = False
        std.flags.writeable = False
        self.prep = {"mean": mean, "std": std}

    def sites(self) -> Sequence[SiteId]:
        """The inner channel's sites."""
        return self.inner.sites()

    def send(self, messages: Sequence[Message]) -> None:
        """Stamp and forward."""
        self.inner.send(self._stamped(messages))

    def send_prefolded(self, messages: Sequence[Message], request: PrefoldRequest) -> None:
        """Stamp and forward with the Coordinator's pre-folding request (a plain send if the inner channel cannot)."""
        if can_prefold(self.inner):
            self.inner.send_prefolded(self._stamped(messages), request)
        else:
            self.inner.send(self._stamped(messages))

    def _stamped(self, messages: Sequence[Message]) -> list[Message]:
        out = []
        for m in messages:
            config = {
                **m.payload.config,
                "study": self.study.name,
                "study_hash": self.study.hash,
                "study_spec": self._json,
            }
            arrays = dict(m.payload.arrays)
            if self.prep is not None and m.kind is not MessageKind.QUERY:
                arrays[PREP_RECORD] = self.prep
            out.append(replace(m, payload=replace(m.payload, config=config, arrays=arrays)))
        return out

    def receive(self, *, timeout_s: float) -> Iterator[Message]:
        """The inner channel's replies."""
        return self.inner.receive(timeout_s=timeout_s)

    def close(self) -> None:
        """Close the inner channel."""
        self.inner.close()

    def __getattr__(self, name: str) -> object:
        # transport extras (wait_for_sites, finish, port...) pass through
        return getattr(self.inner, name)


class StudySite:
    """One study at one site: answers the moments query and prepares the data, then hands over to the node.

    Parameters
    ----------
    node : SiteNode
        The site's node for this study; its ``data`` is replaced by the prepared data
        when the combined statistics arrive.
    study : StudySpec
        The study.
    source : TabularSource or None
        Raw encoded rows for ``normalization = "federated"`` (None: the node's data is final).
    """

    def __init__(self, node: SiteNode, study: StudySpec, source: TabularSource | None = None) -> None:
        self.node, self.study, self.source = node, study, source
        self._prepared: str | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # a Ray actor receives the site by serialisation; its lock is made anew there
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def handle(self, message: Message) -> Message:
        """Answer the moments query, prepare with the instruction's statistics, then run it."""
        config = message.payload.config
        if message.kind is MessageKind.QUERY and config.get("query") == MOMENTS_QUERY and self.source is not None:
            policy = self.node.policy.refusal(config, installed_hash=self.node.task_hash)
            if policy is not None:
                return message.reply(error=policy)
            m = self.source.moments()
            return message.reply(Payload(arrays={"moments": {"count": m.count, "sum": m.total, "sum_sq": m.total_sq}}))
        prep = message.payload.arrays.get(PREP_RECORD)
        if prep is not None:
            error = self._prepare(prep)
            if error is not None:
                return message.reply(error=error)
            arrays = {k: v for k, v in message.payload.arrays.items() if k != PREP_RECORD}
            message = replace(message, payload=replace(message.payload, arrays=arrays))
        elif self.source is not None and message.kind is not MessageKind.QUERY:
            return message.reply(error="refused: this study standardises with combined statistics, none were sent")
        return self.node.handle(message)

    def _prepare(self, prep: Mapping[str, np.ndarray]) -> str | None:
        if self.source is None:
            return None  # the node's data is already final (built-in data set or site normalisation)
        n = self.source.x_train.shape[1]
        mean, std = prep.get("mean"), prep.get("std")
        if set(prep) != {"mean", "std"} or mean is None or std is None:
            return "malformed 'prep' record: expected exactly 'mean' and 'std'"
        if mean.shape != (n,) or std.shape != (n,):
            return f"malformed 'prep' record: expected {n} columns, got mean {mean.shape} and std {std.shape}"
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std < 0).any():
            return "malformed 'prep' record: statistics must be finite and std non-negative"
        digest = _digest(prep)
        with self._lock:
            if digest != self._prepared:
                self.node.data = self.source.prepared(Standardizer(mean=np.array(mean), std=np.array(std)))
                if hasattr(self.node, "_secagg"):
                    self.node._secagg = None  # built around the previous data
                self._prepared = digest
        return None
