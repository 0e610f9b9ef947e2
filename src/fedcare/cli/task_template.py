"""The skeleton ``fedcare tasks new NAME`` writes: a task package ready to install, test and approve."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from fedcare.errors import ConfigError

__all__ = ["write_task_package"]

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}[a-z0-9]$")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "A fedcare task package: {name}"
requires-python = ">=3.11"
dependencies = ["fedcare"]

[project.optional-dependencies]
test = ["pytest>=8"]

# fedcare finds the task through this entry point (`fedcare tasks list`).
[project.entry-points."fedcare.tasks"]
{name} = "{module}:make_task"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
# shipped files (weights, vocabularies) are part of the task hash sites approve
"*" = ["*.safetensors", "*.json"]
"""

TASK = '''\
"""{name}: a fedcare task (see docs/tasks.md in fedcare).

Everything in this package, and the fedcare code it imports, is covered by the task
hash a site approves: change a file, a shipped weight or a parameter and sites must
approve the new hash.
"""

from __future__ import annotations

import torch

from fedcare.tasks.torch_adapter import TorchTask

__all__ = ["Net", "make_task"]


class Net(torch.nn.Module):
    """A small MLP: replace it with your own network (one logit per record)."""

    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(n_features, hidden), torch.nn.ReLU())
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(-1)


def make_task(n_features: int = 13, hidden: int = 16) -> TorchTask:
    """The task fedcare builds from the study's ``[task]`` parameters."""
    return TorchTask(
        name="{name}",
        model=lambda: Net(n_features, hidden),
        loss=torch.nn.BCEWithLogitsLoss(),
        params={{"n_features": n_features, "hidden": hidden}},
    )
'''

TEST = '''\
"""The fedcare task contract, run against this package as installed."""

import numpy as np

from fedcare.task import ArrayDataset, SiteData
from fedcare.testing import check_task


def small_data(n: int = 80, n_features: int = 13) -> SiteData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    return SiteData(train=ArrayDataset(x[:60], y[:60]), test=ArrayDataset(x[60:], y[60:]))


def test_task_meets_the_fedcare_contract():
    report = check_task("{name}", data=small_data(), fit_config={{"batch_size": 8}})
    assert "strategy fedavg" in report.passed
'''

README = """\
# {name}

A fedcare task package. Install it where fedcare runs (`pip install .`), then:

    fedcare tasks list            # {name} appears with its hash, version and source
    fedcare tasks show {name}     # every file the hash covers
    pytest tests                  # the fedcare task contract (fedcare.testing)

A site approves the hash (`[policy] approved_task_hashes`) or trusts a reviewer who
signed it (`fedcare tasks sign {name} --key reviewer.key`).
"""


def write_task_package(name: str, out: Path) -> list[Path]:
    """Write the skeleton of task package ``name`` into ``out/name``; return the files written."""
    if not _NAME.match(name) or "--" in name:
        raise ConfigError(f"task name {name!r} must be lowercase letters, digits and single dashes (2-64 characters)")
    module = name.replace("-", "_")
    if keyword.iskeyword(module):
        raise ConfigError(f"task name {name!r} is a Python keyword")
    root = out / name
    if root.exists():
        raise ConfigError(f"{root} exists; refusing to overwrite it")
    files = {
        root / "pyproject.toml": PYPROJECT.format(name=name, module=module),
        root / "README.md": README.format(name=name),
        root / "src" / module / "__init__.py": TASK.format(name=name),
        root / "tests" / "test_contract.py": TEST.format(name=name),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)
