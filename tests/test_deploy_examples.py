"""The systemd unit and the container file in docs/deploy/ are valid, and start what the
README says.

No service manager or container engine runs here: the unit goes through
``systemd-analyze verify`` where it exists (with this checkout's interpreter standing in for
the installed one), and always through a structural parse; the container file through a
parser of its instructions that checks what a build would need from the repository.
"""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

DEPLOY = REPO / "docs" / "deploy"
UNIT = DEPLOY / "sediment.service"
CONTAINERFILE = DEPLOY / "Containerfile"
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK",
                "SHELL"}


def unit_sections() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_systemd_unit_parses_and_serves() -> None:
    unit = unit_sections()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[-1] == "serve" and command[1].endswith("run_service.py")
    assert Path(command[0]).is_absolute()
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads the reports
    assert service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed; the structural test still ran")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    text = UNIT.read_text().replace("/opt/sediment/.venv/bin/python",
                                    str(Path(sys.executable).resolve()))
    text = text.replace("User=sediment", "User=root").replace("Group=sediment", "Group=root")
    copy = tmp_path / "sediment.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sediment.service" not in result.stderr, result.stderr  # no warning about it


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in CONTAINERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the file ends inside a continued line"
    return [(text.split(None, 1)[0], text.split(None, 1)[1]) for text in logical]


def test_the_containerfile_is_well_formed_and_builds_from_this_repository() -> None:
    instructions = containerfile_instructions()
    assert instructions[0][0] == "FROM"
    for name, arguments in instructions:
        assert name in INSTRUCTIONS, f"unknown instruction {name}"
        if name in ("CMD", "ENTRYPOINT"):
            assert json.loads(arguments), f"{name} is not an exec-form JSON array"
        if name == "HEALTHCHECK":
            assert "/livez" in arguments
            exec_form = arguments[arguments.index("CMD") + 3:].strip()
            assert json.loads(exec_form)[0] == "python"
        if name == "COPY":
            *sources, _ = shlex.split(arguments)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    names = [name for name, _ in instructions]
    assert names.count("USER") == 1 and names.index("USER") > names.index("RUN")
    assert json.loads(dict(instructions)["CMD"]) == ["python", "run_service.py", "serve"]
    environment = " ".join(args for name, args in instructions if name == "ENV")
    for setting in ("SEDIMENT_SERVICE__HOST=0.0.0.0", "SEDIMENT_SERVICE__SEED_WHEN_EMPTY=false",
                    "SEDIMENT_AUTH__ENABLED=true"):
        assert setting in environment
