from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from statefulproxy import __version__
from statefulproxy.cli import main
from statefulproxy.errors import ConfigError
from statefulproxy.server import ClientTimeoutsProtocol
from statefulproxy.settings import Settings


def clean_environ() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("STATEFULPROXY_")}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statefulproxy", *args],
        capture_output=True,
        text=True,
        env={**clean_environ(), **(env or {})},
        timeout=30,
        check=False,
    )


@pytest.fixture(autouse=True)
def no_statefulproxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("STATEFULPROXY_"):
            monkeypatch.delenv(name)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Settings] = []

    def __call__(self, settings: Settings) -> None:
        self.calls.append(settings)


# --- real processes: failures before the app is needed -------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--store", "bogus://x", "--upstream", "http://x"],
            "statefulproxy: error: store: must be a memory://, redis://, rediss://, unix://, redis+cluster:// "
            "or redis+sentinel:// URL (got 'bogus://x' from --store)",
        ),
        (
            [],
            "statefulproxy: error: upstream: required "
            "(--upstream, STATEFULPROXY_UPSTREAM or `upstream` in the config file), unless `routes` are set",
        ),
        (
            ["--upstream", "http://x", "--port", "0"],
            "statefulproxy: error: port: must be an integer from 1 to 65535 (got '0' from --port)",
        ),
        (
            ["--upstream", "http://x", "--port", "http"],
            "statefulproxy: error: port: must be an integer from 1 to 65535 (got 'http' from --port)",
        ),
        (
            ["--upstream", "ftp://x"],
            "statefulproxy: error: upstream: must be an http:// or https:// URL (got 'ftp://x' from --upstream)",
        ),
        (
            ["--upstream", "http://x", "--frobnicate"],
            "statefulproxy: error: unrecognized arguments: --frobnicate (see statefulproxy --help)",
        ),
        (
            ["--upstream"],
            "statefulproxy: error: argument --upstream: expected one argument (see statefulproxy --help)",
        ),
    ],
    ids=["bad-store", "no-upstream", "port-zero", "port-not-int", "bad-upstream", "unknown-flag", "flag-no-value"],
)
def test_bad_invocation_is_one_line_and_status_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr == message + "\n"
    assert result.stdout == ""


def test_bad_environment_and_config_file_fail_the_same_way(tmp_path: Path) -> None:
    result = run_cli("--upstream", "http://x", env={"STATEFULPROXY_SESSION_TTL": "forever"})
    assert result.returncode == 2
    assert result.stderr.startswith("statefulproxy: error: session_ttl: must be a positive number of seconds")
    assert result.stderr.count("\n") == 1

    config = tmp_path / "c.yaml"
    config.write_text("upstream: http://x\nsesion_ttl: 1h\n", encoding="utf-8")
    result = run_cli(env={"STATEFULPROXY_CONFIG": str(config)})
    assert result.returncode == 2
    assert result.stderr == (
        f"statefulproxy: error: config file {config}: unknown key 'sesion_ttl' (did you mean 'session_ttl'?)\n"
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"statefulproxy {__version__}\n"


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--upstream URL", "--store URL", "--host", "--port", "--config FILE", "--log-level", "--version"):
        assert flag in out


# --- the runner seam ------------------------------------------------------------


def test_runner_receives_settings_from_flags() -> None:
    run = Recorder()
    status = main(
        [
            *("--upstream", "http://localhost:11434/", "--store", "redis://r:6379/0"),
            *("--host", "0.0.0.0", "--port", "9000", "--log-level", "DEBUG"),
        ],
        run=run,
    )
    assert status == 0
    expected = Settings(
        upstream="http://localhost:11434", store="redis://r:6379/0", host="0.0.0.0", port=9000, log_level="debug"
    )
    assert run.calls == [expected]


def test_runner_precedence_flag_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("upstream: http://file\nport: 7001\nhost: 10.0.0.1\nsession_ttl: 1h\n", encoding="utf-8")
    monkeypatch.setenv("STATEFULPROXY_CONFIG", str(config))
    monkeypatch.setenv("STATEFULPROXY_PORT", "7002")
    monkeypatch.setenv("STATEFULPROXY_UPSTREAM", "http://env")
    run = Recorder()
    assert main(["--upstream", "http://flag"], run=run) == 0
    [settings] = run.calls
    assert settings.upstream == "http://flag"
    assert settings.port == 7002
    assert settings.host == "10.0.0.1"
    assert settings.session_ttl == 3600.0
    assert settings.store == "memory://"


def test_config_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("upstream: https://openrouter.ai/api/\naccess_log: true\n", encoding="utf-8")
    run = Recorder()
    assert main(["--config", str(config)], run=run) == 0
    assert run.calls == [Settings(upstream="https://openrouter.ai/api", access_log=True)]


def test_runner_not_called_on_error(capsys: pytest.CaptureFixture[str]) -> None:
    run = Recorder()
    assert main(["--store", "bogus://"], run=run) == 2
    assert run.calls == []
    assert capsys.readouterr().err.startswith("statefulproxy: error: store: ")


def test_config_error_from_the_runner_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def run(settings: Settings) -> None:
        raise ConfigError("store: redis URL has no host (got 'redis://' from --store)")

    assert main(["--upstream", "http://x"], run=run) == 2
    captured = capsys.readouterr()
    assert captured.err == "statefulproxy: error: store: redis URL has no host (got 'redis://' from --store)\n"


def test_default_runner_calls_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    app_module = types.ModuleType("statefulproxy.app")
    made_for: list[Settings] = []

    def create_app(settings: Settings) -> object:
        made_for.append(settings)
        return "the app"

    app_module.create_app = create_app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "statefulproxy.app", app_module)
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))

    assert main(["--upstream", "http://x", "--port", "8123", "--log-level", "warning"]) == 0

    assert made_for == [Settings(upstream="http://x", port=8123, log_level="warning")]
    [(app, kwargs)] = calls
    assert app == "the app"
    log_config = kwargs.pop("log_config")
    assert kwargs == {
        "host": "127.0.0.1",
        "port": 8123,
        "lifespan": "on",
        "log_level": "warning",
        "access_log": False,
        "loop": "uvloop",
        "http": ClientTimeoutsProtocol,
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
    }
    assert log_config["loggers"]["statefulproxy"]["level"] == "WARNING"
    assert "statefulproxy" not in uvicorn.config.LOGGING_CONFIG["loggers"]


def test_main_module_does_not_run_on_import() -> None:
    import statefulproxy.__main__ as entry

    assert entry.main is main


def test_workers_with_the_memory_store_are_refused() -> None:
    result = run_cli("--upstream", "http://x", "--workers", "2")
    assert result.returncode == 2
    assert result.stderr == (
        "statefulproxy: error: workers: 2 workers need a shared store (redis://...); memory:// lives in one process\n"
    )


def test_workers_run_each_their_own_process_on_one_port(redis_url: str, tmp_path: Path) -> None:
    import httpx2

    from harness.servers import serve
    from harness.upstream import ScriptedUpstream

    upstream = ScriptedUpstream()
    with serve(upstream, loop="uvloop") as upstream_url:
        with socket_port() as port:
            pass
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "statefulproxy",
                "--upstream",
                upstream_url,
                "--store",
                redis_url,
                "--port",
                str(port),
            ],
            env={**clean_environ(), "STATEFULPROXY_WORKERS": "2", "STATEFULPROXY_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, process)
            workers = child_pids(process.pid)
            assert len(workers) == 2
            with httpx2.Client(base_url=url, timeout=10, headers={"session-id": f"w-{port}"}) as http:
                for turn in range(6):  # whichever worker answers, each turn sees every earlier one
                    body = {"model": "m", "messages": [{"role": "user", "content": f"t{turn}"}]}
                    assert http.post("/v1/chat/completions", json=body).status_code == 200
                    assert len(upstream.chat_requests[-1].json["messages"]) == 2 * turn + 1
        finally:
            process.terminate()
            assert process.wait(timeout=15) == 0


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield int(probe.getsockname()[1])


def wait_until_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    import httpx2

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the proxy exited"
        with contextlib.suppress(httpx2.TransportError):
            if httpx2.get(url + "/healthz").status_code == 200:
                return
        time.sleep(0.05)  # polling the process until it listens, not synchronising a test step
    raise AssertionError("the proxy did not start")


def child_pids(pid: int) -> list[int]:
    """The worker processes of ``pid`` (multiprocessing's resource tracker is a child too)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return [child for child in found if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def test_a_refused_store_password_is_one_line_and_status_2() -> None:
    import redis

    from harness.redis_server import running_redis

    with running_redis() as url:
        with redis.Redis.from_url(url) as admin:
            admin.config_set("requirepass", "right-password")
        wrong = url.replace("redis://", "redis://:wrong-password@")
        result = run_cli("--upstream", "http://x", "--store", wrong)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("statefulproxy: error: store: Redis refused the credentials")
    assert "wrong-password" not in result.stderr
