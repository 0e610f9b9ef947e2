"""What a site keeps between rounds for personalised FL: local entries and a personal model.

These functions are called by :class:`fedcare.runtime.node.SiteNode` with the site's
per-run memory (``SiteNode.site_state[run_id]``, the same memory SCAFFOLD's ``c_i``
lives in; it never leaves the site). They are generic over tasks:

* **Partly shared models** (FedBN, FedPer). A task may declare ``local_keys()``: the
  state entries that never leave the site. The coordinator's model holds only the
  shared entries; the site merges its own local entries into every model it receives
  (initialised from the task's seeded init on first use), trains, keeps the new local
  entries and replies with the shared ones only.
* **Ditto** (Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through
  Personalization", ICML 2021, https://arxiv.org/abs/2012.04221). When the fit config
  carries ``ditto_lambda`` > 0, the site trains the global model as usual (its reply)
  and, in the same round, its personal model ``v_k`` on
  ``F_k(v) + lambda / 2 * ||v - w_t||^2`` with ``w_t`` the received global model
  (``ditto_epochs``, ``ditto_lr``, ``ditto_batch_size``, ``ditto_optimizer``,
  ``ditto_weight_decay`` override the fit's values for this step). The personal model
  never leaves the site; evaluation instructions are answered with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcare.errors import ConfigError
from fedcare.task import ArrayDataset, Task
from fedcare.types import ConfigValue, FitResult, ModelState

__all__ = ["LOCAL_RECORD", "PERSONAL_RECORD", "local_keys", "merge_local", "model_for", "personal_fit", "shared_part"]

#: Key of the site's local entries (FedBN/FedPer) in its per-run memory.
LOCAL_RECORD = "personal_local_entries"
#: Key of the site's Ditto personal model in its per-run memory.
PERSONAL_RECORD = "ditto_personal_model"


def local_keys(task: Task) -> frozenset[str]:
    """Entries of ``task``'s model that stay at the site (empty when it declares none)."""
    declare = getattr(task, "local_keys", None)
    return frozenset(declare()) if callable(declare) else frozenset()


def shared_part(task: Task, model: ModelState) -> ModelState:
    """The entries of ``model`` that may leave the site."""
    keep = local_keys(task)
    return {k: v for k, v in model.items() if k not in keep} if keep else model


def merge_local(
    task: Task, received: ModelState, memory: dict[str, ModelState], rng: np.random.Generator
) -> ModelState:
    """The full model: ``received`` (shared entries) plus this site's local entries."""
    keys = local_keys(task)
    if not keys:
        return dict(received)
    local = memory.get(LOCAL_RECORD)
    if local is None:
        init = task.init_model(rng)
        local = memory[LOCAL_RECORD] = {k: init[k] for k in keys}
    return {**received, **local}


def personal_fit(
    task: Task,
    received: ModelState,
    data: ArrayDataset,
    config: Mapping[str, ConfigValue],
    rng: np.random.Generator,
    memory: dict[str, ModelState],
    **fit_kwargs: Any,
) -> FitResult:
    """Train on ``data``; keep local entries and the Ditto personal model; return the shared result.

    ``fit_kwargs`` (e.g. SCAFFOLD's ``context``) are passed to ``task.fit``.
    """
    lam = config.get("ditto_lambda", 0.0)
    if isinstance(lam, bool) or not isinstance(lam, int | float) or lam < 0:
        raise ConfigError(f"config 'ditto_lambda' must be a non-negative number, got {lam!r}")
    keys = local_keys(task)
    model = merge_local(task, received, memory, rng)
    result = task.fit(model, data, config, rng, **fit_kwargs)
    if keys:
        memory[LOCAL_RECORD] = {k: result.state[k] for k in keys}
    if lam > 0:
        memory[PERSONAL_RECORD] = _ditto_step(task, memory.get(PERSONAL_RECORD, model), model, data, config, lam, rng)
    if not keys:
        return result
    shared = {k: v for k, v in result.state.items() if k not in keys}
    return FitResult(state=shared, num_examples=result.num_examples, metrics=result.metrics, extras=result.extras)


def _ditto_step(
    task: Task,
    personal: ModelState,
    global_model: ModelState,
    data: ArrayDataset,
    config: Mapping[str, ConfigValue],
    lam: float,
    rng: np.random.Generator,
) -> ModelState:
    fit_toward = getattr(task, "fit_toward", None)
    if not callable(fit_toward):
        raise ConfigError(f"task {task.name!r} has no fit_toward(): it cannot run Ditto")
    cfg = {k: v for k, v in config.items() if k != "proximal_mu"}
    cfg["ditto_mu"] = lam
    for key in ("lr", "batch_size", "optimizer", "weight_decay"):
        if f"ditto_{key}" in config:
            cfg[key] = config[f"ditto_{key}"]
    epochs = config.get("ditto_epochs")
    if epochs is not None:
        cfg["local_epochs"] = epochs
        cfg.pop("local_steps", None)
    state: ModelState = fit_toward(personal, global_model, data, cfg, rng, mu_key="ditto_mu").state
    return state


def model_for(task: Task, received: ModelState, memory: Mapping[str, ModelState]) -> ModelState:
    """The model this site uses (evaluates, deploys): Ditto's personal model, else ``received`` + local entries."""
    personal = memory.get(PERSONAL_RECORD)
    if personal is not None:
        return dict(personal)
    local = memory.get(LOCAL_RECORD)
    if local is not None:
        return {**received, **local}
    return merge_local(task, received, {}, np.random.default_rng(0))
