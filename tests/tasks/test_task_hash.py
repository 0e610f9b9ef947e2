"""The task hash covers every file that decides what runs: package, fedcare code, weights, params."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fedcare
from fedcare.task import task_hash
from fedcare.task_manifest import TaskManifest, task_manifest
from fedcare.tasks import make_task


def _hash(reload_demo, **params):
    reload_demo()
    return task_hash(make_task("demo-task", **params))


def test_manifest_lists_package_files_fedcare_code_and_params(demo_dist):
    m = task_manifest(make_task("demo-task", size=3))
    assert {"demo_task/__init__.py", "demo_task/weights.bin"} <= set(m.files)
    assert "fedcare/tasks/torch_common.py" in m.files  # the shared code it imports
    assert (m.name, m.distribution, m.version, dict(m.params)) == ("demo-task", "demo-task", "1.0", {"size": 3})
    assert TaskManifest.from_dict(m.to_dict()).digest == m.digest == task_hash(make_task("demo-task", size=3))


def test_hash_changes_with_each_input_and_not_otherwise(demo_dist, reload_demo):
    base = _hash(reload_demo)
    seen = {base}

    def changed(what):
        h = _hash(reload_demo)
        assert h not in seen, f"hash did not change when {what}"
        seen.add(h)

    # not otherwise: same files rewritten, bytecode written, another instance
    src = demo_dist.package / "__init__.py"
    text = src.read_text()
    src.write_text(text)
    os.utime(src, (1, 1))
    (demo_dist.package / "__pycache__").mkdir(exist_ok=True)
    (demo_dist.package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    assert _hash(reload_demo) == base
    # the module's code
    src.write_text(text + "\n# reviewed change\n")
    changed("a source file was modified")
    # a shipped weight file
    (demo_dist.package / "weights.bin").write_bytes(b"\x01" + b"\x00" * 15)
    changed("the weight file was modified")
    # a file added, then removed
    (demo_dist.package / "extra.py").write_text("X = 1\n")
    changed("a file was added")
    (demo_dist.package / "extra.py").unlink()
    assert _hash(reload_demo) in seen  # back to the previous content: the previous hash
    # parameters
    assert _hash(reload_demo, size=5) not in seen
    # the distribution's version
    demo_dist.set_version("1.1")
    changed("the version changed")


def test_builtin_hash_ignores_unrelated_fedcare_files():
    m = task_manifest(make_task("cnn"))
    assert {"fedcare/tasks/cnn.py", "fedcare/tasks/torch_common.py", "fedcare/privacy/dpsgd.py"} <= set(m.files)
    assert not any(f.startswith(("fedcare/report/", "fedcare/cli/", "fedcare/transport/")) for f in m.files)


@pytest.mark.slow
def test_builtin_hash_changes_when_the_shared_training_code_changes(tmp_path):
    """A copy of fedcare whose torch_common.py is edited gives every torch task a new hash."""
    copy = tmp_path / "src" / "fedcare"
    shutil.copytree(Path(fedcare.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__", "*.npz"))
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from fedcare.task import task_hash
        from fedcare.tasks import make_task
        root = Path(sys.argv[1])
        tasks = {"cnn": {}, "mlp": {"n_features": 3}, "cox": {"n_features": 3}}
        def hashes():
            return {n: task_hash(make_task(n, **kw)) for n, kw in tasks.items()}
        h0 = hashes()
        (root / "report" / "__init__.py").write_text((root / "report" / "__init__.py").read_text() + "# x\\n")
        h1 = hashes()
        common = root / "tasks" / "torch_common.py"
        common.write_text(common.read_text() + "\\n# a change to the shared training loop\\n")
        h2 = hashes()
        print(h0 == h1, all(h1[n] != h2[n] for n in tasks))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(copy.parent)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(copy)], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["True", "True"], out.stderr
