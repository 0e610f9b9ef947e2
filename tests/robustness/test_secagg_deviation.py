"""A coordinator that deviates from SecAgg+ (drops or duplicates shares, lies about survivors):
the sites detect it, or it learns nothing beyond the sum."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from tests.secure.harness import make_round

from fedcare.secure.errors import SecAggError
from fedcare.secure.shamir import combine_secret
from fedcare.secure.stages import MaskedInputIns, UnmaskIns


def _through_stage3(n=6, threshold=3, seed=11):
    """An honest round up to the unmask stage (complete graph: each site has n - 1 neighbours)."""
    sites, server, clients = make_round(n, 8, degree=n - 1, threshold=threshold, seed=seed)
    for stage in ("advertise_keys", "share_keys"):
        ins = server.start() if stage == "advertise_keys" else server.advance()
        for s, i in ins.items():
            server.receive(s, getattr(clients[s], stage)(i))
    ins = server.advance()
    rng = np.random.default_rng(seed)
    for s, i in ins.items():
        clients[s].check_masked_input(i)
        server.receive(s, clients[s].masked_input(rng.normal(size=8) * 0.1, 1))
    return sites, server, clients, ins, server.advance()


def test_lying_about_survivors_never_yields_both_secrets_of_a_site():
    # A victim whose masked input arrived. The coordinator tells some of its neighbours "it
    # survived" (they reveal shares of its self-mask b) and the others "it dropped" (shares
    # of its mask key): with both secrets it could strip every mask off the victim's input.
    n, t = 6, 3
    for told_dropped in range(n):
        sites, server, clients, _, unmask = _through_stage3(n=n, threshold=t)
        victim, neighbours = sites[0], sites[1:]
        b_shares, sk_shares = [], []
        for j, site in enumerate(neighbours):
            honest = unmask[site]
            if j < told_dropped:
                lie = replace(
                    honest,
                    survivors=tuple(s for s in honest.survivors if s != victim),
                    dropped=(*honest.dropped, victim),
                )
            else:
                lie = honest
            res = clients[site].unmask(lie)
            index = j + 1  # any distinct indices: the point is how many shares exist
            if victim in res.b_shares:
                b_shares.append((index, res.b_shares[victim]))
            if victim in res.sk_shares:
                sk_shares.append((index, res.sk_shares[victim]))
        # each neighbour revealed one kind only, and t > k/2: never t of both
        assert len(b_shares) + len(sk_shares) == n - 1
        assert min(len(b_shares), len(sk_shares)) < t
        short = b_shares if len(b_shares) < t else sk_shares
        with pytest.raises(SecAggError, match="needed"):
            combine_secret(short, t)


def test_sites_refuse_a_threshold_that_would_let_such_a_lie_succeed():
    # t <= k/2: a coordinator could split the neighbours and collect t shares of each kind
    sites, server, clients = make_round(6, 8, degree=5, threshold=2, seed=12)
    for site, ins in server.start().items():
        with pytest.raises(SecAggError, match="lying about survivors"):
            clients[site].advertise_keys(ins)


def test_dropped_shares_are_detected_before_the_site_trains():
    sites, server, clients = make_round(4, 8, degree=3, threshold=3, seed=13)
    ins = server.start()
    for s, i in ins.items():
        server.receive(s, clients[s].advertise_keys(i))
    ins = server.advance()
    for s, i in ins.items():
        server.receive(s, clients[s].share_keys(i))
    ins = server.advance()
    a = sites[0]
    kept = dict(itertools.islice(ins[a].ciphertexts.items(), 1))  # the coordinator withholds the rest
    with pytest.raises(SecAggError, match="hold its shares"):
        clients[a].check_masked_input(replace(ins[a], ciphertexts=kept))
    assert clients[a].next_stage is None  # the site takes no further part: no masked input leaves


def test_a_duplicated_share_is_detected():
    sites, server, clients = make_round(4, 8, degree=3, threshold=2, seed=14)
    ins = server.start()
    for s, i in ins.items():
        server.receive(s, clients[s].advertise_keys(i))
    ins = server.advance()
    for s, i in ins.items():
        server.receive(s, clients[s].share_keys(i))
    ins = server.advance()
    a = sites[0]
    (s1, c1), (s2, _), *rest = ins[a].ciphertexts.items()
    duplicated = MaskedInputIns(
        session=ins[a].session, ciphertexts={s1: c1, s2: c1, **dict(rest)}, num_peers=ins[a].num_peers
    )
    with pytest.raises(SecAggError, match="failed authentication"):
        clients[a].check_masked_input(duplicated)


def test_an_inconsistent_survivor_list_is_refused():
    sites, server, clients, _, unmask = _through_stage3(n=5, threshold=3, seed=15)
    a, b = sites[0], sites[1]
    both = replace(unmask[a], dropped=(*unmask[a].dropped, b))  # b listed as survived AND dropped
    with pytest.raises(SecAggError, match="both survived and dropped"):
        clients[a].unmask(both)
    assert isinstance(unmask[a], UnmaskIns)
