"""Reusable test helpers (importable from tests and from subprocesses via PYTHONPATH)."""
