"""The CLI registers every command without importing the training stack (torch, opacus, scikit-learn).

A hospital's node, ``fedcare audit verify`` and ``--help`` must not pay seconds of imports
they have no use for; each command imports what it needs when it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedcare.cli.app import PANELS
from fedcare.cli.demo import DEMO_NAMES
from fedcare.study.builtin import BUILTIN_STUDIES

SRC = Path(__file__).resolve().parents[2] / "src"
HEAVY = ("torch", "opacus", "sklearn", "matplotlib", "pandas", "grpc")


def test_registering_all_commands_imports_no_heavy_library():
    code = (
        "import json, sys\n"
        "import fedcare.cli.data, fedcare.cli.deploy, fedcare.cli.privacy, fedcare.cli.strategies\n"
        "from fedcare.cli import demo, study\n"
        "from fedcare.cli.app import app\n"
        "import typer.main\n"
        "names = [c.name for c in typer.main.get_command(app).commands.values()]\n"
        f"print(json.dumps([sorted(names), sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(SRC)}
    )
    names, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"demo", "simulate", "study", "server", "node", "doctor", "certs", "audit", "data", "stats"} <= set(names)
    assert heavy == []


def test_the_help_names_every_demo():
    assert tuple(sorted(BUILTIN_STUDIES)) == DEMO_NAMES


def test_help_shows_every_command_in_its_panel_starting_with_the_demo():
    # As `fedcare --help` prints it (a fresh interpreter: main() registers every module).
    out = subprocess.run(
        [sys.executable, "-m", "fedcare", "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    panels = [title for title in PANELS if f"─ {title} " in out]
    assert panels == list(PANELS)  # every panel, in order
    assert "─ More " not in out  # a command added without a panel would land there
    listed = [line.split()[1] for line in out.splitlines() if line.startswith("│ ") and line[2] not in " -"]
    assert listed[0] == "demo"
    assert set(listed) == {name for names in PANELS.values() for name in names}
