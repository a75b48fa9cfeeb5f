#!/usr/bin/env python3
"""Set up and run Sediment from a fresh clone with nothing but Python 3.11.

    python3 scripts/dev.py run   [run_service.py arguments]  install, then serve (default)
    python3 scripts/dev.py test  [pytest arguments]          install, ruff, then the whole suite
                                                             (default: --full crash loops)
    python3 scripts/dev.py bench [--quick]                   install, then every bench/*.py

Creates ``.venv`` beside the repository and installs the project into it (again only when
``pyproject.toml`` changed). Uses only the standard library, so it runs before anything is
installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".sediment-installed"


def ensure_environment(extras: str) -> None:
    """Create the virtual environment and install the project with ``extras``."""
    if sys.version_info < (3, 11):
        sys.exit(f"sediment: Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing Sediment and its dependencies (first run only)", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                   check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", f".[{extras}]"],
                   check=True, cwd=REPO)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("run", [])
    if command == "run":
        ensure_environment("test")
        return subprocess.call([str(PYTHON), str(REPO / "run_service.py"), *rest], cwd=REPO)
    if command == "test":
        ensure_environment("test")
        for check in (["ruff", "check", "."], ["mypy"]):
            code = subprocess.call([str(PYTHON), "-m", *check], cwd=REPO)
            if code != 0:
                return code
        return subprocess.call([str(PYTHON), "-m", "pytest", *(rest or ["--full"])], cwd=REPO)
    if command == "bench":
        ensure_environment("test")
        for script in sorted((REPO / "bench").glob("*_bench.py")):
            print(f"== {script.name} {' '.join(rest)}", flush=True)
            code = subprocess.call([str(PYTHON), str(script), *rest], cwd=REPO)
            if code != 0:
                return code
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
