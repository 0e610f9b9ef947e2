"""A site node for a numpy task must not load torch: thousands of simulated sites share a few
Ray actors, and each actor would pay seconds of CPU (more when Ray renices it) for nothing."""

from __future__ import annotations

import json
import subprocess
import sys


def test_a_site_node_and_its_privacy_guard_load_neither_torch_nor_opacus():
    code = (
        "import json, sys\n"
        "import fedcare.runtime.node, fedcare.runtime.simulation, fedcare.secure\n"
        "print(json.dumps(sorted(m for m in ('torch', 'opacus', 'dp_accounting') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
