import importlib
import subprocess
import sys

import fedcare


def test_all_is_sorted_and_importable():
    assert fedcare.__all__ == sorted(fedcare.__all__)
    for name in fedcare.__all__:
        assert hasattr(fedcare, name), name


def test_pure_packages_do_not_pull_transport_or_storage():
    # The dependency rule: types/serde/strategies/data stay free of sockets, databases and web frameworks.
    code = (
        "import sys, fedcare.types, fedcare.serde, fedcare.task, fedcare.strategies, fedcare.data;"
        "bad = [m for m in ('grpc', 'sqlalchemy', 'fastapi') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_no_pickle_in_the_package():
    import pathlib

    root = pathlib.Path(importlib.import_module("fedcare").__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if any(s in p.read_text(encoding="utf-8") for s in ("import pickle", "from pickle", "import dill"))
    ]
    assert offenders == []
