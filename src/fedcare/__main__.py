"""``python -m fedcare`` runs the CLI."""

from fedcare.cli import main

main()
