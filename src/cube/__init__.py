"""Cube: a small container orchestrator (manager, scheduler, workers running Docker)."""

__version__ = "0.1.0"
