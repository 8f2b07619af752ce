"""`cube tls`: the cluster CA and certificates; and the --tls-* flags of the servers.

``cube manager`` and ``cube worker`` take the flags and contexts from here: nothing
this module loads is of the client side, nor ``cryptography`` until a certificate is
made (a worker only reads PEM files).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from cube import tls

if TYPE_CHECKING:
    import ssl

app = typer.Typer(
    help="TLS: a cluster CA, and certificates from it for the manager and workers "
    "(mutual TLS between them)."
)

DEFAULT_DIR = Path(".cube/tls")

Dir = Annotated[
    Path,
    typer.Option("--dir", envvar="CUBE_TLS_DIR", help="Where the CA and certificates are."),
]
Hosts = Annotated[
    list[str] | None,
    typer.Option(
        "--host",
        help="A DNS name or IP address the certificate is valid for (repeat for more; "
        "localhost, 127.0.0.1 and ::1 always are).",
    ),
]
# The servers' flags (``cube manager``, ``cube worker``): all three, or none (plain HTTP).
TlsCert = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert",
        envvar="CUBE_TLS_CERT",
        help="Serve HTTPS with this certificate (PEM); with --tls-key.",
    ),
]
TlsKey = Annotated[
    Path | None,
    typer.Option("--tls-key", envvar="CUBE_TLS_KEY", help="The certificate's private key (PEM)."),
]
TlsCa = Annotated[
    Path | None,
    typer.Option(
        "--tls-ca",
        envvar="CUBE_TLS_CA",
        help="The cluster CA (PEM): peers' certificates are checked against it.",
    ),
]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="tls")


@app.command("init")
def init(directory: Dir = DEFAULT_DIR, hosts: Hosts = None) -> None:
    """Make a cluster CA, and a certificate for the manager and one for a worker."""
    ca_cert, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    if ca_cert.exists() or ca_key.exists():
        fail(
            f"{directory} already has a CA: issue more certificates with `cube tls cert`, "
            "or remove it to start over (every certificate from it stops working)"
        )
    names = _hosts(hosts)
    ca = tls.make_ca()
    tls.write(ca, ca_cert, ca_key)
    print(f"CA:      {ca_cert} (key {ca_key}: keep it safe, it issues certificates)")
    for name in ("manager", "worker"):
        cert, key = _issue(ca, directory, name, names)
        print(f"{name + ':':<8} {cert} (key {key})")


@app.command("cert")
def cert(
    name: Annotated[
        str, typer.Option("--name", help="Who it is for: the file names and the subject.")
    ],
    directory: Dir = DEFAULT_DIR,
    hosts: Hosts = None,
) -> None:
    """Issue a certificate from the CA in --dir (for a worker on another machine)."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        fail(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
    if name in ("ca", "ca-key"):
        fail(f"--name {name!r} would overwrite the CA")
    names = _hosts(hosts)
    try:
        ca = tls.load(directory / "ca.pem", directory / "ca-key.pem")
    except tls.TlsError as exc:
        fail(f"{exc} (make a CA with `cube tls init --dir {directory}`)")
    cert_path, key_path = _issue(ca, directory, name, names)
    print(f"{name}: {cert_path} (key {key_path}; CA {directory / 'ca.pem'})")


def _issue(ca: tls.Issued, directory: Path, name: str, hosts: list[str]) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    tls.write(tls.issue(ca, name, hosts), cert_path, key_path)
    return cert_path, key_path


def _hosts(hosts: list[str] | None) -> list[str]:
    try:
        return [str(n.value) for n in tls.alt_names(hosts or [])]
    except ValueError as exc:
        fail(f"--host: {exc}")


def server_context(
    cert: Path | None, key: Path | None, ca: Path | None, *, require_client_cert: bool
) -> ssl.SSLContext | None:
    """The context a server's --tls-* flags ask for: None for none of them (plain HTTP);
    a certificate without its key, or the like, is one line and exit 1."""
    if not _wanted(cert, key, ca):
        return None
    assert cert is not None and key is not None
    try:
        return tls.server_context(cert, key, ca, require_client_cert=require_client_cert)
    except tls.TlsError as exc:
        fail(str(exc))


def client_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """The context a server calls its peers with: its own certificate, theirs checked
    against the CA (the system's CAs without one). Call after :func:`server_context`,
    which has checked the flags."""
    try:
        return tls.client_context(ca, cert, key)
    except tls.TlsError as exc:
        fail(str(exc))


def _wanted(cert: Path | None, key: Path | None, ca: Path | None) -> bool:
    """Whether the flags ask for TLS: none is plain HTTP; --tls-cert and --tls-key
    (and --tls-ca, to check peers) is TLS; anything else is a mistake, said so."""
    if cert is None and key is None and ca is None:
        return False
    flags = (("--tls-cert", cert), ("--tls-key", key))
    missing = [flag for flag, value in flags if value is None]
    if missing:
        given = next(flag for flag, value in (*flags, ("--tls-ca", ca)) if value is not None)
        fail(f"{given} needs {' and '.join(missing)}")
    return True


def fail(message: str) -> NoReturn:
    """One line and exit 1 (cube.cli.errors is not imported: it loads the client side,
    which a worker does not need)."""
    typer.echo(f"cube: {message}", err=True)
    raise typer.Exit(1)
