"""Who may command a worker: its manager, and nobody else.

A joining worker makes a random secret when it starts and hands it to the manager
inside its registration, which the join token authenticates (as a Nomad client makes
its node secret and gives it to the servers when it registers); the manager presents
it on every call from then on. A worker of the static ``-w`` flow shares a
``--token`` with its manager instead. Every route but ``GET /health`` needs one of
them, compared in constant time; a worker given neither takes commands from anyone,
which only a worker on loopback (or one started with ``--insecure``) may do.
"""

from __future__ import annotations

import hmac
import secrets


def new_secret() -> str:
    """A worker's join credential: 256 random bits."""
    return secrets.token_urlsafe(32)


class Unauthorized(PermissionError):
    """No credential, or not one this worker takes (401)."""


class Credentials:
    def __init__(self, *accepted: str | None) -> None:
        self._accepted = [secret.encode() for secret in accepted if secret]

    @property
    def required(self) -> bool:
        return bool(self._accepted)

    def check(self, presented: str | None) -> None:
        """Raise :class:`Unauthorized` unless ``presented`` is one of the accepted."""
        if not self._accepted:
            return
        if not presented:
            raise Unauthorized("this worker takes commands from its manager only: no token")
        given = presented.encode()
        # Every secret compared, so the time taken says nothing about which one is close.
        matches = [hmac.compare_digest(given, secret) for secret in self._accepted]
        if not any(matches):
            raise Unauthorized("this worker takes commands from its manager only: wrong token")
