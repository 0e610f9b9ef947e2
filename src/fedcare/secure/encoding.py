"""Fixed-point encoding of model updates into the ring Z_{2^M} used by SecAgg+.

A site's update ``delta`` (its locally trained model minus the global model) is clipped
coordinate-wise to ``[-clip_range, clip_range]`` and mapped, together with the site's
integer weight ``w`` (its sample count), onto the signed integers
``round(w * delta * L / (2 clip_range))`` with ``L = 2^bits - 1``, stored in two's
complement, so that the unmasked sum is directly the fixed-point ``sum_k w_k delta_k``.
The weight itself travels as the last element of the same vector, so
the server learns only the total weight, never a site's sample count.

Overflow is prevented, not detected: the sum of ``n`` sites fits the modulus ``2^M`` iff
``n * max_site_weight * L < 2^M``; :meth:`FixedPointCodec.check_capacity` raises a
:class:`~fedcare.errors.ConfigError` naming the numbers otherwise, and a site whose
weight exceeds ``max_site_weight`` refuses to encode.

Quantisation bound: each coordinate of the decoded weighted mean is within
:attr:`FixedPointCodec.error_bound` (half a step ``2 clip_range / L``, plus float32
rounding of at most ``L 2^-24`` steps) of the weighted mean of the clipped updates.

The ring arithmetic follows Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017, section 4 (inputs in Z_R, masks uniform
in Z_R).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.errors import ConfigError
from fedcare.secure.errors import SecAggError

__all__ = ["FixedPointCodec"]

_DTYPES = {32: np.uint32, 64: np.uint64}


@dataclass(frozen=True)
class FixedPointCodec:
    """Clip, quantise and weight updates into ``uint32`` / ``uint64`` ring elements.

    Attributes
    ----------
    clip_range : float (default: 1.0)
        Coordinates of an update are clipped to ``[-clip_range, clip_range]``.
    bits : int (default: 16)
        Quantisation levels ``L = 2^bits - 1`` over the clip range.
    modulus_bits : int (default: 32)
        Ring ``Z_{2^M}``: 32 (uint32 masks, the fast default) or 64.
    """

    clip_range: float = 1.0
    bits: int = 16
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        """Validate the parameters (one-line errors naming the value)."""
        if not (self.clip_range > 0 and np.isfinite(self.clip_range)):
            raise ConfigError(f"clip_range must be a positive finite number, got {self.clip_range}")
        if self.modulus_bits not in _DTYPES:
            raise ConfigError(f"modulus_bits must be 32 or 64, got {self.modulus_bits}")
        top = min(self.modulus_bits - 1, 52)  # 52: quantised values stay exact in float64
        if not 1 <= self.bits <= top:
            raise ConfigError(f"bits must be in [1, {top}], got {self.bits}")

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        """Numpy dtype of ring elements."""
        return _DTYPES[self.modulus_bits]  # type: ignore[return-value]

    @property
    def levels(self) -> int:
        """``L = 2^bits - 1``: the largest quantised value of one coordinate."""
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        """Width of one quantisation step, ``2 * clip_range / L``."""
        return 2.0 * self.clip_range / self.levels

    def max_total_weight(self) -> int:
        """Largest total weight ``W`` whose sum ``W * L`` still fits below ``2^M``."""
        return ((1 << self.modulus_bits) - 1) // self.levels

    def check_capacity(self, num_sites: int, max_site_weight: int) -> None:
        """Raise :class:`ConfigError` if ``num_sites`` sites of weight ``max_site_weight`` could overflow."""
        if num_sites < 1 or max_site_weight < 1:
            raise ConfigError(f"num_sites and max_site_weight must be >= 1, got {num_sites}, {max_site_weight}")
        need = num_sites * max_site_weight * self.levels
        if need >= 1 << self.modulus_bits:
            raise ConfigError(
                f"secure aggregation would overflow: {num_sites} sites x weight {max_site_weight} x {self.levels} "
                f"levels = {need} >= 2^{self.modulus_bits}; lower bits, max_site_weight or raise modulus_bits to 64"
            )

    def default_site_weight(self, num_sites: int) -> int:
        """The largest per-site weight bound that cannot overflow with ``num_sites`` sites."""
        return max(1, self.max_total_weight() // max(1, num_sites))

    @staticmethod
    def _work_dtype(top: float) -> type[np.floating[Any]]:
        """float32 while every encoded value is below 2^24 (exact integers), else float64."""
        return np.float32 if top < 2.0**24 else np.float64

    @property
    def error_bound(self) -> float:
        """Largest error of one decoded coordinate of the weighted mean.

        Each site's value is off by at most half a level plus float32 rounding
        (``w * L * 2^-24`` levels), so the weighted mean is within
        ``(1/2 + L * 2^-24) * step`` of the mean of the clipped updates.
        """
        return self.step * (0.5 + max(2.0**-30, self.levels * 2.0**-24))

    @property
    def signed_dtype(self) -> type[np.signedinteger[Any]]:
        """The two's-complement view of ring elements (int32 / int64)."""
        return np.int32 if self.modulus_bits == 32 else np.int64

    def encode_into(
        self,
        out: npt.NDArray[Any],
        delta: npt.NDArray[np.floating[Any]],
        weight: int,
        max_site_weight: int,
        *,
        overwrite: bool = False,
    ) -> None:
        """Write ``round(weight * L * clip(delta) / 2c)`` (two's complement) and then ``weight`` into ``out``.

        Values are signed ring elements: the sum of the sites' values is below
        ``W * L / 2 < 2^(M-1)`` in magnitude (:meth:`check_capacity`), so it decodes exactly
        from its two's-complement form and no offset pass is needed. The weight is folded
        into the scale before rounding (each site's value is within half a level of its
        exact weighted value). Three vectorised passes: scale, clip, round-and-cast. With
        ``overwrite=True`` a ``delta`` of the working dtype is used as scratch.

        Raises
        ------
        SecAggError
            On a weight outside ``[1, max_site_weight]``, a wrong buffer, or NaN values.
        """
        if not 1 <= weight <= max_site_weight:
            raise SecAggError(
                f"site weight {weight} is outside [1, {max_site_weight}] (the overflow bound of this round)"
            )
        if out.shape != (delta.size + 1,) or out.dtype != self.dtype:
            raise SecAggError(f"encode buffer must be {self.dtype.__name__}[{delta.size + 1}]")
        top = weight * self.levels
        work = self._work_dtype(float(top))
        scale = top / (2.0 * self.clip_range)
        if overwrite and delta.dtype == work and delta.flags.writeable and delta.flags.c_contiguous:
            x = np.multiply(delta, scale, out=delta)
        else:
            x = np.multiply(delta, scale, dtype=work)
        half = float(top // 2)  # clip to [-c, c]; |value| <= floor(w L / 2) keeps the sum in range
        np.clip(x, -half, half, out=x)
        body = out[:-1].view(self.signed_dtype)
        with np.errstate(invalid="raise"):
            try:
                np.rint(x, out=body, casting="unsafe")
            except FloatingPointError:
                raise SecAggError("update contains NaN") from None
        out[-1] = weight

    def decode_sum(self, total: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float64], int]:
        """Turn the unmasked ring sum into ``(sum_k w_k * delta_k, sum_k w_k)`` in float64."""
        weight = int(total[-1])
        if weight < 1:
            raise SecAggError(f"decoded total weight is {weight}: the aggregate is corrupt")
        out = total[:-1].view(self.signed_dtype).astype(np.float64)
        out *= 2.0 * self.clip_range / self.levels
        return out, weight
