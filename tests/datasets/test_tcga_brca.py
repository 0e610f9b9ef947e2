import numpy as np

from fedcare.datasets import load_builtin
from fedcare.datasets.tcga_brca import load_tcga_brca


def test_split_sizes_match_flamby():
    data = load_builtin("tcga-brca")
    assert data.kind == "survival"
    sizes = [(len(d.train), len(d.test)) for d in data.sites.values()]
    assert sizes == [(248, 63), (156, 40), (164, 42), (129, 33), (129, 33), (40, 11)]
    assert sum(a for a, _ in sizes) == 866 and sum(b for _, b in sizes) == 222
    assert data.n_features == 39
    # events per centre (PROVENANCE.md): train 45,35,14,16,7,2; test 14,4,8,3,2,1
    assert [int(d.train.y[:, 1].sum()) for d in data.sites.values()] == [45, 35, 14, 16, 7, 2]
    assert [int(d.test.y[:, 1].sum()) for d in data.sites.values()] == [14, 4, 8, 3, 2, 1]


def test_only_age_is_standardised_and_federated_equals_pooled():
    data = load_tcga_brca()
    x = np.concatenate([d.train.x for d in data.sites.values()])
    assert abs(x[:, 0].mean()) < 1e-5 and abs(x[:, 0].std(ddof=1) - 1) < 1e-4
    assert set(np.unique(x[:, 1:])) <= {0.0, 1.0}
    for site in data.sites:
        np.testing.assert_allclose(data.sites[site].test.x, data.pooled_view[site].test.x, atol=1e-5)
    site_view = load_tcga_brca(normalization="site")
    assert abs(site_view.sites["canada"].train.x[:, 0].mean()) < 1e-5


def test_groups_hold_the_age_band_of_each_test_row():
    data = load_tcga_brca()
    for site, d in data.sites.items():
        assert list(data.groups[site]) == ["age_band"]
        assert len(data.groups[site]["age_band"]) == len(d.test)
        assert set(data.groups[site]["age_band"]) <= {"<50", "50-64", "65+"}
    # Canada's 11 test patients (ages 44-82 in brca.csv): 3 under 50, 4 aged 50-64, 4 aged 65+
    bands = list(data.groups["canada"]["age_band"])
    assert (bands.count("<50"), bands.count("50-64"), bands.count("65+")) == (3, 4, 4)
