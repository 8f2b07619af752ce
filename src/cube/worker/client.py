"""The worker API as the manager calls it: typed, with timeouts, errors made plain.

Every call has a timeout, and every failure surfaces as :class:`WorkerUnreachable`
(the worker did not answer: try again later, maybe mark it down) or
:class:`WorkerRejected` (it answered no: retrying the same request will not help).
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from cube.task import Task, TaskEvent


class WorkerUnreachable(Exception):
    """No answer: connection refused, timeout, or a 5xx."""


class WorkerRejected(Exception):
    """The worker answered with a 4xx; ``status`` says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WorkerClient:
    def __init__(self, base_url: str, client: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = client

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._http.request(method, f"{self.base_url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise WorkerUnreachable(f"{self.base_url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 500:
            raise WorkerUnreachable(
                f"{self.base_url}: HTTP {response.status_code}: {response.text}"
            )
        if response.status_code >= 400:
            try:
                message = response.json().get("Message", response.text)
            except ValueError:
                message = response.text
            raise WorkerRejected(response.status_code, message)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise WorkerUnreachable(f"{self.base_url}: answer is not JSON") from None

    async def submit(self, event: TaskEvent) -> Task:
        return Task.model_validate(
            await self._call("POST", "/tasks", event.model_dump(mode="json"))
        )

    async def stop(self, task_id: uuid.UUID) -> None:
        await self._call("DELETE", f"/tasks/{task_id}")

    async def tasks(self) -> list[Task]:
        return [Task.model_validate(t) for t in await self._call("GET", "/tasks")]

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._call("GET", "/stats")
        return data

    async def health(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._call("GET", "/health")
        return data
