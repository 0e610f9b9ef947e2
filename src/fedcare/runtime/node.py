"""SiteNode: one site's process logic. It owns the data and answers instructions.

The node is transport-agnostic: ``handle`` takes one instruction and returns one reply.
The in-process channel calls it directly; the gRPC node agent calls it for each
message received over its stream. Everything the site does passes its policy first,
and failures come back as error replies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from fedcare.compression import COMPRESSED_RECORD, Compression, compress_update, strip_config
from fedcare.errors import FedcareError, PolicyError
from fedcare.personal.site import LOCAL_RECORD, model_for, shared_part
from fedcare.privacy.guard import Admission, SitePrivacyGuard
from fedcare.privacy.ledger import PrivacyLedger
from fedcare.privacy.plan import PrivacyPlan
from fedcare.protocols import SiteMemory
from fedcare.runtime.pipeline import FitRequest, site_fit
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.queries import MomentsQuery, SiteQueries, SiteQuery
from fedcare.runtime.recalibration import PlattQuery
from fedcare.runtime.reference import ReferenceQuery
from fedcare.secure.ckks import CkksBackend, CkksSiteHandler
from fedcare.secure.handler import SecAggSiteHandler
from fedcare.secure.p2p_site import PeerToPeerSiteHandler
from fedcare.secure.p2p_wire import EVALUATE_KEY, FLAG, MODEL_RECORD
from fedcare.serde import ArraySpec, check_state, spec_of
from fedcare.task import SiteData, Task
from fedcare.task_manifest import TaskManifest, task_manifest
from fedcare.types import Message, MessageKind, ModelState, Payload, RunId, SiteId, SiteUpdate

__all__ = ["SiteNode", "TaskIdentity"]

log = logging.getLogger(__name__)

#: Runs whose site state (``FitContext.state``) a node keeps in memory, newest last.
MAX_RUNS_WITH_STATE = 4


@dataclass(frozen=True)
class TaskIdentity:
    """What a node derives from its installed task once: its manifest (hash) and model spec.

    Computing them reads the task's module tree and builds its model; simulated sites
    of one task share one identity (:func:`fedcare.runtime.simulation.build_nodes`), so
    thousands of sites cost one computation, not thousands.
    """

    manifest: TaskManifest
    spec: dict[str, ArraySpec]

    @classmethod
    def of(cls, task: Task) -> TaskIdentity:
        """The manifest and shared-model spec of ``task``."""
        return cls(task_manifest(task), spec_of(shared_part(task, task.init_model(np.random.default_rng(0)))))


class SiteNode:
    """Answer fit and evaluate instructions with a site's own data.

    Parameters
    ----------
    site_id : SiteId
        This site's name.
    task : Task
        The installed task (its hash is what the site approves by default).
    data : SiteData
        The site's train and test splits; they never leave this object.
    policy : SitePolicy or None (default: None)
        Rules for incoming instructions; the default approves only ``task``.
    queries : Iterable[SiteQuery] (default: ())
        Queries the site answers besides the built-in moments query of federated
        standardisation (:class:`~fedcare.runtime.queries.MomentsQuery` on
        ``data.train``), e.g. :class:`fedcare.data.cohort.StatsQuery` with the site's
        table and its statistics release rules. A query of the same name replaces the
        built-in one.
    ledger : PrivacyLedger or None (default: None)
        The site's privacy ledger, charged before any private update or DP statistics
        release leaves.
    memory_files : SiteMemory or None (default: None)
        Where the per-run site memory is kept on disk (a deployed node), so a restart
        keeps SCAFFOLD's ``c_i`` and Ditto's personal model; ``None`` keeps it in memory.
    ckks_backend : CkksBackend or None (default: None)
        The site's OpenFHE engine for threshold CKKS rounds; ``None`` refuses them.
    identity : TaskIdentity or None (default: None)
        ``TaskIdentity.of(task)`` computed already (shared by many simulated sites).
    """

    def __init__(
        self,
        *,
        site_id: SiteId,
        task: Task,
        data: SiteData,
        policy: SitePolicy | None = None,
        queries: Iterable[SiteQuery] = (),
        ledger: PrivacyLedger | None = None,
        memory_files: SiteMemory | None = None,
        ckks_backend: CkksBackend | None = None,
        identity: TaskIdentity | None = None,
    ) -> None:
        self.site_id = site_id
        self.ckks_backend = ckks_backend
        self.task = task
        self.data = data
        self.policy = policy or SitePolicy()
        identity = identity or TaskIdentity.of(task)
        self.task_manifest = identity.manifest
        self.task_hash = self.task_manifest.digest
        self._spec = identity.spec
        #: Per-run site memory (SCAFFOLD's c_i, FedBN/FedPer local entries, Ditto's personal
        #: model); handed to tasks that accept a FitContext and never leaves the site.
        self.site_state: dict[RunId, dict[str, ModelState]] = {}
        self.memory_files = memory_files
        self.privacy = SitePrivacyGuard(
            site=site_id,
            max_epsilon=self.policy.max_epsilon,
            delta=self.policy.delta,
            trust_central_noise=self.policy.trust_central_noise,
            allow_seeded_noise=self.policy.allow_seeded_noise,
            ledger=ledger,
        )
        self._secagg: SecAggSiteHandler | None = None
        self._ckks: CkksSiteHandler | None = None
        self._p2p: PeerToPeerSiteHandler | None = None
        #: QUERY instructions: moments, cohort statistics (DP releases charged to ``ledger``).
        builtin: list[SiteQuery] = [MomentsQuery(data), PlattQuery(self), ReferenceQuery(self)]
        self.queries = SiteQueries(site_id=site_id, queries=[*builtin, *queries], privacy=self.privacy)

    def handle(self, message: Message) -> Message:
        """Check the instruction against policy, run it, and build the reply."""
        if message.site != self.site_id:
            return message.reply(error=f"message addressed to {message.site}, this is {self.site_id}")
        if message.kind is MessageKind.QUERY:
            query = self.queries.get(message)
            if query is None or not query.task_bound:  # the query's own rules decide (statistics)
                return self.queries.handle(message)
        refusal = self.policy.refusal(
            message.payload.config, installed_hash=self.task_hash, installed_manifest=self.task_manifest
        )
        if refusal is not None:
            log.info("site %s refused %s round %d: %s", self.site_id, message.kind.value, message.round_no, refusal)
            return message.reply(error=refusal)
        try:
            if message.kind is MessageKind.FIT:
                exposure = self.policy.exposure_refusal(secure=False)
                if exposure is not None:
                    return message.reply(error=exposure)
                return self._kept(self._fit(message))
            if message.kind is MessageKind.SECAGG:
                peer_to_peer = message.payload.config.get(FLAG) is True
                if self.policy.require_peer_to_peer and not peer_to_peer:
                    return message.reply(error=_PEER_TO_PEER_REQUIRED)
                if str(message.payload.config.get("secagg.stage", "")).startswith("ckks."):
                    return self._kept(self._ckks_handler().handle(message))
                if self.policy.require_encryption:
                    return message.reply(error=_ENCRYPTION_REQUIRED)
                if peer_to_peer:
                    return self._kept(self._p2p_handler().handle(message))
                return self._kept(self._secagg_handler().handle(message))
            if message.kind is MessageKind.EVALUATE:
                return self._evaluate(message)
            if message.kind is MessageKind.QUERY:
                return self.queries.handle(message)
            return message.reply(error=f"unsupported instruction kind {message.kind.value!r}")
        except PolicyError as exc:  # a refusal: the message says "refused: ..."
            log.info("site %s refused %s round %d: %s", self.site_id, message.kind.value, message.round_no, exc)
            return message.reply(error=str(exc))
        except FedcareError as exc:
            return message.reply(error=f"{type(exc).__name__}: {exc}")

    def _ckks_handler(self) -> CkksSiteHandler:
        if self._ckks is None:
            self._ckks = CkksSiteHandler(
                site_id=self.site_id,
                fit=self.fit_update,
                backend=self.ckks_backend,
                min_peers=self.policy.min_peers,
                require_all=self.policy.require_encryption,
            )
        return self._ckks

    def _p2p_handler(self) -> PeerToPeerSiteHandler:
        if self._p2p is None:
            self._p2p = PeerToPeerSiteHandler(
                site_id=self.site_id, fit=self.fit_update, memory=self._run_state, min_peers=self.policy.min_peers
            )
        return self._p2p

    def _secagg_handler(self) -> SecAggSiteHandler:
        if self._secagg is None:
            self._secagg = SecAggSiteHandler(site_id=self.site_id, fit=self.fit_update, min_peers=self.policy.min_peers)
        return self._secagg

    def _model(self, message: Message) -> dict[str, np.ndarray]:
        model = message.payload.arrays.get("model")
        if model is None:
            raise FedcareError("instruction carries no 'model' record")
        check_state(model, self._spec, where=f"{message.kind.value} instruction at {self.site_id}", reuse_frozen=True)
        return dict(model)

    def query_model(self, message: Message) -> ModelState:
        """A query instruction's model, checked like a fit's, with this site's local entries of the run."""
        model = self._model(message)
        local = self._run_state(message.run_id).get(LOCAL_RECORD)
        return {**model, **local} if local else model

    def fit_update(self, message: Message, *, check: Callable[[Admission], None] | None = None) -> SiteUpdate:
        """The one site pipeline (admit, merge local state, fit, release): plain fit and SecAgg+ both call it."""
        return self._pipeline(self._request(message), check=check)

    def _request(self, message: Message) -> FitRequest:
        return FitRequest.parse(message, self._spec, where=f"{message.kind.value} instruction at {self.site_id}")

    def _pipeline(self, request: FitRequest, *, check: Callable[[Admission], None] | None = None) -> SiteUpdate:
        return site_fit(
            request,
            task=self.task,
            data=self.data,
            privacy=self.privacy,
            memory=self._run_state(request.run_id),
            task_config=strip_config,
            check=check,
        )

    def _fit(self, message: Message) -> Message:
        config = message.payload.config
        compression = Compression.from_config(config)  # a bad value raises ConfigError
        request = self._request(message)
        refusal = _plain_fit_refusal(request.plan)
        if refusal is not None:
            return message.reply(error=refusal)
        if request.inputs and not getattr(self.task, "accepts_context", False):
            unusable = sorted(request.inputs)
            return message.reply(error=f"task {self.task.name!r} cannot use instruction records {unusable}")
        update = self._pipeline(request)
        arrays = {"model": update.state, **update.extras}
        if compression.enabled:  # after DP: compression is post-processing of what may leave
            seed = config.get("seed")
            salt = int(seed) if isinstance(seed, int) else np.random.default_rng().integers(2**63)
            memory = self._run_state(message.run_id)
            packed = compress_update(
                update.reference, update.state, compression, rng=np.random.default_rng([salt, 0xC0DEC]), memory=memory
            )
            arrays = {COMPRESSED_RECORD: packed, **update.extras}
        metrics = {"num_examples": float(update.num_examples), **update.metrics}
        return message.reply(Payload(arrays=arrays, metrics=metrics))

    def _run_state(self, run_id: RunId) -> dict[str, ModelState]:
        """The site memory of ``run_id``: in memory, else from disk (a restarted node), else new."""
        if run_id not in self.site_state:
            while len(self.site_state) >= MAX_RUNS_WITH_STATE:
                del self.site_state[next(iter(self.site_state))]
            self.site_state[run_id] = self.memory_files.load(run_id) if self.memory_files else {}
        return self.site_state[run_id]

    def _kept(self, reply: Message) -> Message:
        """Write the run's memory to disk before the reply that depends on it leaves."""
        memory = self.site_state.get(reply.run_id)
        if self.memory_files is not None and memory and not reply.has_error:
            self.memory_files.save(reply.run_id, memory)
        return reply

    def _evaluate(self, message: Message) -> Message:
        memory = self._run_state(message.run_id)
        if message.payload.config.get(EVALUATE_KEY) == "site":  # peer-to-peer: the site's own copy
            own = memory.get(MODEL_RECORD)
            if own is None:
                return message.reply(error="no copy of the run's peer-to-peer model at this site (out of sync)")
            model = model_for(self.task, dict(own), memory)
        else:
            model = model_for(self.task, self._model(message), memory)
        result = self.task.evaluate(model, self.data.test)
        metrics = {"loss": result.loss, "num_examples": float(result.num_examples), **result.metrics}
        return message.reply(Payload(metrics=metrics))


_PEER_TO_PEER_REQUIRED = "refused: this site takes part only in peer-to-peer rounds (no aggregator sees its update)"
_ENCRYPTION_REQUIRED = "refused: this site sends its update only encrypted under threshold CKKS (not masked, not plain)"


def _plain_fit_refusal(plan: PrivacyPlan) -> str | None:
    """Why a plan may not run as a plain (unmasked) fit, or ``None``."""
    if plan.client is not None and plan.client.secure_aggregation:
        return "refused: the DP plan counts on secure aggregation but this is a plain fit"
    return None
