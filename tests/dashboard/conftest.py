"""Fixtures: one finished store per module (see helpers.build_store)."""

from __future__ import annotations

import pytest
from tests.dashboard.helpers import build_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("dash"))
