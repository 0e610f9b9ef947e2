"""Deployment: ``fedcare server`` and ``fedcare node`` processes, their configs and checks."""
