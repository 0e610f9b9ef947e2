"""The one site pipeline: admit → merge local state → fit → release → (mask).

Both ways a site trains go through :func:`site_fit`: the plain fit reply and the
masked-input stage of SecAgg+ (which only masks what this returns). So whatever a
site does in a plain round it does under secure aggregation too: its policy and
privacy budget, FedBN/FedPer local entries, Ditto's personal model, SCAFFOLD's
control variates, DP-SGD, client-level clipping and its noise share, the ledger.

1. :meth:`FitRequest.parse` reads the instruction once at the wire boundary: the
   validated model and strategy records, the seed, and the DP plan as a typed
   :class:`~fedcare.privacy.plan.PrivacyPlan` (nothing downstream re-parses ``dp.*``).
2. *Admit*: the privacy guard checks the plan against the site's budget and policy and
   works out the site's cost (a refusal raises ``PolicyError``); the caller may add
   its own check of the admitted plan (SecAgg+ refuses two client-level mechanisms).
3. *Merge*: the site's local entries (FedBN/FedPer) join the received shared ones.
4. *Fit*: the task trains (with its :class:`~fedcare.task.FitContext` when it takes one).
5. *Release*: DP-SGD is checked, the update clipped and noised (client-level DP), the
   ledger charged; only what may leave is kept.
6. The result is a typed :class:`~fedcare.types.SiteUpdate` (reference, state,
   weight, metrics, extras) that the caller sends as a reply or masks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fedcare.errors import FedcareError
from fedcare.personal.site import personal_fit
from fedcare.privacy.guard import Admission, SitePrivacyGuard
from fedcare.privacy.plan import PrivacyPlan
from fedcare.serde import StateSpec, check_state
from fedcare.task import FitContext, SiteData, Task
from fedcare.types import ConfigValue, Message, ModelState, RunId, SiteUpdate

__all__ = ["FitRequest", "site_fit"]


def _is_input(record: str) -> bool:
    """Whether an instruction record is a strategy input (not the model, not SecAgg's own)."""
    return record != "model" and not record.startswith("secagg")


@dataclass(frozen=True)
class FitRequest:
    """A fit instruction read once: typed values, nothing left to parse downstream.

    Attributes
    ----------
    run_id : RunId
        The run (keys the site's memory).
    round_no : int
        The round (keys ledger entries).
    model : ModelState
        The received global model (shared entries), validated against the task's spec.
    inputs : Mapping[str, ModelState]
        Strategy records sent with it (e.g. SCAFFOLD's global control variate).
    config : Mapping[str, ConfigValue]
        The fit config (training keys, and the plan's ``dp.*`` keys as sent).
    plan : PrivacyPlan
        The round's DP plan, parsed.
    seed : int or None
        The site's round seed from the coordinator (``None``: fresh randomness).
    """

    run_id: RunId
    round_no: int
    model: ModelState
    inputs: Mapping[str, ModelState]
    config: Mapping[str, ConfigValue]
    plan: PrivacyPlan
    seed: int | None

    @classmethod
    def parse(cls, message: Message, spec: StateSpec, *, where: str) -> FitRequest:
        """Validate the model and records of ``message`` and parse its DP plan (ConfigError if malformed)."""
        model = message.payload.arrays.get("model")
        if model is None:
            raise FedcareError(f"{where}: instruction carries no 'model' record")
        check_state(model, spec, where=where, reuse_frozen=True)
        inputs = {k: dict(v) for k, v in message.payload.arrays.items() if _is_input(k)}
        for name, arrays in inputs.items():
            check_state(arrays, where=f"{where}, record {name!r}")
        config = message.payload.config
        seed = config.get("seed")
        return cls(
            run_id=message.run_id,
            round_no=message.round_no,
            model=dict(model),
            inputs=inputs,
            config=config,
            plan=PrivacyPlan.from_config(config),
            seed=int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None,
        )

    def rng(self) -> np.random.Generator:
        """The training generator: the round seed, else the OS CSPRNG."""
        return np.random.default_rng(self.seed)


def site_fit(
    request: FitRequest,
    *,
    task: Task,
    data: SiteData,
    privacy: SitePrivacyGuard,
    memory: dict[str, ModelState],
    task_config: Callable[[Mapping[str, ConfigValue]], Mapping[str, ConfigValue]] | None = None,
    check: Callable[[Admission], None] | None = None,
) -> SiteUpdate:
    """Run the site pipeline on one fit request; return what may leave, typed.

    Parameters
    ----------
    request : FitRequest
        The parsed instruction.
    task, data : Task, SiteData
        The installed task and the site's data (never leaves).
    privacy : SitePrivacyGuard
        The site's budget, ledger and DP release.
    memory : dict[str, ModelState]
        The site's per-run memory (local entries, personal model, control variates).
    task_config : callable or None (default: None)
        Turns the admitted config into what the task reads (e.g. drop transport keys).
    check : callable or None (default: None)
        The caller's own refusal of an admitted plan (raises), run before training.

    Raises
    ------
    PolicyError
        A refusal (budget, policy, the caller's check).
    FedcareError
        A failure (the task cannot take the instruction's records, DP-SGD did not run).
    """
    admission = privacy.admit(request.config, n_train=len(data.train), plan=request.plan)
    if check is not None:
        check(admission)
    config = admission.task_config if task_config is None else task_config(admission.task_config)
    kwargs = {}
    if getattr(task, "accepts_context", False):
        kwargs["context"] = FitContext(inputs=dict(request.inputs), state=memory)
    elif request.inputs:
        raise FedcareError(f"task {task.name!r} cannot use instruction records {sorted(request.inputs)}")
    result = personal_fit(task, request.model, data.train, config, request.rng(), memory, **kwargs)
    result = privacy.release(
        admission,
        reference=request.model,
        result=result,
        run_id=request.run_id,
        round_no=request.round_no,
        seed=request.seed,
    )
    weight = 1.0 if admission.plan.client is not None else float(result.num_examples)
    return SiteUpdate(
        reference=request.model,
        state=result.state,
        num_examples=result.num_examples,
        weight=weight,
        metrics=dict(result.metrics),
        extras=result.extras,
    )
