"""FedProx: FedAvg plus a proximal term at the sites.

Implementation based on Li et al., "Federated Optimization in Heterogeneous Networks",
MLSys 2020 (https://arxiv.org/abs/1812.06127). Each site minimises
``F_k(w) + mu / 2 * ||w - w_t||^2`` around the received global model ``w_t``, which
limits how far heterogeneous sites drift during local training; the server step is
FedAvg's weighted mean.

The server side only sends ``proximal_mu`` in the fit config; torch tasks apply the
term through :class:`fedcare.tasks.torch_common.LocalCorrections`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from fedcare.errors import ConfigError
from fedcare.strategies.fedavg import FedAvg
from fedcare.strategies.registry import register_strategy
from fedcare.types import ConfigValue

__all__ = ["FedProx"]


@register_strategy
class FedProx(FedAvg):
    """FedAvg whose sites add a proximal term ``mu / 2 * ||w - w_t||^2``.

    Parameters
    ----------
    mu : float (default: 0.01)
        Proximal coefficient, positive (FLamby's heart-disease value is 0.01).
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Local training config; ``proximal_mu`` is added to it.
    """

    name: ClassVar[str] = "fedprox"

    def __init__(self, *, mu: float = 0.01, fit_config: Mapping[str, ConfigValue] | None = None) -> None:
        super().__init__(fit_config=fit_config)
        if isinstance(mu, bool) or not isinstance(mu, int | float) or not mu > 0:
            raise ConfigError(f"FedProx mu must be a positive number, got {mu!r}")
        given = self.fit_config.get("proximal_mu")
        if given is not None and given != mu:
            raise ConfigError(f"fit_config['proximal_mu']={given!r} contradicts FedProx mu={mu!r}")
        self.mu = float(mu)
        self.fit_config["proximal_mu"] = self.mu
