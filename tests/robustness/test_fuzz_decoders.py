"""Every decoder raises only its own error for any byte string: property-based fuzzing (Hypothesis).

Each case mutates a valid input (byte edits, hostile tokens such as deeply nested JSON or
an unknown dtype string, tree edits of JSON headers, line edits of TOML) and feeds it to
the real decoder the way production does. Property: the decoder returns, or raises a
:class:`~fedcare.errors.FedcareError`; never a ``KeyError``, ``TypeError``,
``RecursionError`` or anything else (see ``targets.py`` for what each target checks in
addition, e.g. that a damaged site-memory file is set aside).

``FEDCARE_FUZZ_EXAMPLES`` sets the cases per decoder (default 10,000: what CI runs).
``benchmarks/fuzz.py`` runs the same targets for longer and reports cases per second.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.robustness.targets import TARGETS, run_case, scratch_dir

CASES = int(os.environ.get("FEDCARE_FUZZ_EXAMPLES", "10000"))
#: Mutated inputs per Hypothesis example: Hypothesis draws one 64-bit case seed, from which
#: BATCH inputs are derived, so its own per-example cost is paid once per BATCH decodes.
BATCH = 10
#: Decoders at well under 1 ms a case; the others parse with heavy third-party code (fhir.resources,
#: pydicom, zipfile) or write files, and are marked slow.
FAST = {"serde.decode_state", "transport.frames", "config.simulate_toml", "config.node_toml", "config.study_toml"}


@pytest.fixture(scope="module")
def workdirs():
    made = {}
    yield made
    for path in made.values():
        shutil.rmtree(path, ignore_errors=True)


def _params():
    for name in TARGETS:
        marks = () if name in FAST else (pytest.mark.slow,)
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_params()))
def test_decoder_raises_only_its_own_errors(name, workdirs):
    target = TARGETS[name]
    workdir = workdirs.setdefault(name, scratch_dir())
    seed = target.seed(workdir)
    assert run_case(target, seed, workdir) is None  # the unmutated input decodes

    @settings(
        max_examples=max(1, CASES // BATCH),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=st.integers(0, 2**64 - 1))
    def fuzz(case: int) -> None:
        rnd = random.Random(case)  # Hypothesis reports the falsifying case; the inputs follow from it
        for _ in range(BATCH):
            blob = target.mutate(seed, rnd)
            escape = run_case(target, blob, workdir)
            assert escape is None, f"{name} leaked {escape} for input {blob[:300]!r}"

    fuzz()
