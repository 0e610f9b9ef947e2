import numpy as np

from fedcare.data.tabular import Moments
from fedcare.datasets.heart_disease import load_heart_disease, load_raw


def test_rows_and_split_match_flamby():
    # FLamby README: 740 rows after filtering; train/test 199/104, 172/89, 30/16, 85/45
    raw = load_raw()
    assert [len(df) for df in raw.values()] == [303, 261, 46, 130]
    data = load_heart_disease()
    assert [(len(d.train), len(d.test)) for d in data.sites.values()] == [(199, 104), (172, 89), (30, 16), (85, 45)]
    assert data.n_features == 13


def test_local_view_is_standardised_with_each_sites_training_rows_only():
    data = load_heart_disease()
    for d in data.local_view.values():
        mean = d.train.x.mean(axis=0)
        np.testing.assert_allclose(mean, 0, atol=1e-5)
        # test rows are transformed with training statistics, so their mean is not forced to 0
        assert np.abs(d.test.x.mean(axis=0)).max() > 1e-3


def test_federated_statistics_equal_the_pooled_computation():
    data = load_heart_disease()
    for site in data.sites:
        np.testing.assert_allclose(data.sites[site].train.x, data.pooled_view[site].train.x, atol=1e-5)
        np.testing.assert_allclose(data.sites[site].test.x, data.pooled_view[site].test.x, atol=1e-5)


def test_moments_ignore_missing_values():
    x = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, 4.0]])
    stats = (Moments.of(x[:1]) + Moments.of(x[1:])).standardizer()
    np.testing.assert_allclose(stats.mean, [3.0, 3.0])
    np.testing.assert_allclose(stats.std, [2.0, np.sqrt(2.0)])


def test_site_normalization_reproduces_flamby_per_centre_setting():
    data = load_heart_disease(normalization="site")
    for site in data.sites:
        np.testing.assert_array_equal(data.sites[site].train.x, data.local_view[site].train.x)
