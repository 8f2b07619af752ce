"""cube.tls: the cluster CA, certificates from it, and contexts that shake hands (real
handshakes over loopback sockets) with what they should and refuse what they should not."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from cube import tls


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Material:
    ca: Path
    ca_issued: tls.Issued
    manager: Pair
    worker: Pair
    foreign_ca: Path
    foreign: Pair  # a certificate from another CA, for the same names


def _save(directory: Path, name: str, issued: tls.Issued) -> Pair:
    pair = Pair(directory / f"{name}.pem", directory / f"{name}-key.pem")
    tls.write(issued, pair.cert, pair.key)
    return pair


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    d = tmp_path_factory.mktemp("tls")
    ca = tls.make_ca()
    other = tls.make_ca("Another CA")
    _save(d, "ca", ca)
    _save(d, "other-ca", other)
    return Material(
        ca=d / "ca.pem",
        ca_issued=ca,
        manager=_save(d, "manager", tls.issue(ca, "manager", ["cube.example", "10.1.2.3"])),
        worker=_save(d, "worker", tls.issue(ca, "worker")),
        foreign_ca=d / "other-ca.pem",
        foreign=_save(d, "foreign", tls.issue(other, "manager")),
    )


# --- certificates -----------------------------------------------------------------------


def test_the_ca_is_a_long_lived_p256_ca_that_signed_itself(material: Material) -> None:
    cert = material.ca_issued.cert
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and not usage.digital_signature
    cert.verify_directly_issued_by(cert)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime > datetime.timedelta(days=9 * 365)


def test_a_certificate_verifies_against_its_ca_with_its_names_and_both_purposes(
    material: Material,
) -> None:
    cert = x509.load_pem_x509_certificate(material.manager.cert.read_bytes())
    cert.verify_directly_issued_by(material.ca_issued.cert)
    with pytest.raises(ValueError):  # another issuer
        other = x509.load_pem_x509_certificate(material.foreign_ca.read_bytes())
        cert.verify_directly_issued_by(other)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["cube.example", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    purposes = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(purposes) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.rfc4514_string() == "CN=manager,O=Cube"
    assert cert.not_valid_after_utc <= material.ca_issued.cert.not_valid_after_utc


def test_names_are_each_once_and_garbage_is_refused() -> None:
    names = tls.alt_names(["LocalHost", "[::1]", "node-1.lan", "127.0.0.1"])
    assert [str(n.value) for n in names] == ["localhost", "::1", "node-1.lan", "127.0.0.1"]
    with pytest.raises(ValueError, match="neither a DNS name nor an IP address"):
        tls.alt_names(["http://host:80"])
    with pytest.raises(ValueError, match="neither"):
        tls.alt_names(["two words"])


def test_keys_are_private_and_written_files_load_back(material: Material, tmp_path: Path) -> None:
    assert stat.S_IMODE(material.manager.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(material.manager.cert.stat().st_mode) == 0o644
    # An old key file readable by others is made private when written again.
    key = tmp_path / "k.pem"
    key.write_text("old")
    key.chmod(0o666)
    tls.write(material.ca_issued, tmp_path / "c.pem", key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = tls.load(tmp_path / "c.pem", key)
    assert again.cert == material.ca_issued.cert
    with pytest.raises(tls.TlsError, match="is not the key of"):
        tls.load(tmp_path / "c.pem", material.worker.key)
    with pytest.raises(tls.TlsError, match="is not a PEM certificate"):
        tls.load(key, key)
    with pytest.raises(tls.TlsError, match="cannot read"):
        tls.load(tmp_path / "missing.pem", key)


def test_contexts_say_in_one_line_what_is_wrong_with_their_files(
    material: Material, tmp_path: Path
) -> None:
    with pytest.raises(tls.TlsError, match=r"cannot read .*nope\.pem: no such file"):
        tls.server_context(tmp_path / "nope.pem", material.manager.key)
    with pytest.raises(tls.TlsError, match="are not a PEM certificate and its key"):
        tls.server_context(material.manager.cert, material.worker.key)
    with pytest.raises(tls.TlsError, match="is not a PEM CA certificate"):
        tls.client_context(material.manager.key)


# --- handshakes -------------------------------------------------------------------------


@dataclass
class Outcome:
    server: str  # "ok", or why the server ended the connection
    client: str  # what the client read ("ok"), or why it failed
    peer: str  # the client certificate's subject as the server saw it ("" for none)


def shake(server: ssl.SSLContext, client: ssl.SSLContext, name: str = "localhost") -> Outcome:
    """One connection over loopback: the server handshakes and writes "ok"; the
    client handshakes and reads (a refused client certificate shows in TLS 1.3 only
    when the client reads)."""
    seen: dict[str, str] = {"server": "no connection", "peer": ""}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(5)
            try:
                with server.wrap_socket(conn, server_side=True) as channel:
                    peer = channel.getpeercert() or {}
                    subject = dict(x[0] for x in peer.get("subject", ()))
                    seen["peer"] = str(subject.get("commonName", ""))
                    channel.sendall(b"ok")
                    seen["server"] = "ok"
            except (ssl.SSLError, OSError) as exc:
                seen["server"] = str(exc)
            finally:
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client.wrap_socket(raw, server_hostname=name) as channel,
            ):
                answer = channel.recv(2).decode() or "closed"
        except (ssl.SSLError, OSError) as exc:
            answer = str(exc)
        thread.join(10)
    return Outcome(seen["server"], answer, seen["peer"])


def _worker_server(m: Material) -> ssl.SSLContext:
    return tls.server_context(m.worker.cert, m.worker.key, m.ca, require_client_cert=True)


def _manager_server(m: Material) -> ssl.SSLContext:
    return tls.server_context(m.manager.cert, m.manager.key, m.ca)


def test_mutual_tls_between_manager_and_worker(material: Material) -> None:
    manager = tls.client_context(material.ca, material.manager.cert, material.manager.key)
    outcome = shake(_worker_server(material), manager, "127.0.0.1")
    assert outcome == Outcome("ok", "ok", "manager")


def test_a_worker_refuses_a_client_without_a_certificate_or_from_another_ca(
    material: Material,
) -> None:
    bare = shake(_worker_server(material), tls.client_context(material.ca))
    assert bare.client != "ok" and "certificate" in bare.server.lower()
    foreign = tls.client_context(material.ca, material.foreign.cert, material.foreign.key)
    refused = shake(_worker_server(material), foreign)
    assert refused.client != "ok" and "certificate verify failed" in refused.server


def test_a_manager_takes_clients_without_a_certificate_but_not_from_another_ca(
    material: Material,
) -> None:
    assert shake(_manager_server(material), tls.client_context(material.ca)).client == "ok"
    worker = tls.client_context(material.ca, material.worker.cert, material.worker.key)
    assert shake(_manager_server(material), worker) == Outcome("ok", "ok", "worker")
    foreign = tls.client_context(material.ca, material.foreign.cert, material.foreign.key)
    refused = shake(_manager_server(material), foreign)
    assert refused.client != "ok" and "certificate verify failed" in refused.server


def test_a_client_refuses_a_server_from_another_ca_or_for_another_name(
    material: Material,
) -> None:
    impostor = tls.server_context(material.foreign.cert, material.foreign.key)
    outcome = shake(impostor, tls.client_context(material.ca))
    assert "certificate verify failed" in outcome.client and outcome.server != "ok"
    elsewhere = shake(_manager_server(material), tls.client_context(material.ca), "other.example")
    assert "Hostname mismatch" in elsewhere.client
    named = shake(_manager_server(material), tls.client_context(material.ca), "cube.example")
    assert named.client == "ok"


def test_speaks_tls_tells_a_tls_listener_from_a_plain_one(material: Material) -> None:
    for server, expected in ((_worker_server(material), True), (None, False)):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]

            def serve(context: ssl.SSLContext | None = server) -> None:
                conn, _ = listener.accept()
                with conn:
                    if context is None:
                        conn.recv(1024)
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        return
                    try:
                        with context.wrap_socket(conn, server_side=True) as channel:
                            channel.recv(1)
                    except (ssl.SSLError, OSError):
                        pass

            thread = threading.Thread(target=serve)
            thread.start()
            assert tls.speaks_tls("127.0.0.1", port) is expected
            thread.join(10)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    assert tls.speaks_tls("127.0.0.1", port) is False  # nothing listens: not TLS


def test_https_upgrades_a_worker_address() -> None:
    assert tls.https("10.0.0.7:5556") == "https://10.0.0.7:5556"
    assert tls.https("http://w:5556") == "https://w:5556"
    assert tls.https("https://w:5556") == "https://w:5556"
