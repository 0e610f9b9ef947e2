"""Homomorphic encryption engines: OpenFHE (threshold CKKS) in a side process."""

from fedcare.he.engine import OpenFheEngine, find_openfhe_python

__all__ = ["OpenFheEngine", "find_openfhe_python"]
