"""Who may call the manager: bearer tokens with a role, as Nomad's ACL tokens.

The management token is the manager's own (``cube manager --token``, ``CUBE_TOKEN``, or
the data directory's ``token`` file); more are made with ``cube token create --role
read|management`` and kept in the store. Only a token's SHA-256 is kept: tokens are 32
random bytes, so a fast hash is enough (as GitHub stores its tokens), and a stolen
database gives nobody a token. A presented token is hashed and its hash compared in
constant time. ``read`` tokens may only read (GET); ``management`` tokens do anything.

With no management token the manager is open, as before tokens existed (the security
issue's secure-by-default refuses that beyond loopback).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from cube import task as task_module

if TYPE_CHECKING:
    from cube.manager.backend import Backend

Role = Literal["read", "management"]
_Role = Role  # inside the models, Role is a field
PREFIX = "cube_"


class TokenRecord(BaseModel):
    """What is stored of a token: never the secret, only its hash."""

    ID: str = Field(description="The token's public identity (for list and revoke).")
    Name: str = ""
    Role: _Role = "read"
    Hash: str = Field(default="", description="SHA-256 of the secret, hex.")
    CreateTime: datetime | None = None


class TokenView(BaseModel):
    """A token as the API shows it (the secret only once, when it is made)."""

    ID: str
    Name: str
    Role: _Role
    CreateTime: datetime | None = None
    Secret: str | None = Field(default=None, description="Only in the answer that made it.")


class Unauthorized(PermissionError):
    """No token, or not one this manager knows (401)."""


class Forbidden(PermissionError):
    """A read token asked to change something (403)."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Tokens:
    def __init__(self, backend: Backend, management: str | None = None) -> None:
        self.backend = backend
        self._management = digest(management) if management else None
        self.records: dict[str, TokenRecord] = {r.ID: r for r in backend.load_tokens()}

    @property
    def enabled(self) -> bool:
        return self._management is not None

    def role_of(self, secret: str | None) -> Role:
        """The presented token's role; Unauthorized when there is none or it is unknown."""
        return self._identify(secret)[0]

    def whoami(self, secret: str | None) -> TokenView:
        """The presented token as the API shows it (Nomad's ``/v1/acl/token/self``); the
        manager's own management token has no record, so its ID is ``"management"``.
        With tokens off anyone may do anything: an anonymous management token, ID ``""``.
        Unauthorized as :meth:`role_of`."""
        if not self.enabled:
            return TokenView(ID="", Name="anonymous", Role="management")
        role, record = self._identify(secret)
        if record is None:
            return TokenView(ID="management", Name="the manager's own", Role=role)
        return TokenView(**record.model_dump(exclude={"Hash"}))

    def _identify(self, secret: str | None) -> tuple[Role, TokenRecord | None]:
        """The token's role, and its record (None for the manager's own)."""
        if not secret:
            raise Unauthorized("a token is needed: Authorization: Bearer TOKEN (cube --token)")
        presented = digest(secret)
        if self._management is not None and hmac.compare_digest(presented, self._management):
            return "management", None
        for record in self.records.values():
            if hmac.compare_digest(presented, record.Hash):
                return record.Role, record
        raise Unauthorized("unknown token")

    def check(self, secret: str | None, write: bool, management: bool = False) -> None:
        """Let the request through, or raise Unauthorized / Forbidden. ``management``:
        only a management token may (the ``/tokens`` routes)."""
        if not self.enabled:
            return
        role = self.role_of(secret)
        if management and role != "management":
            raise Forbidden("only a management token may see or change tokens")
        if role == "read" and write:
            raise Forbidden("a read token cannot change anything")

    async def create(self, role: Role, name: str = "") -> TokenView:
        secret = PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            ID=str(uuid.uuid4()),
            Name=name,
            Role=role,
            Hash=digest(secret),
            CreateTime=task_module.now(),
        )
        await self.backend.save_token(record)
        self.records[record.ID] = record
        return TokenView(**record.model_dump(exclude={"Hash"}), Secret=secret)

    def list(self) -> list[TokenView]:
        return [TokenView(**r.model_dump(exclude={"Hash"})) for r in self.records.values()]

    async def revoke(self, token_id: str) -> bool:
        if token_id not in self.records:
            return False
        await self.backend.delete_token(token_id)
        del self.records[token_id]
        return True
