"""A task package installed into a temporary folder on sys.path (real metadata, real entry points)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

DEMO_TASK = '''
"""A tiny installed task: w <- w + lr * mean(x) (uses fedcare's shared config readers)."""

from pathlib import Path

import numpy as np

from fedcare.tasks.torch_common import read_float
from fedcare.types import EvalResult, FitResult

WEIGHTS = Path(__file__).with_name("weights.bin")


class DemoTask:
    name = "demo-task"

    def __init__(self, size: int = 4) -> None:
        self.size = size

    def params(self):
        return {"size": self.size}

    def init_model(self, rng):
        base = np.frombuffer(WEIGHTS.read_bytes()[: 4 * self.size].ljust(4 * self.size, b"\\0"), dtype=np.float32)
        return {"w": base.copy()}

    def fit(self, model, data, config, rng):
        lr = read_float(config, "lr", 0.5)
        w = model["w"] + np.float32(lr * float(np.mean(data.x)))
        return FitResult(state={"w": w}, num_examples=len(data), metrics={"train_loss": 0.0})

    def evaluate(self, model, data):
        return EvalResult(loss=float(np.abs(model["w"]).mean()), num_examples=len(data), metrics={"accuracy": 0.5})

    def predict(self, model, x):
        return np.full(len(x), 0.5)
'''


class FakeDist:
    """An installed distribution ``demo-task`` (package ``demo_task``) in a site folder."""

    def __init__(self, root: Path, version: str = "1.0") -> None:
        self.root = root
        self.package = root / "demo_task"
        self.package.mkdir(parents=True)
        (self.package / "__init__.py").write_text(textwrap.dedent(DEMO_TASK))
        (self.package / "weights.bin").write_bytes(b"\x00" * 16)
        self.set_version(version)

    def set_version(self, version: str, entry_points: str = "demo-task = demo_task:DemoTask") -> None:
        for old in self.root.glob("demo_task-*.dist-info"):
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        info = self.root / f"demo_task-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: demo-task\nVersion: {version}\n")
        (info / "top_level.txt").write_text("demo_task\n")
        (info / "entry_points.txt").write_text(f"[fedcare.tasks]\n{entry_points}\n")


def _forget_demo_modules() -> None:
    for name in [m for m in sys.modules if m == "demo_task" or m.startswith("demo_task.")]:
        del sys.modules[name]


@pytest.fixture
def demo_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDist]:
    """The ``demo-task`` package installed (metadata + entry point) in a folder on sys.path."""
    dist = FakeDist(tmp_path / "site")
    monkeypatch.syspath_prepend(str(dist.root))
    _forget_demo_modules()
    yield dist
    _forget_demo_modules()


@pytest.fixture
def reload_demo() -> Callable[[], None]:
    """Forget the imported ``demo_task`` so the next ``make_task`` imports the files as they are now."""
    return _forget_demo_modules


def install_package(root: Path, *, dist: str, module: str, source: str, entry: str) -> Path:
    """Install ``module`` (one package, ``__init__.py`` = ``source``) as ``dist`` with one task entry point."""
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "top_level.txt").write_text(f"{module}\n")
    (info / "entry_points.txt").write_text(f"[fedcare.tasks]\n{entry}\n")
    return pkg


@pytest.fixture
def installer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """Install small task packages into a folder on sys.path; forgotten again after the test."""
    root = tmp_path / "pkgs"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    names: list[str] = []

    def install(**kw: str) -> Path:
        names.append(kw["module"])
        return install_package(root, **kw)

    yield install
    for name in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[name]
