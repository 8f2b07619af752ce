"""Errors as users see them: one JSON shape for every API, and no tracebacks.

Every API answers an error with ``{"HTTPStatusCode": 400, "Message": "..."}`` (the
book's ``ErrResponse``). Validation messages name the field and say what was wrong, so
a person typing JSON by hand can fix it from the message alone.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error with the status code the API should answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"HTTPStatusCode": status, "Message": message}, status_code=status)


def describe(exc: ValidationError) -> str:
    """Flatten pydantic's errors into one readable line."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        elif error["type"] == "missing":
            parts.append(f"missing field {where!r}")
        elif error["type"] == "json_invalid":
            parts.append(f"malformed JSON: {error['msg'].removeprefix('Invalid JSON: ')}")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_body(model: type[M], body: bytes) -> M:
    """Validate a request body, turning every failure into a 400 with a clear message."""
    if not body.strip():
        raise ApiError(400, "request body is empty: expected a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(400, describe(exc)) from None


# A task ID in a path: any string reaches the route, which answers 400 for one that is
# not a UUID (with a clearer message than FastAPI's); the document says it is one.
TaskId = Annotated[
    str, Path(description="The task's ID (a UUID)", json_schema_extra={"format": "uuid"})
]


def parse_uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ApiError(400, f"invalid task ID {text!r}: expected a UUID") from None


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """A 405's Allow header (RFC 9110): every method the path takes. Starlette names
    only those of the first route on the path (each method is a route of its own
    here), so each method is asked of every route."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    """Give every error, including FastAPI's own and unexpected ones, the same JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        answer = error_response(exc.status_code, str(exc.detail))
        answer.headers.update(exc.headers or {})
        if exc.status_code == 405:
            answer.headers["Allow"] = _allowed(request)
        return answer

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors: Any = exc.errors()
        message = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in errors
        )
        return error_response(400, message or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
