"""Published reference numbers to print beside ours (from shared reference_results.md).

FLamby (Ogier du Terrail et al., NeurIPS 2022 Datasets & Benchmarks), computed from the
per-seed CSVs in owkin/FLamby ``flamby/results`` (seeds 42-46): ``site_mean`` is the
figure value (mean over the client test sets and seeds), ``pooled_test`` the mean over
seeds of the pooled test set.
"""

from __future__ import annotations

__all__ = ["FLAMBY", "METRIC"]

#: The metric each data set's reference numbers are in.
METRIC: dict[str, str] = {"heart-disease": "accuracy", "tcga-brca": "c_index"}

#: dataset -> method -> {"site_mean", "pooled_test"}; accuracy (heart) or C-index (TCGA).
FLAMBY: dict[str, dict[str, dict[str, float]]] = {
    "heart-disease": {
        "pooled": {"site_mean": 0.7353, "pooled_test": 0.7953},
        "local (mean of 4)": {
            "site_mean": (0.7221 + 0.6287 + 0.5670 + 0.6366) / 4,
            "pooled_test": (0.7843 + 0.7268 + 0.4827 + 0.6110) / 4,
        },
        "fedavg": {"site_mean": 0.6850, "pooled_test": 0.7480},
        "fedprox": {"site_mean": 0.6850, "pooled_test": 0.7480},
        "scaffold": {"site_mean": 0.6840, "pooled_test": 0.7480},
        "cyclic": {"site_mean": 0.7180, "pooled_test": 0.7850},
        "fedadam": {"site_mean": 0.7255, "pooled_test": 0.7787},
        "fedyogi": {"site_mean": 0.7314, "pooled_test": 0.7787},
        "fedadagrad": {"site_mean": 0.7314, "pooled_test": 0.7787},
    },
    "tcga-brca": {
        "pooled": {"site_mean": 0.6759, "pooled_test": 0.7041},
        "local (mean of 6)": {
            "site_mean": (0.7282 + 0.7496 + 0.4977 + 0.6562 + 0.7121 + 0.6913) / 6,
            "pooled_test": (0.6948 + 0.7275 + 0.6043 + 0.5650 + 0.7251 + 0.7103) / 6,
        },
        "fedavg": {"site_mean": 0.7319, "pooled_test": 0.7353},
        "fedprox": {"site_mean": 0.7290, "pooled_test": 0.7167},
        "scaffold": {"site_mean": 0.6869, "pooled_test": 0.6995},
        "cyclic": {"site_mean": 0.6582, "pooled_test": 0.6607},
        "fedadam": {"site_mean": 0.8152, "pooled_test": 0.8421},
        "fedyogi": {"site_mean": 0.8152, "pooled_test": 0.8421},
        "fedadagrad": {"site_mean": 0.8129, "pooled_test": 0.8338},
    },
}
