"""``checks.tls_certificate`` against a real TLS server on 127.0.0.1, with certificates made by
the test (trustme): days left, degraded and failing expiry, and each way a handshake fails."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trustme
from asgiref.wsgi import WsgiToAsgi
from conftest import StatusApp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import TlsServer, serving_in_thread

from flask_status import Degraded, checks
from flask_status.asgi import StatusMiddleware
from flask_status.fields import is_async_callable

#: The names every test certificate is issued for, but the mismatch tests'.
LOCAL_NAMES = ("localhost", "127.0.0.1")


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def expiring_in(days: int) -> datetime:
    """An expiry ``days`` whole days and 12 hours from now: ``days_left`` reads ``days``."""
    return datetime.now(timezone.utc) + timedelta(days=days, hours=12)


def certificate(
    ca: trustme.CA, *names: str, not_after: datetime, not_before: datetime | None = None
) -> trustme.LeafCert:
    start = not_before or datetime.now(timezone.utc) - timedelta(days=1)
    return ca.issue_cert(*(names or LOCAL_NAMES), not_before=start, not_after=not_after)


def tls_server(leaf: trustme.LeafCert) -> contextlib.AbstractContextManager[int]:
    """A TLS server on 127.0.0.1 presenting ``leaf``, serving while in the block: its port."""
    return serving_in_thread(TlsServer(leaf))


def assert_down(checked_app: StatusApp, error: str) -> None:
    """The route answers 503 DOWN, the field showing ``error``."""
    code, body = checked_app.get()
    assert (code, body["status"]) == (503, "DOWN"), body
    assert body["certificate"] == {"error": error}


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def subject_of(pem: bytes) -> str:
    """The certificate's subject, as ``openssl x509`` prints it (``O=..., OU=...``)."""
    subject = x509.load_pem_x509_certificate(pem).subject
    return ", ".join(f"{item.rfc4514_attribute_name}={item.value!s}" for item in subject)


# -- a certificate the check trusts ------------------------------------------------------


def test_valid_certificate_reports_days_left_and_issuer(
    checked_app: StatusApp, ca: trustme.CA, ca_file: Path
) -> None:
    expires = expiring_in(90)
    leaf = certificate(ca, not_after=expires)
    with tls_server(leaf) as port:
        checked_app.status.add_field(
            "certificate", checks.tls_certificate("127.0.0.1", port, ca_file=ca_file)
        )
        code, body = checked_app.get()
    assert (code, body["status"]) == (200, "OK"), body
    shown = body["certificate"]
    assert set(shown) == {"days_left", "expires_at", "issuer", "subject", "latency_ms"}
    assert shown["days_left"] == 90
    assert shown["expires_at"] == iso(expires)
    assert shown["issuer"] == subject_of(ca.cert_pem.bytes())
    assert shown["subject"] == subject_of(leaf.cert_chain_pems[0].bytes())
    assert shown["latency_ms"] >= 0


def test_the_check_is_async_and_runs_under_status_middleware(
    checked_app: StatusApp, ca: trustme.CA, ca_file: Path
) -> None:
    with tls_server(certificate(ca, not_after=expiring_in(30))) as port:
        check = checks.tls_certificate("localhost", port, ca_file=ca_file)
        assert is_async_callable(check)  # so the engine runs it on the event loop
        checked_app.status.add_field("certificate", check)
        asgi_app = StatusMiddleware(WsgiToAsgi(checked_app.app), checked_app.app)

        async def get() -> httpx.Response:
            transport = httpx.ASGITransport(app=asgi_app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                return await http.get("/api/status")

        response = anyio.run(get)
    assert response.status_code == 200, response.text
    assert response.json()["certificate"]["days_left"] == 30


# -- expiry ------------------------------------------------------------------------------


def test_tls_expiring_raises_degraded(ca: trustme.CA, ca_file: Path) -> None:
    expires = expiring_in(10)
    with tls_server(certificate(ca, not_after=expires)) as port:
        check = checks.tls_certificate("127.0.0.1", port, warn_days=21, ca_file=ca_file)
        with pytest.raises(Degraded) as raised:
            anyio.run(check)
    degraded = raised.value
    assert degraded.reason == (
        f"the certificate of 127.0.0.1:{port} expires in 10 days ({iso(expires)}), "
        "under warn_days 21"
    )
    assert degraded.value["days_left"] == 10
    assert degraded.value["expires_at"] == iso(expires)
    assert "O=trustme" in degraded.value["issuer"]


def test_tls_expiring_shows_degraded_through_the_route(
    checked_app: StatusApp, ca: trustme.CA, ca_file: Path
) -> None:
    """Needs the engine to read ``Degraded``: a degraded critical field leaves the route
    DEGRADED, HTTP 200, and shows the check's value with the reason."""
    expires = expiring_in(10)
    with tls_server(certificate(ca, not_after=expires)) as port:
        checked_app.status.add_field(
            "certificate", checks.tls_certificate("127.0.0.1", port, ca_file=ca_file)
        )
        code, body = checked_app.get()
    assert (code, body["status"]) == (200, "DEGRADED"), body
    shown = body["certificate"]
    assert set(shown) == {"value", "degraded"}, shown
    assert shown["value"]["days_left"] == 10
    assert shown["degraded"] == (
        f"the certificate of 127.0.0.1:{port} expires in 10 days ({iso(expires)}), "
        "under warn_days 21"
    )


def test_about_to_expire_fails(checked_app: StatusApp, ca: trustme.CA, ca_file: Path) -> None:
    expires = expiring_in(3)
    with tls_server(certificate(ca, not_after=expires)) as port:
        checked_app.status.add_field(
            "certificate", checks.tls_certificate("127.0.0.1", port, ca_file=ca_file)
        )
        assert_down(
            checked_app,
            f"CheckFailed: the certificate of 127.0.0.1:{port} expires in 3 days "
            f"({iso(expires)}), under fail_days 7",
        )


def test_thresholds_are_whole_days_left(ca: trustme.CA, ca_file: Path) -> None:
    """With 5 days and 12 hours left: ok at warn_days 5, degraded at 6; failing at
    fail_days 6, not at 5."""
    with tls_server(certificate(ca, not_after=expiring_in(5))) as port:

        def run(warn_days: int, fail_days: int) -> Any:
            check = checks.tls_certificate(
                "127.0.0.1", port, warn_days=warn_days, fail_days=fail_days, ca_file=ca_file
            )
            return anyio.run(check)

        assert run(5, 0)["days_left"] == 5
        assert run(5, 4)["days_left"] == 5
        with pytest.raises(Degraded):
            run(6, 5)
        with pytest.raises(checks.CheckFailed, match="under fail_days 6"):
            run(7, 6)


def test_expired_certificate_fails_as_expired(
    checked_app: StatusApp, ca: trustme.CA, ca_file: Path
) -> None:
    now = datetime.now(timezone.utc)
    expired = certificate(
        ca, not_before=now - timedelta(days=90), not_after=now - timedelta(days=2)
    )
    with tls_server(expired) as port:
        checked_app.status.add_field(
            "certificate", checks.tls_certificate("127.0.0.1", port, ca_file=ca_file)
        )
        assert_down(
            checked_app,
            f"CheckFailed: the certificate of 127.0.0.1:{port} has expired: "
            "certificate has expired",
        )


@dataclass(frozen=True)
class ChainFiles:
    """A certificate chain and its key in PEM files, presented as a trustme.LeafCert is."""

    chain: Path
    key: Path

    def configure_cert(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(self.chain, self.key)


def signed(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: Any,
    not_after: datetime,
    *,
    san: str | None = None,
) -> x509.Certificate:
    """A certificate of ``subject`` for ``key``, signed by ``issuer``: a CA without ``san``,
    else a server certificate for that IP address. With the extensions a strict verifier
    (Python 3.13's default) asks for."""
    is_ca = san is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=365))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if san is not None:
        address = x509.IPAddress(ipaddress.ip_address(san))
        builder = builder.add_extension(x509.SubjectAlternativeName([address]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def test_expired_intermediate_fails_as_expired(
    checked_app: StatusApp, ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    """The server's own certificate has 90 days left, but the CA certificate between it and
    the trusted root expired yesterday."""
    root_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    root = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    intermediate = signed("Intermediate CA", intermediate_key, root.subject, root_key, yesterday)
    server = signed(
        "server",
        server_key,
        intermediate.subject,
        intermediate_key,
        expiring_in(90),
        san="127.0.0.1",
    )
    files = ChainFiles(tmp_path / "chain.pem", tmp_path / "key.pem")
    pem = serialization.Encoding.PEM
    files.chain.write_bytes(server.public_bytes(pem) + intermediate.public_bytes(pem))
    files.key.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with serving_in_thread(TlsServer(files)) as port:
        checked_app.status.add_field(
            "certificate", checks.tls_certificate("127.0.0.1", port, ca_file=ca_file)
        )
        assert_down(
            checked_app,
            f"CheckFailed: the certificate of 127.0.0.1:{port} has expired: "
            "certificate has expired",
        )


# -- handshakes that fail ----------------------------------------------------------------


def test_certificate_not_valid_yet_fails(
    checked_app: StatusApp, ca: trustme.CA, ca_file: Path
) -> None:
    now = datetime.now(timezone.utc)
    early = certificate(ca, not_before=now + timedelta(days=2), not_after=now + timedelta(days=90))
    with tls_server(early) as port:
        checked_app.status.add_field(
            "certificate", checks.tls_certificate("127.0.0.1", port, ca_file=ca_file)
        )
        assert_down(
            checked_app,
            f"CheckFailed: the certificate of 127.0.0.1:{port} is not valid yet: "
            "certificate is not yet valid",
        )


def test_unknown_ca_without_ca_file_says_so(checked_app: StatusApp, ca: trustme.CA) -> None:
    with tls_server(certificate(ca, not_after=expiring_in(90))) as port:
        checked_app.status.add_field("certificate", checks.tls_certificate("127.0.0.1", port))
        assert_down(
            checked_app,
            f"CheckFailed: the certificate of 127.0.0.1:{port} is not signed by a trusted CA: "
            "unable to get local issuer certificate "
            "(trusting the system's CAs; a private CA needs ca_file=)",
        )


def test_certificate_of_another_ca_than_ca_file_fails(ca: trustme.CA, tmp_path: Path) -> None:
    other_ca_file = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca_file))
    with tls_server(certificate(ca, not_after=expiring_in(90))) as port:
        check = checks.tls_certificate("127.0.0.1", port, ca_file=other_ca_file)
        with pytest.raises(checks.CheckFailed) as raised:
            anyio.run(check)
    assert str(raised.value) == (
        f"the certificate of 127.0.0.1:{port} is not signed by a trusted CA: "
        f"unable to get local issuer certificate (trusting ca_file {other_ca_file})"
    )


@pytest.mark.parametrize(
    ("issued_for", "host", "failure"),
    [
        ("localhost", "127.0.0.1", "is issued for another name: IP address mismatch"),
        ("127.0.0.1", "localhost", "is issued for another name: Hostname mismatch"),
    ],
)
def test_certificate_for_another_name_fails(
    checked_app: StatusApp,
    ca: trustme.CA,
    ca_file: Path,
    issued_for: str,
    host: str,
    failure: str,
) -> None:
    with tls_server(certificate(ca, issued_for, not_after=expiring_in(90))) as port:
        checked_app.status.add_field(
            "certificate", checks.tls_certificate(host, port, ca_file=ca_file)
        )
        code, body = checked_app.get()
    assert code == 503
    error = body["certificate"]["error"]
    assert error.startswith(f"CheckFailed: the certificate of {host}:{port} {failure}"), error
    assert repr(host) in error  # OpenSSL names the host the certificate is not valid for


def test_closed_port_fails_fast(checked_app: StatusApp, closed_port: int) -> None:
    checked_app.status.add_field("certificate", checks.tls_certificate("127.0.0.1", closed_port))
    started = time.monotonic()
    code, body = checked_app.get()
    assert time.monotonic() - started < 3  # refused at once, well under the field's 5 s
    assert code == 503
    assert body["certificate"]["error"].startswith(
        f"CheckFailed: cannot connect to 127.0.0.1:{closed_port}: ConnectionRefusedError"
    )


def test_a_server_that_does_not_speak_tls_fails_the_handshake(checked_app: StatusApp) -> None:
    """A server that answers, but not with TLS (an HTTP port, say)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        checked_app.status.add_field("certificate", checks.tls_certificate("127.0.0.1", port))

        def answer_in_plain_text() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        server = threading.Thread(target=answer_in_plain_text)
        server.start()
        try:
            code, body = checked_app.get()
        finally:
            server.join(10)
    assert code == 503
    error = body["certificate"]["error"]
    assert error.startswith(f"CheckFailed: TLS handshake with 127.0.0.1:{port} failed: SSL"), error


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 whose connections the kernel accepts and nobody answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_silent_server_is_bounded_by_the_field_timeout(checked_app: StatusApp) -> None:
    with silent_server() as port:
        checked_app.status.add_field(
            "certificate", checks.tls_certificate("127.0.0.1", port), timeout=0.5
        )
        started = time.monotonic()
        code, body = checked_app.get()
        elapsed = time.monotonic() - started
    assert code == 503
    assert body["certificate"] == {"error": "timed out after 0.5s"}
    assert elapsed < 4  # generous: the handshake was cancelled, not waited for


def test_silent_server_is_bounded_by_the_checks_timeout(checked_app: StatusApp) -> None:
    with silent_server() as port:
        checked_app.status.add_field(
            "certificate", checks.tls_certificate("127.0.0.1", port, timeout=0.3)
        )
        started = time.monotonic()
        assert_down(
            checked_app,
            f"CheckFailed: TLS handshake with 127.0.0.1:{port} failed: no answer within 0.3s",
        )
        assert time.monotonic() - started < 4  # well under the field's 5 s timeout


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"host": ""}, ValueError, "host"),
        ({"host": None}, TypeError, "host"),
        ({"host": "https://example.org/"}, ValueError, "host must be a host name"),
        ({"port": "443"}, TypeError, "port"),
        ({"port": 0}, ValueError, "port"),
        ({"warn_days": 21.5}, TypeError, "warn_days must be an int"),
        ({"warn_days": True}, TypeError, "warn_days must be an int"),
        ({"fail_days": -1}, ValueError, "fail_days must be >= 0"),
        ({"warn_days": 7, "fail_days": 7}, ValueError, "warn_days must be greater than fail_days"),
        ({"warn_days": 3}, ValueError, "warn_days must be greater than fail_days"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"ca_file": 1}, TypeError, "ca_file must be a str or a path"),
    ],
)
def test_validates_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    arguments = {"host": "localhost", **kwargs}
    with pytest.raises(error, match=match):
        checks.tls_certificate(**arguments)


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "not PEM"])
def test_unreadable_ca_file_is_refused_at_setup(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=r"ca_file must be a PEM file of CA certificates"):
        checks.tls_certificate("localhost", ca_file=path)
