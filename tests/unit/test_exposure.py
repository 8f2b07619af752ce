"""Which listen addresses count as loopback (secure by default, cube.cli.exposure)."""

from __future__ import annotations

import pytest

from cube.cli.exposure import loopback, refusal


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"])
def test_loopback(host: str) -> None:
    assert loopback(host)
    assert refusal("manager", host, ["--token"]) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "no-such.invalid"])
def test_beyond_loopback(host: str) -> None:
    assert not loopback(host)
    message = refusal("worker", host, ["a credential", "TLS"])
    assert message is not None and f"on {host} without a credential and TLS" in message
    assert refusal("worker", host, []) is None  # nothing missing: may listen anywhere
