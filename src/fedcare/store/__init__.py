"""The run store: SQLAlchemy repository of runs, rounds, metrics, events, checkpoints."""

from fedcare.store.sql import SqlStore, flatten_state, unflatten_state

__all__ = ["SqlStore", "flatten_state", "unflatten_state"]
