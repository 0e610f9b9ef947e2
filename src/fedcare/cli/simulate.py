"""``fedcare simulate``: bring-your-own tabular data (see the helper that completes it)."""
