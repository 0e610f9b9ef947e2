"""The fedcare task contract, run against this package as installed, on a few chest X-rays."""

from fedcare.datasets.pneumonia import load_pneumonia
from fedcare.task import ArrayDataset, SiteData
from fedcare.testing import check_task


def small_data() -> SiteData:
    site = next(iter(load_pneumonia(max_train_per_site=40).sites.values()))
    test = ArrayDataset(site.test.x[:20], site.test.y[:20])
    return SiteData(train=site.train, test=test)


def test_task_meets_the_fedcare_contract():
    report = check_task(
        "xray-resnet",
        params={"channels": 4},
        data=small_data(),
        fit_config={"batch_size": 8},
        sites=3,
        strategies=["fedavg", "scaffold", "trimmed_mean"],
    )
    assert "SecAgg+" in report.passed
    # BatchNorm is refused under DP-SGD, naming the layer; GroupNorm trains
    assert "GroupNorm" in report.skipped["record-level DP-SGD"]
    grouped = check_task(
        "xray-resnet",
        params={"channels": 4, "norm": "group"},
        data=small_data(),
        sites=3,
        strategies=[],
        secagg=False,
        personal=False,
    )
    assert "record-level DP-SGD" in grouped.passed


def test_the_batch_balanced_loss_trains_and_is_refused_under_dp_sgd():
    report = check_task(
        "xray-resnet",
        params={"channels": 4, "norm": "group", "balanced": True},
        data=small_data(),
        fit_config={"batch_size": 8},
        sites=3,
        strategies=["fedavg"],
        secagg=False,
        personal=False,
    )
    assert "strategy fedavg" in report.passed
    assert "balanced = true" in report.skipped["record-level DP-SGD"]
