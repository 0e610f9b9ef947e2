"""Secure aggregation (SecAgg+): sans-I/O site and server state machines."""
