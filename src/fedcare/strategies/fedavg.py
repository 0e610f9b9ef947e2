"""FedAvg: the sample-weighted mean of the sites' models.

Implementation based on McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017 (https://arxiv.org/abs/1602.05629):
``w <- sum_k n_k / n * w_k``.

The aggregate is folded as replies arrive (O(model) memory, never N updates) and
accumulated in float64, so the arrival order changes nothing beyond float64 rounding,
which vanishes when the result is cast back to the model's float32.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.strategies.base import ServerState, broadcast
from fedcare.strategies.registry import register_strategy
from fedcare.types import ConfigValue, FitResult, Metrics, ModelState, Payload, RoundInfo, SiteId

__all__ = ["BATCH", "BLOCK", "FedAvg", "WeightedMeanFold"]


#: Elements per block of the blocked accumulation: a float64 block of the running sum,
#: its temporary and the buffered float32 blocks stay in a core's L2 cache.
BLOCK = 1 << 15
#: Updates buffered before they are folded in one blocked pass (bounded: O(model) memory).
BATCH = 4
#: Entries with at least this many elements are folded by several threads, each owning a
#: contiguous range of elements (numpy releases the GIL; per element nothing changes).
PARALLEL_MIN = 1 << 18

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _fold_pool() -> tuple[ThreadPoolExecutor | None, int]:
    """A small shared thread pool for large folds and its size; ``None`` on a single CPU."""
    global _pool
    workers = min(4, os.cpu_count() or 1)
    if workers < 2:
        return None, 1
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedcare-fold")
        return _pool, workers


def _fold_range(acc: np.ndarray, flats: list[tuple[np.ndarray, float]], start: int, stop: int) -> None:
    """``acc[i] += w_k * a_k[i]`` for each update k in order, block by block over [start, stop).

    The product ``w_k * a_k[i]`` is rounded once to the update's own dtype (float32 for a
    float32 model: numpy's rule for a Python-float scalar, and twice as fast as a float64
    product), then added to the float64 accumulator. A product does not depend on the
    arrival order, so the determinism argument is unchanged: only the float64 sums see
    the order, and their rounding vanishes in the cast back to float32.
    """
    tmps: dict[np.dtype, np.ndarray] = {}
    work = []
    for flat, weight in flats:
        dtype = np.result_type(flat.dtype, weight)  # float32 stays float32; integers become float64
        if dtype not in tmps:
            tmps[dtype] = np.empty(min(BLOCK, stop - start), dtype=dtype)
        work.append((flat, weight, tmps[dtype]))
    for lo in range(start, stop, BLOCK):
        hi = min(lo + BLOCK, stop)
        block = acc[lo:hi]
        for flat, weight, tmp in work:
            t = tmp[: hi - lo]
            np.multiply(flat[lo:hi], weight, out=t)
            np.add(block, t, out=block)


class WeightedMeanFold:
    """Running weighted sum ``sum_k n_k * w_k`` and ``sum_k n_k`` in float64.

    Updates are folded in arrival order into one float64 accumulator per entry, so
    the arrival order changes nothing beyond float64 rounding (which vanishes when the
    result is cast back to float32). For speed the fold buffers up to ``batch``
    updates and adds them block by block: for each block of ``BLOCK`` elements the
    accumulator block is read and written once for the whole batch, and the float64
    temporary never leaves the cache. Each element sees exactly the same sequence of
    float64 operations as a one-update-at-a-time fold, so results are bit-identical to
    it; memory stays O(model) (at most ``batch`` updates are referenced).

    Parameters
    ----------
    template : ModelState
        Names, shapes and dtypes of the entries to average.
    batch : int (default: 4)
        Updates buffered before a blocked pass; 1 folds each update at once.
    """

    def __init__(self, template: ModelState, *, batch: int = BATCH) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self._template = template
        self._batch = batch
        self._acc: dict[str, np.ndarray] = {}
        self._pending: list[tuple[ModelState, float]] = []
        self._total = 0.0
        self._count = 0
        self._metric_sums: dict[str, float] = {}

    @property
    def count(self) -> int:
        """Number of results folded so far."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights folded so far."""
        return self._total

    def add(self, site: SiteId, result: FitResult) -> None:
        """Add ``num_examples * state`` to the running sum (vectorised, in place)."""
        weight = float(result.num_examples)
        if weight <= 0:
            raise ValueError(f"site {site}: num_examples must be positive, got {weight}")
        self._pending.append((result.state, weight))
        for key, value in result.metrics.items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + weight * value
        self._total += weight
        self._count += 1
        if len(self._pending) >= self._batch:
            self._flush()

    def _flush(self) -> None:
        """Fold the buffered updates into the accumulators, block by block, in order."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        for name in pending[0][0]:
            acc = self._acc.get(name)
            if acc is None:
                self._acc[name] = acc = np.zeros(pending[0][0][name].shape, dtype=np.float64)
            flat_acc = acc.reshape(-1)
            flats = [(state[name].reshape(-1), weight) for state, weight in pending]
            size = flat_acc.size
            pool, parts = _fold_pool() if size >= PARALLEL_MIN else (None, 1)
            if pool is None:
                _fold_range(flat_acc, flats, 0, size)
                continue
            bounds = np.linspace(0, size, parts + 1).astype(int) // BLOCK * BLOCK
            bounds[-1] = size
            futures = [
                pool.submit(_fold_range, flat_acc, flats, int(lo), int(hi))
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
                if hi > lo
            ]
            for future in futures:
                future.result()

    def add_sum(
        self,
        sums: ModelState,
        total_weight: float,
        *,
        count: int,
        metrics: Metrics | None = None,
        metric_sums: Metrics | None = None,
    ) -> None:
        """Add a pre-summed aggregate ``sum_k w_k * state_k`` of ``count`` sites.

        Secure aggregation passes ``metrics`` already averaged over those sites (they
        enter with weight ``total_weight``); a fold made elsewhere (:meth:`partial`, a
        pre-folding channel) passes its ``metric_sums`` (``sum_k w_k * m_k``) as they are.
        """
        if total_weight <= 0 or count < 1:
            raise ValueError(f"add_sum needs a positive total weight and count, got {total_weight}, {count}")
        for key, value in (metric_sums or {}).items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + value
        self._flush()
        for name, ref in self._template.items():
            arr = sums.get(name)
            if arr is None or arr.shape != ref.shape:
                raise ValueError(f"add_sum: entry {name!r} is missing or has the wrong shape")
            acc = self._acc.get(name)
            if acc is None:
                self._acc[name] = np.array(arr, dtype=np.float64)
            else:
                acc += arr
        for key, value in (metrics or {}).items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + total_weight * value
        self._total += total_weight
        self._count += count

    def partial(self) -> tuple[ModelState, Metrics]:
        """The float64 running sum of each entry and the weighted metric sums, as folded so far.

        For a fold made where the sites run (a Ray actor): the driver adds it with
        :meth:`add_sum` (``total_weight``: :attr:`total_weight`, ``count``: :attr:`count`).
        The fold is spent afterwards.
        """
        self._flush()
        sums, self._acc = self._acc, {}
        return sums, dict(self._metric_sums)

    def mean(self) -> ModelState:
        """Return the weighted mean, cast back to each entry's template dtype."""
        if self._count == 0:
            raise NotEnoughSitesError("no site result to aggregate")
        self._flush()
        inv = 1.0 / self._total
        out: ModelState = {}
        for name, ref in self._template.items():
            acc = self._acc[name]
            acc *= inv
            out[name] = acc.astype(ref.dtype, copy=False) if ref.dtype != acc.dtype else acc
        self._acc.clear()
        return out

    def metrics(self) -> Metrics:
        """Example-weighted mean of the sites' training metrics."""
        if self._total == 0:
            return {}
        return {k: v / self._total for k, v in self._metric_sums.items()}


@register_strategy
class FedAvg:
    """Federated averaging weighted by the sites' training-example counts.

    Parameters
    ----------
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Config sent to every site each round (e.g. ``{"local_epochs": 1, "lr": 0.01}``).
    """

    name: ClassVar[str] = "fedavg"
    #: The aggregation is the weighted linear mean of the sites' models (a subclass's
    #: server step may act on that mean): the Coordinator may have replies pre-folded
    #: where the sites run (:class:`fedcare.protocols.PrefoldRequest`). Strategies that
    #: need each update (median, Krum, trimmed mean) set it False.
    linear_fold: ClassVar[bool] = True

    def __init__(self, *, fit_config: Mapping[str, ConfigValue] | None = None) -> None:
        self.fit_config: dict[str, ConfigValue] = dict(fit_config or {})
        for key, value in self.fit_config.items():
            if not isinstance(value, bool | int | float | str):
                raise ConfigError(f"fit_config[{key!r}] must be a scalar, got {type(value).__name__}")

    def init(self, model: ModelState) -> ServerState:
        """Start from ``model``; FedAvg has no extra state."""
        return ServerState(model=model)

    def configure_fit(
        self,
        state: ServerState,
        rnd: RoundInfo,
        sites: Sequence[SiteId],
        rng: np.random.Generator,
    ) -> Mapping[SiteId, Payload]:
        """Send the global model and the fixed fit config to every sampled site."""
        return broadcast(state, sites, self.fit_config)

    def new_fold(self, state: ServerState, rnd: RoundInfo) -> WeightedMeanFold:
        """Open a weighted-mean fold shaped like the global model."""
        return WeightedMeanFold(state.model)

    def finish_round(
        self,
        state: ServerState,
        fold: WeightedMeanFold,
    ) -> tuple[ServerState, Metrics]:
        """The new global model is the weighted mean of the folded site models."""
        metrics = fold.metrics()
        metrics["num_examples"] = fold.total_weight
        return ServerState(model=fold.mean(), extras=state.extras), metrics
