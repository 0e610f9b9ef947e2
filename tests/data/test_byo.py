from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcare.data.byo import CsvSource, TableSpec, load_table
from fedcare.datasets.heart_disease import RECIPE, load_raw
from fedcare.errors import ConfigError, DataError
from fedcare.runconfig import load_simulate_config
from fedcare.types import SiteId


@pytest.fixture(scope="module")
def heart_frames():
    return load_raw()


def _write_sites(root: Path, frames) -> dict[SiteId, CsvSource]:
    out = {}
    for site, frame in frames.items():
        path = root / f"{site}.csv"
        frame.to_csv(path, index=False)
        out[site] = CsvSource(path=path, label=path.name, site=site)
    return out


def _spec(sources, **kw) -> TableSpec:
    base = {
        "name": "heart",
        "sources": tuple(sources),
        "target": "num",
        "positive": (1, 2, 3, 4),
        "exclude": (),
        "categorical": ("cp", "restecg"),
        "test_fraction": 0.34,
        "split_seed": 43,
    }
    base.update(kw)
    return TableSpec(**base)


def test_heart_csvs_reproduce_the_builtin_preprocessing(tmp_path, heart_frames):
    # Prepare: the shipped heart data as one CSV per site, read back through the BYO path.
    # FLamby's Switzerland keeps one negative row, in its test split, so BYO (rightly)
    # refuses it: compare the three other sites, each with its own statistics.
    three = {s: f for s, f in heart_frames.items() if s != "switzerland"}
    sources = _write_sites(tmp_path, three)
    # Execute
    dataset, recipe = load_table(_spec(sources.values()))
    # Assert: same features, categories and site-normalised inputs as the built-in loader
    from fedcare.datasets import load_builtin

    builtin = load_builtin("heart-disease")
    assert recipe.encoded_names() == RECIPE.encoded_names()
    assert {k: tuple(v) for k, v in recipe.categorical.items()} == {k: tuple(v) for k, v in RECIPE.categorical.items()}
    assert dataset.site_ids() == list(three)
    for site in three:
        for split in ("train", "test"):
            ours, theirs = getattr(dataset.local_view[site], split), getattr(builtin.local_view[site], split)
            np.testing.assert_allclose(ours.x, theirs.x, atol=1e-5)
            np.testing.assert_array_equal(ours.y, theirs.y)


def test_one_file_with_a_site_column_gives_the_same_data(tmp_path, heart_frames):
    three = {s: f for s, f in heart_frames.items() if s != "switzerland"}
    per_site, _ = load_table(_spec(_write_sites(tmp_path, three).values()))
    combined = pd.concat([f.assign(hospital=s) for s, f in three.items()])
    path = tmp_path / "all.csv"
    combined.to_csv(path, index=False)
    one_file, _ = load_table(_spec([CsvSource(path=path, label="all.csv")], site_column="hospital"))
    assert one_file.site_ids() == sorted(per_site.site_ids())
    for site in per_site.site_ids():
        np.testing.assert_array_equal(one_file.sites[site].train.x, per_site.sites[site].train.x)


def test_text_categories_missing_markers_and_imputation(tmp_path):
    # Prepare: a text category, a numeric missing marker (-9999, also as -9999.0) and an empty cell
    rows = [
        ("a", "yes", 1.0, "red"),
        ("a", "no", -9999, "blue"),
        ("a", "yes", 3.0, ""),
        ("a", "no", 4.0, "red"),
        ("b", "no", -9999.0, "green"),
        ("b", "yes", 2.0, "blue"),
        ("b", "no", 6.0, "red"),
        ("b", "yes", 5.0, "blue"),
    ]
    pd.DataFrame(rows, columns=["site", "y", "dose", "colour"]).to_csv(tmp_path / "t.csv", index=False)
    spec = TableSpec(
        name="t",
        sources=(CsvSource(tmp_path / "t.csv", "t.csv"),),
        site_column="site",
        target="y",
        positive=("yes",),
        categorical=("colour",),
        missing=("", -9999),
        test_fraction=0.25,
        split_seed=0,
    )
    # Execute
    dataset, recipe = load_table(spec)
    # Assert: categories come from training rows only, sorted, first dropped
    assert recipe.categorical["colour"][0] == "blue"
    assert dataset.feature_names[0] == "dose"
    assert all(name.startswith("colour_") for name in dataset.feature_names[1:])
    for data in dataset.sites.values():
        assert np.isfinite(data.train.x).all() and np.isfinite(data.test.x).all()
        assert set(np.unique(np.concatenate([data.train.y, data.test.y]))) == {0.0, 1.0}


def _raises(exc_type, spec, message):
    with pytest.raises(exc_type) as info:
        load_table(spec)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_missing_files_are_named_together(tmp_path, heart_frames):
    sources = list(_write_sites(tmp_path, heart_frames).values())
    gone = [CsvSource(tmp_path / "x.csv", "x.csv", SiteId("x")), CsvSource(tmp_path / "y.csv", "y.csv", SiteId("y"))]
    _raises(
        DataError,
        _spec(sources + gone),
        f"data file not found: x.csv ({tmp_path / 'x.csv'}), y.csv ({tmp_path / 'y.csv'})",
    )


def test_missing_columns_are_named_per_file(tmp_path, heart_frames):
    frames = dict(heart_frames)
    frames[SiteId("hungary")] = frames[SiteId("hungary")].drop(columns=["chol", "cp"])
    frames[SiteId("switzerland")] = frames[SiteId("switzerland")].drop(columns=["chol"])
    _raises(
        DataError,
        _spec(_write_sites(tmp_path, frames).values(), features=("age", "chol", "cp")),
        "hungary.csv: missing columns 'chol', 'cp'; switzerland.csv: missing column 'chol'",
    )


def test_non_numeric_values_name_file_line_and_column(tmp_path, heart_frames):
    frames = {s: f.copy() for s, f in heart_frames.items()}
    frames[SiteId("cleveland")]["chol"] = frames[SiteId("cleveland")]["chol"].astype(object)
    frames[SiteId("cleveland")].loc[4, "chol"] = "high"
    frames[SiteId("cleveland")].loc[9, "chol"] = "n/a"
    frames[SiteId("va-long-beach")]["num"] = frames[SiteId("va-long-beach")]["num"].astype(object)
    frames[SiteId("va-long-beach")].loc[0, "num"] = "sick"
    _raises(
        DataError,
        _spec(_write_sites(tmp_path, frames).values()),
        "cleveland.csv, line 6, column 'chol': 'high' is not a number (and 1 more row in this column); "
        "va-long-beach.csv, line 2, column 'num': 'sick' is not a number",
    )


def test_empty_site_is_named(tmp_path, heart_frames):
    frames = dict(heart_frames)
    frames[SiteId("switzerland")] = frames[SiteId("switzerland")].iloc[:0]
    _raises(
        DataError,
        _spec(_write_sites(tmp_path, frames).values()),
        "site 'switzerland' (switzerland.csv) has no data rows",
    )


def test_site_with_one_class_in_training_is_named(tmp_path, heart_frames):
    frames = dict(heart_frames)
    swiss = frames[SiteId("switzerland")]
    frames[SiteId("switzerland")] = swiss[swiss["num"] > 0]
    n_train = len(frames[SiteId("switzerland")]) - int(np.ceil(0.34 * len(frames[SiteId("switzerland")])))
    _raises(
        DataError,
        _spec(_write_sites(tmp_path, frames).values()),
        f"site 'switzerland' (switzerland.csv): the training split has one class only ({n_train} positive rows); "
        "every site needs both classes",
    )


def test_missing_target_and_missing_site_name(tmp_path):
    pd.DataFrame({"site": ["a", "", "b"], "x": [1, 2, 3], "y": [0, 1, 1]}).to_csv(tmp_path / "t.csv", index=False)
    spec = TableSpec(
        name="t",
        sources=(CsvSource(tmp_path / "t.csv", "t.csv"),),
        site_column="site",
        target="y",
        positive=(1,),
    )
    _raises(DataError, spec, "t.csv, line 3, column 'site': missing site name")
    pd.DataFrame({"x": [1, 2, 3], "y": [0, "?", 1]}).to_csv(tmp_path / "u.csv", index=False)
    spec = TableSpec(
        name="u",
        sources=(CsvSource(tmp_path / "u.csv", "u.csv", SiteId("u")),),
        target="y",
        positive=(1,),
        missing=("?",),
    )
    _raises(DataError, spec, "u.csv, line 3, column 'y': missing target value")


def _toml(tmp_path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


MINIMAL = """
[sites]
a = "a.csv"
[data]
target = "num"
positive = 1
"""


def test_config_resolves_paths_against_its_folder_and_applies_defaults(tmp_path):
    cfg = load_simulate_config(_toml(tmp_path, MINIMAL))
    assert cfg.table.sources[0].path == (tmp_path / "a.csv").resolve()
    assert cfg.table.positive == (1,) and cfg.table.test_fraction == 0.25
    assert cfg.experiment.strategy == "fedavg" and cfg.experiment.rounds == 20
    assert cfg.experiment.fit_config["lr"] == 0.05 and cfg.experiment.baseline_config["optimizer"] == "adam"
    assert cfg.table.name == "run"


def test_unknown_keys_are_reported_together_with_hints(tmp_path):
    path = _toml(
        tmp_path,
        MINIMAL + 'tagret = "x"\n[federated]\nround = 3\nfit = { lrr = 0.1 }\n[colour]\n',
    )
    with pytest.raises(ConfigError) as info:
        load_simulate_config(path)
    assert str(info.value) == (
        f"{path}: unknown keys 'colour', 'data.tagret' (did you mean 'data.target'?), "
        "'federated.round' (did you mean 'rounds'?), 'federated.fit.lrr' (did you mean 'federated.fit.lr'?)"
    )


def test_bad_values_are_reported_together(tmp_path):
    path = _toml(
        tmp_path, "rounds = 0\n" + MINIMAL.replace('target = "num"', 'test_fraction = 1.5\nnormalization = "global"')
    )
    with pytest.raises(ConfigError) as info:
        load_simulate_config(path)
    assert str(info.value) == (
        f"{path}: rounds must be an integer >= 1, got 0; data.target is required (the label column); "
        "data.test_fraction must be a number in (0, 1), got 1.5; "
        "data.normalization must be 'federated' or 'site', got 'global'"
    )


def test_unknown_strategy_and_task(tmp_path):
    path = _toml(tmp_path, MINIMAL + '[federated]\nstrategy = "fedavgg"\n')
    with pytest.raises(ConfigError, match=r"unknown strategy 'fedavgg' in federated.strategy; available: .*fedavg"):
        load_simulate_config(path)
    path = _toml(tmp_path, MINIMAL + '[task]\nname = "svm"\n')
    with pytest.raises(ConfigError, match=r"run.toml: unknown task 'svm'; built in: .*logreg"):
        load_simulate_config(path)


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_simulate_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"run.toml: invalid TOML: .*line 1"):
        load_simulate_config(_toml(tmp_path, "[sites\n"))
    both = MINIMAL + 'file = "all.csv"\nsite_column = "h"\n'
    with pytest.raises(ConfigError, match=r"give either a \[sites\] table .* not both"):
        load_simulate_config(_toml(tmp_path, both))
