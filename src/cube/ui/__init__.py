"""The web UI: static pages the manager serves at ``/ui`` (and ``/`` redirects there).

Plain HTML, CSS and JavaScript modules shipped inside the package, with no build step
and nothing fetched from elsewhere: serving the UI needs Python alone, and a reader can
open the files and see what runs. The pages talk to the manager through its public API
only (the same routes the CLI uses), with the token the user gives at the login, so the
files themselves hold no secret and are served to anyone. See docs/architecture.md
("The web UI").
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(str(resources.files("cube.ui").joinpath("static")))


def install(app: FastAPI) -> None:
    """``/ui/`` serves the pages, ``/`` and ``/ui`` redirect there; none of it is part
    of the API, so none of it is in the OpenAPI document."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui", include_in_schema=False)
    async def ui() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")
