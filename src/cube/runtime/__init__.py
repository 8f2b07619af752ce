"""Container runtimes: the edge where Cube talks to a container engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cube.runtime.base import (
    ContainerError,
    ContainerEvent,
    ContainerInfo,
    ContainerSpec,
    Runtime,
    RuntimeUnavailable,
)

if TYPE_CHECKING:
    from cube.runtime.docker import DockerRuntime

__all__ = [
    "ContainerError",
    "ContainerEvent",
    "ContainerInfo",
    "ContainerSpec",
    "DockerRuntime",
    "Runtime",
    "RuntimeUnavailable",
]


def __getattr__(name: str) -> object:
    # Imported on demand: the Docker SDK is heavy, and a simulated runtime never needs it.
    if name == "DockerRuntime":
        from cube.runtime.docker import DockerRuntime

        return DockerRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
