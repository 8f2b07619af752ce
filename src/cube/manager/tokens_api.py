"""API tokens: the guard every route but ``/health`` (and the workers' join routes)
passes, and ``/tokens`` to make, list and revoke them (management tokens only)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from cube.errors import ApiError
from cube.manager.auth import Forbidden, Tokens, TokenView, Unauthorized
from cube.manager.auth import Role as _Role
from cube.openapi import errors

_bearer = HTTPBearer(auto_error=False, scheme_name="Token", description="An API token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
_READS = frozenset({"GET", "HEAD"})

_404 = errors(e404="No such token")
_ADMIN = errors(e403="Only a management token may see or change tokens")


def answers(method: str) -> dict[int, str]:
    """What the guard may answer a request (the OpenAPI document lists it: cube.openapi)."""
    found = {401: "No token, or one this manager does not know"}
    if method not in _READS:
        found[403] = "A read token cannot change anything"
    return found


class TokenRequest(BaseModel):
    """The body of ``POST /tokens``."""

    model_config = ConfigDict(extra="forbid")
    Role: _Role = Field(description="read: GET only; management: everything.")
    Name: str = Field(default="", max_length=200)


def token_guard(tokens: Tokens, management: bool = False) -> Callable[..., Awaitable[None]]:
    """A dependency: 401 without a known token, 403 for a read token writing (or, with
    ``management``, for any but a management token)."""

    async def guard(request: Request, credentials: Credentials = None) -> None:
        secret = credentials.credentials if credentials is not None else None
        try:
            tokens.check(secret, request.method not in _READS, management)
        except Unauthorized as exc:
            raise ApiError(401, str(exc)) from None
        except Forbidden as exc:
            raise ApiError(403, str(exc)) from None

    return guard


def router(tokens: Tokens) -> APIRouter:
    """Include it without the general guard: these routes carry their own."""
    api = APIRouter()
    admin = [Depends(token_guard(tokens, management=True))]

    @api.get("/tokens/self", response_model=TokenView, dependencies=[Depends(token_guard(tokens))])
    async def whoami(credentials: Credentials = None) -> TokenView:
        """The token this request presents, any role (Nomad's ``/v1/acl/token/self``): the
        web UI asks it at its login, to check the token and to know whether to offer
        writes. With tokens off: ID ``""``, Role management (anyone may do anything)."""
        return tokens.whoami(credentials.credentials if credentials is not None else None)

    @api.post(
        "/tokens", status_code=201, response_model=TokenView, responses=_ADMIN, dependencies=admin
    )
    async def create(body: TokenRequest) -> TokenView:
        """Make a token; its Secret is in this answer only (only its hash is kept)."""
        return await tokens.create(body.Role, body.Name)

    @api.get("/tokens", response_model=list[TokenView], responses=_ADMIN, dependencies=admin)
    async def list_tokens() -> list[TokenView]:
        return tokens.list()

    @api.delete(
        "/tokens/{token_id}",
        status_code=204,
        responses={**_ADMIN, **_404},
        dependencies=admin,
    )
    async def revoke(token_id: str) -> Response:
        if not await tokens.revoke(token_id):
            raise ApiError(404, f"token {token_id} not found")
        return Response(status_code=204)

    return api
