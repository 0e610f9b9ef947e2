"""List fedcare's import-layer violations and import cycles between packages.

Usage: ``python scripts/import_graph.py [--quiet]``. Prints every import that points against
the layers declared in ``src/fedcare/_layers.py``, every cycle between packages, every
module no layer places and every I/O library the core imports; exits 1 if there is any.
"""

from __future__ import annotations

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))

from fedcare._layers import report  # noqa: E402  (after pointing sys.path at this checkout)


def main(argv: list[str]) -> int:
    """Print the problems (and, unless --quiet, the layer map); return the exit code."""
    problems, summary = report(SRC)
    if "--quiet" not in argv:
        print("\n".join(summary))
    for line in problems:
        print(line)
    print(f"{len(problems)} problem(s)" if problems else "no layer violations, no import cycles")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
