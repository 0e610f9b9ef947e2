"""Drive SecAggServer and SecAggSite directly (no transport): the protocol under test."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.server import SecAggResult, SecAggServer
from fedcare.secure.site import SecAggSite
from fedcare.secure.stages import Stage
from fedcare.types import SiteId


def make_round(n, size, *, degree, threshold, seed=0, codec=None, max_site_weight=1000, min_survivors=1, **kw):
    sites = [SiteId(f"s{i:02d}") for i in range(n)]
    codec = codec or FixedPointCodec()
    server = SecAggServer(
        sites=sites,
        run_id="run",
        round_no=1,
        vector_size=size,
        codec=codec,
        degree=degree,
        threshold=threshold,
        max_site_weight=max_site_weight,
        min_survivors=min_survivors,
        rng=np.random.default_rng(seed),
        **kw,
    )
    clients = {
        s: SecAggSite(s, run_id="run", round_no=1, rng=np.random.default_rng([seed, i])) for i, s in enumerate(sites)
    }
    return sites, server, clients


def run_protocol(
    server: SecAggServer,
    clients: Mapping[SiteId, SecAggSite],
    deltas: Mapping[SiteId, np.ndarray],
    weights: Mapping[SiteId, int],
    drop: Mapping[Stage, set[SiteId]] | None = None,
) -> SecAggResult:
    """Run all four stages; sites in ``drop[stage]`` never answer that stage (nor any later one)."""
    drop = drop or {}
    gone: set[SiteId] = set()
    ins = server.start()
    for stage in Stage:
        gone |= drop.get(stage, set())
        for site, i in ins.items():
            if site in gone:
                continue
            c = clients[site]
            if stage is Stage.ADVERTISE_KEYS:
                res = c.advertise_keys(i)
            elif stage is Stage.SHARE_KEYS:
                res = c.share_keys(i)
            elif stage is Stage.MASKED_INPUT:
                c.check_masked_input(i)
                res = c.masked_input(deltas[site], weights[site])
            else:
                res = c.unmask(i)
            server.receive(site, res)
        ins = server.advance()
    return server.result()
