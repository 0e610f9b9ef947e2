"""Fixtures of the data-connector tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def write_config(tmp_path):
    def write(text: str, name: str = "site.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
