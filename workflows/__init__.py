"""Temporal workflows: decisions only (deterministic, no I/O)."""
