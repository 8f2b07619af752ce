"""The nodes API: workers join and heartbeat; operators drain, cordon and remove nodes.

Routes (see docs/api.md): ``POST /nodes/register`` and ``POST /nodes/{name}/heartbeat``
(workers, with the join token as ``Authorization: Bearer``), ``GET /nodes/{name}``,
``POST /nodes/{name}/drain``, ``POST /nodes/{name}/eligibility``, ``DELETE
/nodes/{name}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from cube.errors import ApiError
from cube.manager.membership import (
    Joined,
    JoinRefused,
    Membership,
    NodeBusy,
    Registration,
    UnknownNode,
)
from cube.node import Node
from cube.openapi import errors


class DrainRequest(BaseModel):
    """The body of ``POST /nodes/{name}/drain`` (optional)."""

    model_config = ConfigDict(extra="forbid")
    Deadline: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86_400,
        allow_inf_nan=False,
        description="Seconds from now after which whatever is left moves at once.",
    )


class EligibilityRequest(BaseModel):
    """The body of ``POST /nodes/{name}/eligibility``."""

    model_config = ConfigDict(extra="forbid")
    Eligible: bool


_400 = errors(e400="Malformed request; Message says why")
_404 = errors(e404="No such node")
_JOIN = errors(
    e401="Missing or wrong join token",
    e403="The manager takes no joins (no join token set)",
)
_409 = errors(e409="The node is ready: not removed")

# The join token, as ``Authorization: Bearer`` (a security scheme in the OpenAPI
# document); a missing or malformed header is the same 401 as a wrong token.
_join_token = HTTPBearer(auto_error=False, scheme_name="JoinToken", description="The join token")
Authorization = Annotated[HTTPAuthorizationCredentials | None, Depends(_join_token)]


def router(members: Membership) -> tuple[APIRouter, APIRouter]:
    """The workers' routes (join token), and the operators' (the API's own tokens)."""

    async def admit(authorization: Authorization = None) -> None:
        """The join token, checked as a dependency: before the body is read, so a
        caller without one gets its 401, not a 400 about the body it sent."""
        try:
            members.check_token(authorization.credentials if authorization else None)
        except JoinRefused as exc:
            raise ApiError(403 if exc.off else 401, str(exc)) from None

    joining, api = APIRouter(dependencies=[Depends(admit)]), APIRouter()

    def node(name: str) -> Node:
        try:
            return members.get(name)
        except UnknownNode:
            raise ApiError(404, f"node {name} not found") from None

    @joining.post(
        "/nodes/register", status_code=201, response_model=Joined, responses={**_400, **_JOIN}
    )
    async def register(body: Registration) -> Joined:
        """A worker joins (or joins again, perhaps from a new address: the same node)."""
        return await members.join(body)

    @joining.post("/nodes/{name}/heartbeat", response_model=Joined, responses={**_404, **_JOIN})
    async def heartbeat(name: str) -> Joined:
        """A joined worker is alive. 404: unknown here (removed): join again."""
        try:
            return members.beat(name)
        except UnknownNode:
            raise ApiError(404, f"node {name} not found: join again") from None

    @api.get("/nodes/{name}", response_model=Node, responses=_404)
    async def get_node(name: str) -> dict[str, Any]:
        return node(name).to_wire()

    @api.post("/nodes/{name}/drain", response_model=Node, responses={**_400, **_404})
    async def drain(name: str, body: DrainRequest | None = None) -> dict[str, Any]:
        """Move the node's tasks elsewhere (a job's no faster than its MaxParallel);
        it then takes no new work until made eligible."""
        node(name)
        deadline = body.Deadline if body is not None else None
        return (await members.drain(name, deadline)).to_wire()

    @api.post("/nodes/{name}/eligibility", response_model=Node, responses={**_400, **_404})
    async def eligibility(name: str, body: EligibilityRequest) -> dict[str, Any]:
        """Eligible: takes new work (and any drain ends). Not: its tasks stay, new ones
        go elsewhere."""
        node(name)
        return (await members.set_eligible(name, body.Eligible)).to_wire()

    @api.delete("/nodes/{name}", status_code=204, responses={**_404, **_409})
    async def remove(name: str) -> Response:
        """Forget a node that is gone for good (not one that answers)."""
        node(name)
        try:
            await members.remove(name)
        except NodeBusy as exc:
            raise ApiError(409, str(exc)) from None
        return Response(status_code=204)

    return joining, api
