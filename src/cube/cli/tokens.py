"""`cube token`: API tokens for the manager (management tokens only)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from cube.cli import format as fmt
from cube.cli.options import DEFAULT_MANAGER, Manager, Output, OutputFormat
from cube.manager.client import ManagerClient

app = typer.Typer(help="API tokens: create (read or management), list, revoke.")


class Role(StrEnum):
    read = "read"
    management = "management"


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="token")


@app.command("create")
def create(
    role: Annotated[
        Role, typer.Option("--role", help="read: GET only; management: everything.")
    ] = Role.read,
    name: Annotated[str, typer.Option("--name", help="What the token is for.")] = "",
    manager: Manager = DEFAULT_MANAGER,
    output: OutputFormat = Output.table,
) -> None:
    """Make a token and print its secret: it is shown this once (only a hash is kept)."""
    with ManagerClient(manager) as client:
        made = client.create_token(role.value, name)
    if output is Output.json:
        fmt.print_json(made)
        return
    print(made.get("Secret", ""))
    print(
        f"token {made.get('ID')} ({made.get('Role')}): keep the line above; it is not shown again"
    )


@app.command("list")
def list_tokens(manager: Manager = DEFAULT_MANAGER, output: OutputFormat = Output.table) -> None:
    """The tokens made with `cube token create` (never their secrets)."""
    with ManagerClient(manager) as client:
        tokens = client.tokens()
    if output is Output.json:
        fmt.print_json(tokens)
        return
    rows = [
        [
            str(t.get("ID")),
            str(t.get("Name") or fmt.MISSING),
            str(t.get("Role")),
            str(t.get("CreateTime")),
        ]
        for t in tokens
    ]
    fmt.show(fmt.table(("ID", "NAME", "ROLE", "CREATED"), rows))


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's ID (see `cube token list`).")],
    manager: Manager = DEFAULT_MANAGER,
) -> None:
    """Revoke a token: it is refused from now on."""
    with ManagerClient(manager) as client:
        client.revoke_token(token_id)
    print(f"token {token_id}: revoked")
