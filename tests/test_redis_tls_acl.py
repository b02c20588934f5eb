"""Store URLs read as redis-py reads them, and the client against real TLS, ACL and unix-socket servers.

The TLS servers need a redis-server built with TLS (Debian's); without one these tests fail
with a message saying so, they are not skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.redis_server import redis_server_binary
from harness.redis_tls import (
    RedisServer,
    TlsFiles,
    make_certificates,
    running_redis_server,
    tls_redis_server_binary,
)
from statefulproxy.stores.redis_address import address_from_url
from statefulproxy.stores.resp import RespAddress, RespAuthError, RespClient, RespError

pytestmark = pytest.mark.anyio

PASSWORD = "default-secret"
APP_PASSWORD = "app-secret"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


# ---------------------------------------------------------------- parsing URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://u:p%40ss@cache:6380/3",
            {"host": "cache", "port": 6380, "db": 3, "username": "u", "password": "p@ss"},
        ),
        ("redis://:pw@cache?db=4", {"username": None, "password": "pw", "db": 4, "port": 6379}),
        ("redis://cache/0?password=qpw&username=qu", {"username": "qu", "password": "qpw"}),
        ("redis://cache?socket_timeout=1.5&socket_connect_timeout=0.5", {"timeout": 1.5, "connect_timeout": 0.5}),
        ("redis://cache?socket_keepalive=false&client_name=api", {"keepalive": False, "client_name": "api"}),
        ("redis://cache?max_connections=3&protocol=2", {"max_connections": 3}),
        ("redis://cache?retry_on_timeout=false&health_check_interval=0", {"timeout": None}),
        ("unix:///run/redis/redis.sock?db=2", {"path": "/run/redis/redis.sock", "db": 2, "password": None}),
        ("unix://:pw@/run/redis.sock?db=5", {"path": "/run/redis.sock", "db": 5, "password": "pw"}),
        ("unix://app:pw@/run/redis.sock", {"path": "/run/redis.sock", "username": "app", "password": "pw"}),
    ],
)
def test_urls_are_read_as_redis_py_reads_them(url: str, expected: dict[str, Any]) -> None:
    address = address_from_url(url)
    assert {key: getattr(address, key) for key in expected} == expected
    assert address.ssl is None


def test_the_password_is_kept_out_of_the_address_repr() -> None:
    assert "s3cret" not in repr(address_from_url("redis://app:s3cret@cache/1"))


@pytest.mark.parametrize(
    ("query", "verify_mode", "check_hostname"),
    [
        ("", ssl.CERT_REQUIRED, True),
        ("?ssl_cert_reqs=required", ssl.CERT_REQUIRED, True),
        ("?ssl_cert_reqs=optional", ssl.CERT_OPTIONAL, True),
        ("?ssl_cert_reqs=none", ssl.CERT_NONE, False),
        ("?ssl_cert_reqs=none&ssl_check_hostname=true", ssl.CERT_NONE, False),
        ("?ssl_check_hostname=false", ssl.CERT_REQUIRED, False),
        ("?ssl_min_version=772", ssl.CERT_REQUIRED, True),
    ],
)
def test_rediss_urls_build_the_tls_context_redis_py_would(
    query: str, verify_mode: ssl.VerifyMode, check_hostname: bool
) -> None:
    context = address_from_url(f"rediss://cache:6390/1{query}").ssl
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (verify_mode, check_hostname)
    if "ssl_min_version" in query:
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("redis://cache?protocol=3", "protocol=3"),
        ("redis://cache?frobnicate=1", "frobnicate"),
        ("redis://cache?retry_on_timeout=true", "retry_on_timeout"),
        ("redis://cache?health_check_interval=30", "health_check_interval"),
        ("redis://cache?socket_read_size=65536", "socket_read_size"),
        ("redis://cache?decode_responses=true", "decode_responses"),
        ("redis://cache?timeout=3", "timeout"),
        ("redis://cache?socket_timeout=0", "socket_timeout"),
        ("redis://cache?max_connections=0", "max_connections"),
        ("redis://cache?db=-1", "db"),
        ("redis://cache?db=two", "db"),
        ("redis://cache/sessions", "db"),
        ("redis://cache?path=/tmp/redis.sock", "path"),
        ("redis://cache?host=other", "host"),
        ("redis://cache?connection_class=x", "connection_class"),
        ("unix:///run/redis.sock?path=/tmp/other.sock", "path"),
        ("redis://cache?db=1&db=2", "db"),
        ("redis://cache/1?db=2", "db"),
        ("redis://:pw@cache?password=other", "password"),
        ("redis://app:pw@cache?username=other", "username"),
        ("redis://cache?ssl_ca_certs=/tmp/ca.pem", "ssl_ca_certs"),
        ("rediss://cache?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
        ("rediss://cache?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs"),
        ("rediss://cache?ssl_certfile=/nonexistent/client.pem", "ssl_certfile"),
        ("rediss://cache?ssl_keyfile=/tmp/client.key", "ssl_keyfile"),
        ("rediss://cache?ssl_min_version=5", "ssl_min_version"),
        ("rediss://cache?ssl_ciphers=NOT-A-CIPHER", "ssl_ciphers"),
        ("unix://", "unix://"),
        ("unix://cache/run/redis.sock", "unix://"),
        ("unix:///run/redis.sock?port=6379", "port"),
        ("unix:///run/redis.sock?ssl_cert_reqs=none", "ssl_cert_reqs"),
        ("memcached://cache", "schemes"),
    ],
)
def test_options_that_cannot_be_honoured_are_refused_by_name(url: str, option: str) -> None:
    with pytest.raises(ValueError, match=option.replace("?", r"\?")):
        address_from_url(url)


# ---------------------------------------------------------------- ACL users, passwords, unix socket


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    with running_redis_server(redis_server_binary(), extra_args=["--requirepass", PASSWORD]) as server:
        yield server


@pytest.fixture(scope="module")
async def acl_url(acl_server: RedisServer) -> str:
    base = f"redis://127.0.0.1:{acl_server.port}"
    admin = RespClient(address_from_url(f"redis://:{PASSWORD}@127.0.0.1:{acl_server.port}/0"))
    assert await admin.execute(b"ACL", b"SETUSER", b"app", b"on", f">{APP_PASSWORD}", b"~*", b"+@all") == b"OK"
    await admin.aclose()
    return base


async def whoami_and_db(address: RespAddress) -> tuple[bytes, bytes]:
    client = RespClient(address)
    try:
        user = await client.execute(b"ACL", b"WHOAMI")
        info: bytes = await client.execute(b"CLIENT", b"INFO")
    finally:
        await client.aclose()
    return user, next(field for field in info.split() if field.startswith(b"db="))


async def test_the_default_users_password_and_the_database(acl_url: str) -> None:
    address = address_from_url(f"{acl_url.replace('//', f'//:{PASSWORD}@')}/3")
    assert await whoami_and_db(address) == (b"default", b"db=3")


async def test_an_acl_user_and_its_password(acl_url: str) -> None:
    address = address_from_url(f"{acl_url.replace('//', f'//app:{APP_PASSWORD}@')}?db=2")
    assert await whoami_and_db(address) == (b"app", b"db=2")


@pytest.mark.parametrize("credentials", [":wrong@", "app:wrong@", "nobody:x@"])
async def test_refused_credentials_raise_one_auth_error_and_log_nothing(
    acl_url: str, credentials: str, caplog: pytest.LogCaptureFixture
) -> None:
    # db 1 and a client name: replies queued behind the refused AUTH must be retrieved too
    address = address_from_url(f"{acl_url.replace('//', f'//{credentials}')}/1?client_name=refused")
    client = RespClient(address, pool_size=2)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with pytest.raises(RespAuthError, match="refused the credentials") as refused:
                await client.execute(b"PING")
            assert "\n" not in str(refused.value)
        outcomes = await asyncio.gather(*(client.execute(b"GET", b"k") for _ in range(10)), return_exceptions=True)
        assert all(isinstance(outcome, RespAuthError) for outcome in outcomes), outcomes
        await client.aclose()
        del outcomes, refused
        gc.collect()
        await asyncio.sleep(0)  # let the loop run anything the collection scheduled
        gc.collect()
    assert not [record for record in caplog.records if "never retrieved" in record.getMessage()]
    assert not caplog.records
    assert not caught


async def test_no_password_is_an_auth_error_on_the_first_command(acl_url: str) -> None:
    client = RespClient(address_from_url(f"{acl_url}/0"))
    with pytest.raises(RespAuthError, match="NOAUTH"):
        await client.execute(b"PING")
    await client.aclose()


async def test_an_auth_error_is_a_resp_error() -> None:
    assert issubclass(RespAuthError, RespError)


@pytest.fixture(scope="module")
def unix_server() -> Iterator[RedisServer]:
    with running_redis_server(
        redis_server_binary(), plain=False, unix_socket=True, extra_args=["--requirepass", PASSWORD]
    ) as server:
        yield server


@pytest.mark.parametrize("form", ["unix://:{pw}@{path}?db=2", "unix://{path}?db=2&password={pw}"])
async def test_a_unix_socket_with_a_password_and_a_database(unix_server: RedisServer, form: str) -> None:
    address = address_from_url(form.format(pw=PASSWORD, path=unix_server.unix_socket))
    assert address.path == str(unix_server.unix_socket)
    client = RespClient(address)
    try:
        assert await client.execute(b"SET", b"unix-key", b"here") == b"OK"
        info: bytes = await client.execute(b"CLIENT", b"INFO")
        assert b"db=2" in info.split()
        assert await client.execute(b"GET", b"unix-key") == b"here"
    finally:
        await client.aclose()


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_binary() -> str:
    try:
        return tls_redis_server_binary()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls_binary: str, tls_files: TlsFiles) -> Iterator[RedisServer]:
    with running_redis_server(tls_binary, plain=False, tls=tls_files, tls_auth_clients="no") as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tls_binary: str, tls_files: TlsFiles) -> Iterator[RedisServer]:
    with running_redis_server(tls_binary, plain=False, tls=tls_files, tls_auth_clients="yes") as server:
        yield server


async def ping(address: RespAddress) -> Any:
    client = RespClient(address, connect_timeout=5.0)
    try:
        return await client.execute(b"PING")
    finally:
        await client.aclose()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tls_with_the_server_verified_against_the_ca(
    tls_server: RedisServer, tls_files: TlsFiles, host: str
) -> None:
    address = address_from_url(f"rediss://{host}:{tls_server.tls_port}/0?ssl_ca_certs={tls_files.ca}")
    assert await ping(address) == b"PONG"


async def test_tls_refuses_a_server_the_ca_did_not_sign(tls_server: RedisServer) -> None:
    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await ping(address_from_url(f"rediss://127.0.0.1:{tls_server.tls_port}/0"))
    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await ping(address_from_url(f"rediss://127.0.0.1:{tls_server.tls_port}/0?ssl_cert_reqs=optional"))


async def test_tls_checks_the_hostname_unless_told_not_to(tls_server: RedisServer, tls_files: TlsFiles) -> None:
    url = f"rediss://127.0.0.1:{tls_server.tls_port}/0?ssl_ca_certs={tls_files.ca}"
    elsewhere = dataclasses.replace(address_from_url(url), server_hostname="redis.invalid")
    with pytest.raises(ConnectionError, match=r"(?i)hostname mismatch"):
        await ping(elsewhere)
    unchecked = dataclasses.replace(
        address_from_url(f"{url}&ssl_check_hostname=false"), server_hostname="redis.invalid"
    )
    assert await ping(unchecked) == b"PONG"


async def test_tls_without_certificate_checks(tls_server: RedisServer) -> None:
    address = address_from_url(f"rediss://127.0.0.1:{tls_server.tls_port}/0?ssl_cert_reqs=none")
    assert await ping(dataclasses.replace(address, server_hostname="redis.invalid")) == b"PONG"


async def test_tls_client_certificate_authentication(mtls_server: RedisServer, tls_files: TlsFiles) -> None:
    base = f"rediss://127.0.0.1:{mtls_server.tls_port}/0?ssl_ca_certs={tls_files.ca}"
    with pytest.raises(ConnectionError):
        await ping(address_from_url(base))
    with_certificate = f"{base}&ssl_certfile={tls_files.client_cert}&ssl_keyfile={tls_files.client_key}"
    assert await ping(address_from_url(with_certificate)) == b"PONG"
    encrypted_key = (
        f"{base}&ssl_certfile={tls_files.client_cert}&ssl_keyfile={tls_files.client_key_encrypted}"
        f"&ssl_password={tls_files.client_key_password}"
    )
    assert await ping(address_from_url(encrypted_key)) == b"PONG"


def test_a_wrong_key_password_is_refused_at_startup(tls_files: TlsFiles) -> None:
    url = (
        f"rediss://127.0.0.1:6390/0?ssl_certfile={tls_files.client_cert}"
        f"&ssl_keyfile={tls_files.client_key_encrypted}&ssl_password=wrong"
    )
    with pytest.raises(ValueError, match="ssl_certfile"):
        address_from_url(url)


def test_a_redis_server_without_tls_is_not_taken_for_one(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text('#!/bin/sh\necho "\'tls-port \\"0\\"\' Bad directive or wrong number of arguments"\nexit 1\n')
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="install Debian's redis-server"):
        tls_redis_server_binary([str(fake)])
