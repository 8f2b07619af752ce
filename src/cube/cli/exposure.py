"""Secure by default: a server that anyone on the network can reach must check who
calls it, unless its operator says ``--insecure``.

A manager without a token, or a worker without a credential and TLS, on loopback is a
local cluster: only this machine's users reach it. Beyond loopback it is remote root
on every worker, so it refuses to start and says why and what to add (as etcd and
the Docker daemon refuse, or warn loudly, to serve their APIs on a network in clear).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import typer


def loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (a name is looked up;
    one that does not resolve counts as not loopback: the server would fail anyway)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addresses = {info[4][0] for info in found}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def refusal(what: str, host: str, missing: list[str]) -> str | None:
    """Why ``what`` must not listen on ``host`` lacking ``missing`` (None: it may)."""
    if not missing or loopback(host):
        return None
    return (
        f"refusing to listen on {host} without {' and '.join(missing)}: anyone who "
        f"reaches this {what} could run any container as root on the cluster's machines. "
        "Add them, listen on 127.0.0.1 (-H), or pass --insecure to accept that"
    )


def insecure_option(consequence: str) -> Any:
    """``--insecure`` (or ``CUBE_INSECURE``), for the manager and the worker alike:
    listen beyond loopback without what :func:`refusal` asks for; ``consequence`` says
    what that exposes."""
    return typer.Option("--insecure", envvar="CUBE_INSECURE", help=consequence)
