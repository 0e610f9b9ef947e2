"""fedcare simulate on the Ray backend: chosen by the study's [simulation] table or the command line."""

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("ray")

from fedcare.cli import study  # noqa: E402, F401  (registers the simulate command)
from fedcare.cli.app import app  # noqa: E402
from fedcare.store import SqlStore  # noqa: E402

pytestmark = pytest.mark.slow  # starts a local Ray and its actors

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "heart-study"
SITES = ("cleveland", "hungary", "switzerland", "va-long-beach")


def _study(root: Path, simulation: str) -> Path:
    shutil.copytree(EXAMPLE, root / "heart", dirs_exist_ok=True)
    path = root / "heart" / "study.toml"
    text = path.read_text().replace("rounds = 20", "rounds = 2").replace("local_epochs = 50", "local_epochs = 1")
    path.write_text(text + "\n" + simulation)
    return path


def _invoke(path: Path, out: Path, *extra: str):
    sites = [arg for s in SITES for arg in ("--site", str(path.parent / "sites" / f"{s}.toml"))]
    db = f"sqlite:///{out.parent / 'store.db'}"
    return CliRunner().invoke(app, ["simulate", "--study", str(path), *sites, "--out", str(out), "--db", db, *extra])


def test_a_study_whose_simulation_table_says_ray_runs_on_a_pool_of_actors(tmp_path):
    path = _study(tmp_path, '[simulation]\nbackend = "ray"\ncpus_per_site = 1\nmemory_per_site = "64MiB"\n')
    out = tmp_path / "out"
    result = _invoke(path, out, "--ray-actors", "2")
    assert result.exit_code == 0, result.output
    store = SqlStore(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        run = next(r for r in store.list_runs() if r.strategy == "fedavg")
        rounds = store.rounds(run.id)
        assert [r.n_succeeded for r in rounds] == [len(SITES)] * 2
        fit = store.site_metrics(run.id, "fit")
        # each site's fit metrics reached the store, though the updates were folded at the actors
        for round_no in (1, 2):
            examples = {m.site: m.value for m in fit if m.round_no == round_no and m.name == "num_examples"}
            assert set(examples) == set(SITES) and all(v > 0 for v in examples.values())
    finally:
        store.close()


@pytest.mark.parametrize(
    ("simulation", "extra", "expected"),
    [
        ("", ["--ray-actors", "2"], "simulation.ray_actors applies only to backend = 'ray'"),
        ('[simulation]\nbackend = "ray"\n', ["--ray-actors", "0"], "ray_actors must be an integer >= 1, got 0"),
        ('[simulation]\nbackend = "ray"\n', ["--ray-memory-per-site", "much"], "memory_per_site must be a positive"),
        ('[simulation]\nbackend = "rays"\n', [], "simulation.backend must be one of 'inprocess', 'ray'"),
    ],
)
def test_simulation_settings_are_refused_in_one_line_before_any_training(tmp_path, simulation, extra, expected):
    path = _study(tmp_path, simulation)
    result = _invoke(path, tmp_path / "out", *extra)
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and expected in " ".join(result.output.split()), result.output
