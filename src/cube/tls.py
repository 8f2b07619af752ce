"""TLS for a Cube cluster: a cluster CA, certificates from it, and ``ssl`` contexts.

Manager and workers prove who they are to each other with certificates from one CA
of the cluster's own (mutual TLS, as Nomad and Swarm do): ``cube tls init`` makes it,
``cube tls cert`` issues more. Every certificate carries both the serverAuth and the
clientAuth purposes, because a manager serves the API and calls its workers, and a
worker serves its API and calls its manager when it joins.

The certificates are made with the ``cryptography`` package rather than by hand, and
imported only where one is made: it costs a process ~13 MB, which a worker that only
serves (``ssl`` contexts from files) need not pay.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_DAYS = 3650  # the cluster CA: ten years, as a cluster's trust root should outlive it
CERT_DAYS = 825  # a manager's or worker's certificate (the CA/Browser Forum's old limit)
# Names every certificate answers to, so that a process is reachable on its own machine.
ALWAYS = ("localhost", "127.0.0.1", "::1")
CA_NAME = "Cube cluster CA"
_LABEL = re.compile(r"[a-z0-9_*-]+")  # one label of a DNS name (lowercased)


class TlsError(Exception):
    """TLS material that cannot be used; ``str()`` is one line saying which and why."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def make_ca(name: str = CA_NAME, days: int = CA_DAYS) -> Issued:
    """A new cluster CA: an ECDSA P-256 key and a self-signed certificate that may
    sign certificates, and nothing else (no intermediate CAs under it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    start = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))  # clocks a little apart
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(ca: Issued, name: str, hosts: Iterable[str] = (), days: int = CERT_DAYS) -> Issued:
    """A certificate for ``name`` signed by ``ca``, valid for ``hosts`` (DNS names and
    IP addresses) and for :data:`ALWAYS`, usable by a server and a client alike."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(min(start + datetime.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(alt_names(hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """Subject alternative names for hosts and :data:`ALWAYS`: an IP address as one, a
    name as a DNS name; each once, in the order given. ValueError for what is neither
    (a name with spaces, a URL)."""
    from cryptography import x509

    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in [*hosts, *ALWAYS]:
        host = raw.strip().strip("[]")
        key = host.lower()
        if not host or key in seen:
            continue
        seen.add(key)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not all(_LABEL.fullmatch(part) for part in key.split(".")):
            raise ValueError(f"{raw!r} is neither a DNS name nor an IP address")
        names.append(x509.DNSName(key))
    return names


def write(issued: Issued, cert_path: Path, key_path: Path) -> None:
    """Write a certificate (mode 0644) and its key (0600: the key is the identity)."""
    _write(cert_path, issued.cert_pem(), 0o644)
    _write(key_path, issued.key_pem(), 0o600)


def load(cert_path: Path, key_path: Path) -> Issued:
    """A certificate and key written by :func:`write` (the CA's, to issue more)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path))
    except ValueError:
        raise TlsError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(_read(key_path), password=None)
    except (ValueError, TypeError):
        raise TlsError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise TlsError(f"{key_path} is not the key of {cert_path}")
    return Issued(cert, key)


# --- contexts ---------------------------------------------------------------------------


def server_context(
    cert: Path, key: Path, ca: Path | None = None, *, require_client_cert: bool = False
) -> ssl.SSLContext:
    """A server's context: its certificate, and with ``ca``, clients' certificates
    checked against it: required (a worker: only its manager calls it) or optional (a
    manager: the CLI and browsers come with tokens), but a certificate from another CA
    is refused either way (OpenSSL fails a handshake whose certificate does not verify,
    even when one was not required)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _chain(context, cert, key)
    if ca is not None:
        _trust(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client's context: the server verified (its certificate and its name) against
    ``ca`` (default: the system's CAs), and ``cert`` presented when the server asks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is None:
        context.load_default_certs()
    else:
        _trust(context, ca)
    if cert is not None and key is not None:
        _chain(context, cert, key)
    return context


def https(url: str) -> str:
    """The https:// form of a worker's address (``host:port`` or an http:// URL)."""
    if url.startswith("http://"):
        return "https://" + url.removeprefix("http://")
    return url if "://" in url else f"https://{url}"


def speaks_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether the server at host:port answers a TLS handshake: a plain HTTP request
    it dropped may have gone to a TLS listener, and saying so is the whole fix.

    Nothing is verified (this is a diagnosis, not a connection); a handshake that the
    server ends with a TLS alert (it wanted a client certificate) is TLS too."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            probe.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except ssl.SSLError as exc:
        return "ALERT" in (exc.reason or "").upper()
    except OSError:
        return False


# --- helpers ----------------------------------------------------------------------------


def _chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError:
        missing = next((p for p in (cert, key) if not p.exists()), cert)
        raise TlsError(f"cannot read {missing}: no such file") from None
    except ssl.SSLError as exc:
        raise TlsError(
            f"{cert} and {key} are not a PEM certificate and its key ({_why(exc)})"
        ) from None
    except OSError as exc:
        raise TlsError(f"cannot read {exc.filename or cert}: {exc.strerror}") from None


def _trust(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TlsError(f"cannot read {ca}: no such file") from None
    except ssl.SSLError as exc:
        raise TlsError(f"{ca} is not a PEM CA certificate ({_why(exc)})") from None
    except OSError as exc:
        raise TlsError(f"cannot read {ca}: {exc.strerror}") from None


def _why(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc).lower().replace("_", " ")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc.strerror}") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    """Written whole or not at all (a temporary file renamed), with ``mode`` from the
    first byte: a key is never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask took away or an old file had
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cube"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
