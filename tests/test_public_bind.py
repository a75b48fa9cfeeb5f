"""``serve`` on a public address refuses the demo's unsafe settings, naming each one."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sediment.core.public_bind import is_loopback, public_bind_problems
from sediment.core.settings import load_settings
from tests.support import REPO, free_port, run_cli

SAFE = {"SEDIMENT_AUTH__ENABLED": "true", "SEDIMENT_SERVICE__SECRET_KEY": "x" * 40,
        "SEDIMENT_SERVICE__SEED_WHEN_EMPTY": "false"}


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.0.1", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
    ("db.example.com", False), ("", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_shipped_settings_refuse_a_public_address_naming_every_setting() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "8999")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert all(line.startswith("sediment: ") for line in lines)
    for line, key in zip(lines, ("auth.enabled", "service.secret_key",
                                 "service.seed_when_empty"), strict=True):
        assert key in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("unsafe", list(SAFE))
def test_each_unsafe_setting_alone_is_refused(unsafe: str) -> None:
    environ = {**SAFE}
    del environ[unsafe]
    settings = load_settings(REPO / "settings.toml", environ=environ)
    (problem,) = public_bind_problems(settings, "0.0.0.0")
    assert unsafe.removeprefix("SEDIMENT_").replace("__", ".").lower() in problem


def test_safe_settings_or_loopback_pass() -> None:
    assert public_bind_problems(load_settings(REPO / "settings.toml", environ=SAFE),
                                "0.0.0.0") == []
    assert public_bind_problems(load_settings(REPO / "settings.toml", environ={}),
                                "127.0.0.1") == []


def test_an_address_in_use_stops_serve_in_one_line_before_any_work(tmp_path: Path) -> None:
    """The most common failure to start (another Sediment still running) was waitress's
    traceback ("OSError: [Errno 98] Address already in use"), and only after the databases
    had been migrated and seeded; with workers, gunicorn's log alone said so."""
    files = {"SEDIMENT_DATABASE__PRIMARY_URL": f"sqlite:///{tmp_path / 'p.db'}",
             "SEDIMENT_DATABASE__ARCHIVE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for workers in ("1", "2"):
            result = run_cli("serve", "--port", port, "--workers", workers, env=files,
                             timeout=60)
            assert result.returncode == 1
            assert result.stderr.strip().splitlines()[-1] == (
                f"sediment: cannot listen on 127.0.0.1:{port} (service.host, service.port; "
                "serve --host, --port): address already in use; another process is listening "
                "there (another Sediment still running?): stop it, or choose another port")
            assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing migrated, nothing seeded


@pytest.mark.parametrize(("host", "reason"), [
    ("no-such-host.invalid", "the host 'no-such-host.invalid' does not resolve"),
    ("192.0.2.1", "cannot assign requested address"),  # TEST-NET-1: no machine's own
])
def test_a_host_serve_cannot_listen_on_is_named(host: str, reason: str) -> None:
    result = run_cli("serve", "--host", host, "--port", str(free_port()),
                     env={**SAFE, "SEDIMENT_SERVICE__ALLOW_INSECURE": "true"}, timeout=60)
    assert result.returncode == 1
    assert f"sediment: cannot listen on {host}:" in result.stderr
    assert reason in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_serve_workers_beyond_the_bound_are_refused_before_anything_starts(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``service.workers`` stops at 1,024, but ``serve --workers 2000`` went past the
    settings and forked 2,000 gunicorn workers until the machine ran out of memory."""
    from sediment.cli import build_parser
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--workers", "2000"])
    assert exited.value.code == 2
    assert "argument --workers: '2000' is more than 1,024" in capsys.readouterr().err
