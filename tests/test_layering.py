"""The import graph of src/fedcare follows the declared layers and has no cycles between packages."""

from pathlib import Path

import pytest

from fedcare._layers import LAYER_NAMES, LAYERS, import_edges, layer_of, package_cycles, report, violations

SRC = Path(__file__).resolve().parent.parent / "src"


def test_imports_follow_the_layers_and_form_no_cycles():
    problems, _ = report(SRC)
    assert problems == [], "\n".join(["run `python scripts/import_graph.py` to list them:", *problems])


def test_layers_are_ordered_core_first():
    assert LAYER_NAMES == ("core", "runtime", "adapters", "assembly", "apps")


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("fedcare.types", "core"),
        ("fedcare.protocols", "core"),
        ("fedcare.secure.workflow", "core"),
        ("fedcare.runtime.coordinator", "runtime"),
        ("fedcare.runtime.simulation", "assembly"),  # the longer entry wins over fedcare.runtime
        ("fedcare.transport.grpc_server", "adapters"),
        ("fedcare.store.brand_new_module", "adapters"),  # new files in a known package are placed
        ("fedcare.cli.app", "apps"),
        ("fedcare", "apps"),
        ("fedcare.unheard_of", None),  # a new top-level module must be declared
        ("fedcareless", None),
    ],
)
def test_modules_are_placed_by_their_longest_declared_prefix(module, layer):
    assert layer_of(module) == layer


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "fedcare" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checker_finds_upward_edges_cycles_and_undeclared_modules(tmp_path):
    src = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "types.py": "def f():\n    from fedcare.runtime.node import X  # function-level counts too\n",
            "runtime/__init__.py": "",
            "runtime/node.py": "from ..transport import grpc_node\nX = 1\n",
            "transport/__init__.py": "",
            "transport/grpc_node.py": "import fedcare.runtime.node\n",
            "newthing.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fedcare.types import f\n",
            "serde.py": "def g():\n    import grpc\n",
        },
    )
    edges = import_edges(src)
    assert {(e.source, e.target) for e in edges} == {
        ("fedcare.types", "fedcare.runtime.node"),
        ("fedcare.runtime.node", "fedcare.transport.grpc_node"),  # relative import resolved
        ("fedcare.transport.grpc_node", "fedcare.runtime.node"),
        ("fedcare.newthing", "fedcare.types"),
    }
    assert [(e.source, e.target, e.line) for e in violations(edges)] == [
        ("fedcare.runtime.node", "fedcare.transport.grpc_node", 1),
        ("fedcare.types", "fedcare.runtime.node", 2),
    ]
    assert package_cycles(edges) == [["fedcare.runtime", "fedcare.transport"]]
    problems, _ = report(src)
    assert any(p.startswith("undeclared module fedcare.newthing: add it") and "_layers.py" in p for p in problems)
    assert sum(p.startswith("layer violation") for p in problems) == 2
    assert sum(p.startswith("import cycle between fedcare.runtime <-> fedcare.transport") for p in problems) == 1
    assert "core module fedcare.serde imports grpc at line 2: I/O belongs to the adapters" in problems


def test_the_coordinator_types_its_channel_as_the_core_protocol():
    import inspect

    from fedcare.protocols import Channel
    from fedcare.runtime.coordinator import Coordinator

    hints = inspect.get_annotations(Coordinator.__init__, eval_str=True)
    assert hints["channel"] is Channel


def test_mypy_checks_exactly_the_core_layer():
    import tomllib

    config = tomllib.loads((SRC.parent / "pyproject.toml").read_text(encoding="utf-8"))
    checked = set(config["tool"]["mypy"]["files"]) - {"tests/typing"}  # adapters vs the core's protocols
    core = dict(LAYERS)["core"]
    expected = set()
    for entry in core:
        rel = Path("src", *entry.split("."))
        for candidate in (rel.with_suffix(".py"), rel):
            if (SRC.parent / candidate).exists():
                expected.add(candidate.as_posix())
    assert checked == expected, (
        "keep [tool.mypy] files in pyproject.toml in step with the core in src/fedcare/_layers.py"
    )


def test_an_entry_declared_twice_is_reported(monkeypatch):
    import fedcare._layers as layers

    monkeypatch.setattr(layers, "LAYERS", (("core", ("fedcare.types",)), ("apps", ("fedcare.cli", "fedcare.types"))))
    assert layers.duplicates() == ["fedcare.types"]
