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


def test_each_command_is_registered_by_the_module_the_table_names():
    # main() imports only the named command's module: a wrong or missing row would make
    # `fedcare NAME` answer "No such command".
    from fedcare.cli.app import COMMAND_MODULES, app, register_commands

    register_commands([])  # every module, as for --help
    registered = {info.name or info.callback.__name__: info.callback.__module__ for info in app.registered_commands}
    registered |= {
        str(info.name): info.typer_instance.registered_commands[0].callback.__module__ for info in app.registered_groups
    }
    assert registered == COMMAND_MODULES
    assert set(COMMAND_MODULES) == {name for names in PANELS.values() for name in names}


def test_a_command_runs_with_only_its_own_module_registered(tmp_path):
    # A configuration error from `simulate` must not wait for the clinic, dashboard and deployment commands.
    study = tmp_path / "bad.toml"
    study.write_text('[task]\nname = "logreg"\nbogus = 1\n')
    code = (
        "import sys\n"
        "from fedcare.cli.app import main\n"
        f"sys.argv = ['fedcare', '-v', 'simulate', '--study', {str(study)!r}, '--site', 'missing.toml']\n"
        "try:\n    main()\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('fedcare.cli.') and m != 'fedcare.cli.app')\n"
        "print(code, ' '.join(loaded), 'cryptography.x509' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(SRC)}
    )
    exit_code, *loaded, crypto = out.stdout.split()
    assert "unknown key 'task.bogus'" in out.stderr
    assert exit_code == "2"
    assert set(loaded) <= {"fedcare.cli.study", "fedcare.cli.outputs"}
    assert crypto == "False"  # the site file's TLS paths are parsed without x509
