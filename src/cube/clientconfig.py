"""Where the CLI finds a cluster's address and credentials, as kubectl finds the
kubeconfig that k3s writes: `cube up` writes ``client.json`` into its data directory
(readable by its owner only), and the CLI reads it from ``CUBE_CONFIG``, or else from
``$CUBE_DATA_DIR/client.json`` (``.cube/client.json``, `cube up`'s default).

A flag or a variable always wins over the file; the file's token goes only to the
managers the file names, never to another one given with ``-m``. ``Manager`` may name
several, ``https://m1:5555,https://m2:5555``: the CLI uses whichever answers.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "client.json"


@dataclass(frozen=True)
class ClientConfig:
    Manager: str  # a URL, http(s)://host:port, or several separated by commas
    Token: str = ""
    TlsCa: str = ""  # the cluster CA's certificate (PEM) to verify the manager with

    def save(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(self), indent=2) + "\n")


def path() -> Path:
    explicit = os.environ.get("CUBE_CONFIG")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CUBE_DATA_DIR") or ".cube") / FILE


def load() -> ClientConfig | None:
    """The config, if there is a readable one (a broken file is as good as none: the
    CLI then says what it cannot reach, or that a token is needed)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        data = json.loads(path().read_text())
        return ClientConfig(
            Manager=str(data["Manager"]),
            Token=str(data.get("Token") or ""),
            TlsCa=str(data.get("TlsCa") or ""),
        )
    return None


def same_manager(a: str, b: str) -> bool:
    """Whether two manager URLs name the same endpoint (localhost is 127.0.0.1; an
    address without a scheme is either)."""

    def norm(url: str) -> tuple[str, str]:
        scheme, _, rest = url.strip().rstrip("/").rpartition("://")
        if rest.startswith("localhost:"):
            rest = "127.0.0.1:" + rest.removeprefix("localhost:")
        return scheme, rest

    (scheme_a, rest_a), (scheme_b, rest_b) = norm(a), norm(b)
    return rest_a == rest_b and (scheme_a == scheme_b or not scheme_a or not scheme_b)


def for_manager(url: str) -> ClientConfig | None:
    """The config, when it is about the manager at ``url`` (one of its managers)."""
    config = load()
    if config is None:
        return None
    named = (entry for entry in config.Manager.split(",") if entry.strip())
    return config if any(same_manager(entry, url) for entry in named) else None
