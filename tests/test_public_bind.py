"""``serve`` on a public address refuses the demo's unsafe settings, naming each one."""

from __future__ import annotations

import pytest

from sediment.core.public_bind import is_loopback, public_bind_problems
from sediment.core.settings import load_settings
from tests.support import REPO, run_cli

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
