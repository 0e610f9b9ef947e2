"""Federated cohort statistics: equal to the pooled computation, small cells held back at the sites, DP noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from datahelpers import HEART_SCHEMA, write_heart_csvs
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.data.cohort import STATS_QUERY, StatsQuery, collect_cohort_stats
from fedcare.data.config import load_site_config
from fedcare.data.connect import load_site
from fedcare.data.stats import SiteAggregates, StatsSpec, site_aggregates, suppress_small_cells
from fedcare.errors import ConfigError, SerdeError
from fedcare.runtime.exchange import Exchange
from fedcare.runtime.node import SiteNode
from fedcare.runtime.queries import SiteQueries
from fedcare.serde import decode_state, encode_state
from fedcare.task import ArrayDataset, SiteData
from fedcare.transport.inprocess import InProcessChannel
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

NUMERIC = ["age", "trestbps", "chol", "thalach", "oldpeak"]


@pytest.fixture(scope="module")
def heart(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heart")
    paths = write_heart_csvs(folder)
    sites = {}
    for site in ("cleveland", "hungary", "switzerland", "va-long-beach"):
        toml = folder / f"{site}.toml"
        toml.write_text(f'[site]\nid = "{site}"\n[source]\nkind = "csv"\npath = "{site}.csv"\n{HEART_SCHEMA}')
        sites[SiteId(site)] = load_site(load_site_config(toml))
    pooled = pd.read_csv(paths["pooled"], na_values="?")  # the reference, read independently
    return sites, pooled


def run_query(sites, spec, *, rngs=None):
    schema = next(iter(sites.values())).config.schema
    handlers = {
        s: SiteQueries(
            site_id=s,
            queries=[StatsQuery(site_id=s, frame=v.frame, schema=schema, spec=spec, rng=(rngs or {}).get(s))],
        ).handle
        for s, v in sites.items()
    }
    channel = InProcessChannel(handlers, max_workers=2)
    try:
        return collect_cohort_stats(Exchange(channel=channel, timeout_s=30), schema, spec, run_id=RunId("t"))
    finally:
        channel.close()


def test_combined_stats_equal_the_pooled_computation(heart):
    sites, pooled = heart
    spec = StatsSpec(min_count=1)  # no cell is below 1: nothing is suppressed
    result = run_query(sites, spec)
    stats = result.stats
    assert result.failures == {} and stats.n == len(pooled) == 920
    for col in NUMERIC:
        count, mean, std = stats.mean_std(col)
        assert count == pooled[col].notna().sum()
        assert mean == pytest.approx(pooled[col].mean(), rel=1e-12)
        assert std == pytest.approx(pooled[col].std(ddof=1), rel=1e-9)
        edges = spec.edges(next(iter(sites.values())).config.schema, col)
        hist, _ = np.histogram(pooled[col].dropna(), bins=np.asarray(edges))
        np.testing.assert_array_equal(stats.cells[col], [*hist, pooled[col].isna().sum()])
    balance = pooled["num"].value_counts().reindex([0, 1, 2, 3, 4]).to_numpy()
    np.testing.assert_array_equal(stats.cells["num"], [*balance, 0])
    assert stats.cells["fbs"].tolist() == [(pooled.fbs == 0).sum(), (pooled.fbs == 1).sum(), pooled.fbs.isna().sum()]
    # per site too
    for site in sites:
        one = pooled[pooled.hospital == site]
        assert stats.sites[site].n == len(one)
        assert stats.mean_std("chol", site)[1] == pytest.approx(one["chol"].mean(), rel=1e-12)


def test_small_cells_are_suppressed_at_the_site_and_cannot_be_recovered(heart):
    sites, pooled = heart
    k = 5
    stats = run_query(sites, StatsSpec(min_count=k)).stats
    layout = stats.layout
    reference = run_query(sites, StatsSpec(min_count=1)).stats  # the true counts, for checking only
    some_held = False
    for site, release in stats.sites.items():
        for col, agg in release.columns.items():
            true = reference.sites[site].columns[col].cells
            released = agg.cells[~agg.suppressed]
            assert not ((released > 0) & (released < k)).any(), (site, col)  # primary rule
            np.testing.assert_array_equal(agg.cells[agg.suppressed], 0)  # nothing of a held cell leaves
            np.testing.assert_array_equal(released, true[~agg.suppressed])
            if agg.suppressed.any():
                some_held = True
                # differencing the released total: what is left is >= k and spread over >= 2 cells
                left = release.n - released.sum()
                assert left >= k and agg.suppressed.sum() >= 2, (site, col, true, agg.suppressed)
            if agg.moments is not None:
                assert agg.moments.count.item() >= k and not agg.suppressed[-1]
    assert some_held, "the real data must exercise suppression"
    # combined = sum of released cells only; flagged where a site held back; exact elsewhere
    for col in layout:
        held = stats.held_back[col] > 0
        expected = sum(r.columns[col].cells for r in stats.sites.values())
        np.testing.assert_array_equal(stats.cells[col], expected)
        np.testing.assert_array_equal(stats.cells[col][~held], reference.cells[col][~held])
        assert (stats.cells[col][held] <= reference.cells[col][held]).all()
    # switzerland's cholesterol is 0 ("missing") for most patients: the out-of-range-low bin is real data
    assert stats.to_dict()["sites"]["switzerland"]["n"] == 123


def test_a_site_below_the_threshold_releases_nothing(heart):
    sites, _ = heart
    small = next(iter(sites.values())).frame.head(4)
    release = site_aggregates(small, next(iter(sites.values())).config.schema, StatsSpec(min_count=5))
    assert release.n is None and release.columns == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(1, 10))
def test_suppression_rule_leaves_no_small_or_recoverable_cell(counts, k):
    c = np.array(counts, dtype=float)
    sup = suppress_small_cells(c, k)
    assert not ((c > 0) & (c < k) & ~sup).any()
    assert not (sup & (c == 0)).any()
    if sup.any() and (~sup & (c > 0)).any():
        assert sup.sum() >= 2 and c[sup].sum() >= k


def test_dp_noise_is_seeded_scaled_and_suppression_runs_after_it(heart):
    sites, _ = heart
    site = sites[SiteId("cleveland")]
    schema = site.config.schema
    spec = StatsSpec(min_count=5, privacy=ConfigSpec.laplace(1.0))
    a = site_aggregates(site.frame, schema, spec, rng=np.random.default_rng(7))
    b = site_aggregates(site.frame, schema, spec, rng=np.random.default_rng(7))
    c = site_aggregates(site.frame, schema, spec, rng=np.random.default_rng(8))
    assert a.to_arrays().keys() == b.to_arrays().keys()
    assert all(np.array_equal(v, b.to_arrays()[k]) for k, v in a.to_arrays().items())
    assert any(not np.array_equal(v, c.to_arrays().get(k)) for k, v in a.to_arrays().items())
    exact = site_aggregates(site.frame, schema, StatsSpec(min_count=5))
    # Laplace scale = components / epsilon: mean |error| of the released age histogram over many releases
    components = 1 + len(spec.layout(schema)) + 3 * 5
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(150):
        noisy = site_aggregates(site.frame, schema, spec, rng=rng)
        ok = ~noisy.columns["age"].suppressed & ~exact.columns["age"].suppressed & (exact.columns["age"].cells > 50)
        errors.extend(np.abs(noisy.columns["age"].cells - exact.columns["age"].cells)[ok])
        released = noisy.columns["age"].cells[~noisy.columns["age"].suppressed]
        assert not ((released > 0) & (released < 5)).any()
    assert np.mean(errors) == pytest.approx(components / 1.0, rel=0.15)
    huge = site_aggregates(site.frame, schema, StatsSpec(min_count=5, privacy=ConfigSpec.laplace(1e9)), rng=rng)
    np.testing.assert_array_equal(huge.columns["cp"].cells, exact.columns["cp"].cells)
    assert huge.columns["age"].moments.total.item() == pytest.approx(
        exact.columns["age"].moments.total.item(), abs=1e-3
    )


def test_gaussian_needs_per_component_epsilon_below_one(heart):
    sites, _ = heart
    site = sites[SiteId("cleveland")]
    spec = StatsSpec.from_mapping({"privacy": {"mechanism": "gaussian", "epsilon": 100.0}}, site.config.schema)
    with pytest.raises(ConfigError, match="Gaussian mechanism needs epsilon per component < 1"):
        site_aggregates(site.frame, site.config.schema, spec, rng=np.random.default_rng(0))
    ok = StatsSpec.from_mapping(
        {"privacy": {"mechanism": "gaussian", "epsilon": 2.0, "delta": 1e-5}}, site.config.schema
    )
    assert (
        site_aggregates(site.frame, site.config.schema, ok, rng=np.random.default_rng(0)).noise == "gaussian epsilon=2"
    )


class ConfigSpec:
    @staticmethod
    def laplace(eps):
        from fedcare.data.stats import Mechanism, PrivacySpec

        return PrivacySpec(Mechanism.LAPLACE, eps)


def test_release_survives_safetensors_and_tampering_is_refused(heart):
    sites, _ = heart
    site = sites[SiteId("hungary")]
    schema, spec = site.config.schema, StatsSpec()
    release = site_aggregates(site.frame, schema, spec)
    wire = decode_state(encode_state(release.to_arrays()))
    back = SiteAggregates.from_arrays(wire, spec.layout(schema), where="stats from hungary")
    assert back.n == release.n
    for col, agg in release.columns.items():
        np.testing.assert_array_equal(back.columns[col].cells, agg.cells)
        np.testing.assert_array_equal(back.columns[col].suppressed, agg.suppressed)
    bad = dict(wire)
    bad["age.cells"] = -bad["age.cells"] - 1
    with pytest.raises(SerdeError, match="'age' has negative counts"):
        SiteAggregates.from_arrays(bad, spec.layout(schema), where="x")
    bad = dict(wire)
    bad["cp.cells"] = bad["cp.cells"][:2]
    with pytest.raises(SerdeError, match=r"'cp.cells' has float64\(2,\), expected f\(5,\)"):
        SiteAggregates.from_arrays(bad, spec.layout(schema), where="x")


def test_site_node_answers_query_with_its_own_rules(heart, shift_task):
    sites, _ = heart
    site = sites[SiteId("va-long-beach")]
    schema = site.config.schema
    responder = StatsQuery(site_id=SiteId("va"), frame=site.frame, schema=schema, spec=StatsSpec(min_count=10))
    ds = ArrayDataset(np.zeros((2, 1), np.float32), np.zeros(2))
    node = SiteNode(site_id=SiteId("va"), task=shift_task, data=SiteData(ds, ds), queries=[responder])
    ask = StatsSpec(min_count=10).digest(schema)
    query = Message(
        MessageKind.QUERY, RunId("r"), 0, SiteId("va"), Payload(config={"query": STATS_QUERY, "spec_hash": ask})
    )
    reply = node.handle(query)
    assert reply.error is None and reply.payload.arrays["stats"]["n"][0] == 200
    weaker = StatsSpec(min_count=2).digest(schema)  # a coordinator asking for a lower threshold is refused
    reply = node.handle(
        Message(
            MessageKind.QUERY, RunId("r"), 0, SiteId("va"), Payload(config={"query": STATS_QUERY, "spec_hash": weaker})
        )
    )
    assert reply.error.startswith("refused: statistics spec") and not reply.payload.arrays
    # fit instructions still pass the task policy
    fit = node.handle(Message(MessageKind.FIT, RunId("r"), 1, SiteId("va"), Payload(config={})))
    assert fit.error == "refused: the instruction names no task hash"
