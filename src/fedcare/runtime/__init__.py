"""Runtime: the Coordinator, site nodes and their policies, simulation."""
