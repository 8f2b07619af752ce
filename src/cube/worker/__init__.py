"""The worker: runs tasks as containers and serves the worker API."""
