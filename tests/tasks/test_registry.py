import numpy as np
import pytest

from fedcare.errors import ConfigError
from fedcare.task import ArrayDataset, Task
from fedcare.tasks import BUILTIN_TASKS, CnnTask, make_task, task_entries


def test_builtins_are_registered_with_their_source():
    entries = task_entries()
    for name in BUILTIN_TASKS:
        assert entries[name].distribution == "fedcare"
        assert entries[name].source == "built-in"
    assert isinstance(make_task("cnn", channels=4), CnnTask)


def test_unknown_task_names_the_installed_ones():
    with pytest.raises(ConfigError, match=r"unknown task 'svm'; installed: .*logreg.*fedcare\.tasks"):
        make_task("svm")


def test_bad_parameters_name_the_task():
    with pytest.raises(ConfigError, match=r"task 'cnn': bad parameters \['wings'\]"):
        make_task("cnn", wings=2)


def test_installed_package_is_discovered_through_its_entry_point(demo_dist):
    entry = task_entries()["demo-task"]
    assert (entry.distribution, entry.version, entry.source) == ("demo-task", "1.0", "package demo-task 1.0")
    task = make_task("demo-task", size=3)
    assert isinstance(task, Task) and type(task).__module__ == "demo_task"
    data = ArrayDataset(np.ones((2, 1), np.float32), np.zeros(2))
    out = task.fit(task.init_model(np.random.default_rng(0)), data, {"lr": 0.25}, np.random.default_rng(0))
    np.testing.assert_allclose(out.state["w"], 0.25)


@pytest.fixture
def second_dist(tmp_path, monkeypatch):
    other = tmp_path / "other"
    info = other / "other_task-2.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: other-task\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[fedcare.tasks]\ndemo-task = demo_task:DemoTask\n")
    monkeypatch.syspath_prepend(str(other))
    return other


def test_a_name_registered_twice_is_refused(demo_dist, second_dist):
    with pytest.raises(
        ConfigError, match=r"task 'demo-task' is registered by several packages \(.*demo-task.*other-task"
    ):
        make_task("demo-task")


def test_a_factory_returning_another_name_is_refused(demo_dist):
    demo_dist.set_version("1.0", entry_points="renamed = demo_task:DemoTask")
    with pytest.raises(ConfigError, match=r"task 'renamed': its factory returned a task named 'demo-task'"):
        make_task("renamed")


def test_a_package_that_fails_to_import_says_so(demo_dist):
    (demo_dist.package / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    with pytest.raises(
        ConfigError, match=r"task 'demo-task' \(package demo-task 1.0\): cannot load .*broken on purpose"
    ):
        make_task("demo-task")
