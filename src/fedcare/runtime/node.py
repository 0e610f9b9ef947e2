"""SiteNode: one site's process logic. It owns the data and answers instructions.

The node is transport-agnostic: ``handle`` takes one instruction and returns one reply.
The in-process channel calls it directly; the gRPC node agent calls it for each
message received over its stream. Everything the site does passes its policy first,
and failures come back as error replies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from fedcare.compression import COMPRESSED_RECORD, Compression, compress_update, strip_config
from fedcare.errors import FedcareError, PolicyError
from fedcare.personal.site import model_for, personal_fit, shared_part
from fedcare.privacy.guard import SitePrivacyGuard
from fedcare.privacy.ledger import PrivacyLedger
from fedcare.protocols import SiteMemory
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.queries import MomentsQuery, SiteQueries, SiteQuery
from fedcare.secure.handler import SecAggSiteHandler
from fedcare.serde import check_state, spec_of
from fedcare.task import FitContext, SiteData, Task
from fedcare.task_manifest import task_manifest
from fedcare.types import Message, MessageKind, ModelState, Payload, RunId, SiteId

__all__ = ["SiteNode"]

log = logging.getLogger(__name__)

#: Runs whose site state (``FitContext.state``) a node keeps in memory, newest last.
MAX_RUNS_WITH_STATE = 4


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
    ) -> None:
        self.site_id = site_id
        self.task = task
        self.data = data
        self.policy = policy or SitePolicy()
        self.task_manifest = task_manifest(task)
        self.task_hash = self.task_manifest.digest
        self._spec = spec_of(shared_part(task, task.init_model(np.random.default_rng(0))))
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
        #: QUERY instructions: moments, cohort statistics (DP releases charged to ``ledger``).
        self.queries = SiteQueries(site_id=site_id, queries=[MomentsQuery(data), *queries], privacy=self.privacy)

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
                if exposure is None and message.payload.config.get("dp.secure_aggregation") is True:
                    exposure = "refused: the DP plan counts on secure aggregation but this is a plain fit"
                if exposure is not None:
                    return message.reply(error=exposure)
                return self._kept(self._fit(message))
            if message.kind is MessageKind.SECAGG:
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

    def _secagg_handler(self) -> SecAggSiteHandler:
        if self._secagg is None:
            self._secagg = SecAggSiteHandler(
                site_id=self.site_id,
                task=self.task,
                data=self.data,
                load_model=self._model,
                min_peers=self.policy.min_peers,
                run_state=self._run_state,
                privacy=self.privacy,
            )
        return self._secagg

    def _model(self, message: Message) -> dict[str, np.ndarray]:
        model = message.payload.arrays.get("model")
        if model is None:
            raise FedcareError("instruction carries no 'model' record")
        check_state(model, self._spec, where=f"{message.kind.value} instruction at {self.site_id}", reuse_frozen=True)
        return dict(model)

    def _fit(self, message: Message) -> Message:
        config = message.payload.config
        seed = config.get("seed")
        rng = np.random.default_rng(int(seed) if isinstance(seed, int) else None)
        model = self._model(message)
        inputs = {k: dict(v) for k, v in message.payload.arrays.items() if k != "model"}
        for name, arrays in inputs.items():
            check_state(arrays, where=f"fit instruction record {name!r} at {self.site_id}")
        compression = Compression.from_config(config)  # a bad value raises ConfigError
        admission = self.privacy.admit(config, n_train=len(self.data.train))  # refusals raise PolicyError
        task_config = strip_config(admission.task_config)
        memory = self._run_state(message.run_id)
        kwargs = {}
        if getattr(self.task, "accepts_context", False):
            kwargs["context"] = FitContext(inputs=inputs, state=memory)
        elif inputs:
            return message.reply(error=f"task {self.task.name!r} cannot use instruction records {sorted(inputs)}")
        result = personal_fit(self.task, model, self.data.train, task_config, rng, memory, **kwargs)
        result = self.privacy.release(
            admission, reference=model, result=result, run_id=message.run_id, round_no=message.round_no, seed=seed
        )
        arrays = {"model": result.state, **result.extras}
        if compression.enabled:  # after DP: compression is post-processing of what may leave
            codec_rng = np.random.default_rng([int(seed) if isinstance(seed, int) else rng.integers(2**63), 0xC0DEC])
            packed = compress_update(model, result.state, compression, rng=codec_rng, memory=memory)
            arrays = {COMPRESSED_RECORD: packed, **result.extras}
        metrics = {"num_examples": float(result.num_examples), **result.metrics}
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
        model = model_for(self.task, self._model(message), self._run_state(message.run_id))
        result = self.task.evaluate(model, self.data.test)
        metrics = {"loss": result.loss, "num_examples": float(result.num_examples), **result.metrics}
        return message.reply(Payload(metrics=metrics))
