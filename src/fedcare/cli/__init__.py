"""The ``fedcare`` command line (typer): one module per command group."""

from fedcare.cli.app import app, main

__all__ = ["app", "main"]
