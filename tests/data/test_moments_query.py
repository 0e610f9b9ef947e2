"""The Moments QUERY over a real Channel gives the pooled statistics without pooling rows."""

import numpy as np
import pytest

from fedcare.data.moments_query import query_moments
from fedcare.data.tabular import Moments, split_indices
from fedcare.datasets.heart_disease import RECIPE, load_heart_disease, load_raw
from fedcare.errors import NotEnoughSitesError
from fedcare.runtime.exchange import Exchange
from fedcare.runtime.simulation import build_nodes
from fedcare.task import ArrayDataset, SiteData, task_hash
from fedcare.tasks import make_task
from fedcare.transport.inprocess import InProcessChannel
from fedcare.types import RunId, SiteId


def raw_sites():
    rng = np.random.default_rng(5)
    sites = {}
    for k, n in enumerate((7, 12, 30)):
        x = rng.normal(loc=k, scale=1 + k, size=(n, 3))
        x[rng.random(x.shape) < 0.2] = np.nan  # missing values stay out of the counts
        ds = ArrayDataset(x, np.zeros(n))
        sites[SiteId(f"s{k}")] = SiteData(ds, ds)
    return sites


def ask(sites, task, **kwargs):
    nodes = build_nodes(sites, task)
    channel = InProcessChannel({s: n.handle for s, n in nodes.items()}, max_workers=1)
    try:
        return query_moments(Exchange(channel=channel, timeout_s=60), run_id=RunId("q"), task_name=task.name, **kwargs)
    finally:
        channel.close()


def test_query_over_channel_equals_pooled_statistics():
    sites = raw_sites()
    task = make_task("logreg", n_features=3)
    combined, per_site, failures = ask(sites, task, task_hash=task_hash(task))
    assert not failures and set(per_site) == set(sites)
    pooled = np.concatenate([d.train.x for d in sites.values()])
    stats = combined.standardizer()
    np.testing.assert_allclose(stats.mean, np.nanmean(pooled, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, np.nanstd(pooled, axis=0, ddof=1), rtol=1e-10)
    np.testing.assert_array_equal(combined.count, (~np.isnan(pooled)).sum(axis=0))
    own = per_site[SiteId("s1")].standardizer()  # per-site statistics stay available
    np.testing.assert_allclose(own.mean, np.nanmean(sites[SiteId("s1")].train.x, axis=0))


def test_heart_federated_view_uses_exactly_the_exchanged_statistics():
    frames = load_raw()
    raw = {}
    for site, df in frames.items():
        y = (df["num"].to_numpy() > 0).astype(np.float32)
        train_idx, _ = split_indices(y, test_fraction=RECIPE.test_fraction, seed=RECIPE.seed)
        x = RECIPE.encode(df)[train_idx]
        raw[site] = SiteData(ArrayDataset(x, y[train_idx]), ArrayDataset(x, y[train_idx]))
    task = make_task("logreg", n_features=13)
    combined, _, _ = ask(raw, task, task_hash=task_hash(task))
    stats = combined.standardizer()
    data = load_heart_disease()
    for site, d in raw.items():
        np.testing.assert_allclose(stats.transform(d.train.x), data.sites[site].train.x, atol=1e-5)


def test_refusals_are_reported_and_too_few_answers_raise():
    sites = raw_sites()
    task = make_task("logreg", n_features=3)
    with pytest.raises(NotEnoughSitesError, match="0 valid answer"):
        ask(sites, task, task_hash="0" * 64)
    combined, per_site, failures = ask(sites, task, task_hash=task_hash(task), min_sites=3)
    assert isinstance(combined, Moments) and len(per_site) == 3 and failures == {}


def test_unknown_query_is_an_error_reply_naming_what_the_site_answers():
    from fedcare.types import Message, MessageKind, Payload

    sites = raw_sites()
    task = make_task("logreg", n_features=3)
    node = build_nodes(sites, task)[SiteId("s0")]
    message = Message(MessageKind.QUERY, RunId("q"), 0, SiteId("s0"), Payload(config={"query": "cohort-size"}))
    reply = node.handle(message)
    assert reply.has_error and "unknown query 'cohort-size'" in reply.error and "moments" in reply.error
