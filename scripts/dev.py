#!/usr/bin/env python3
"""Set up and run Sediment from a fresh clone with nothing but Python 3.11.

    python3 scripts/dev.py run   [run_service.py arguments]  install, then serve (default)
    python3 scripts/dev.py test  [pytest arguments]          install (and Debian's chromium for
                                                             the browser tests), ruff, mypy, then
                                                             the whole suite in full mode, its
                                                             SQLite and PostgreSQL halves at once
                                                             (with arguments: pytest with them)
    python3 scripts/dev.py bench [--quick]                   install, then every bench/*.py
                                                             (and in its --sqlite mode
                                                             where it has one)

Creates ``.venv`` beside the repository and installs the project into it (again only when
``pyproject.toml`` changed). Uses only the standard library, so it runs before anything is
installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".sediment-installed"
#: Debian's Chromium, which the browser tests drive (never a browser Playwright downloads).
CHROMIUM = Path("/usr/bin/chromium")


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


def ensure_chromium() -> None:
    """Install Debian's ``chromium`` package for tests/test_ui_browser.py when it is missing
    and apt-get may be run (as root, or through password-less sudo). Otherwise say why: the
    browser tests are then skipped, or fail under ``CI=true``."""
    if CHROMIUM.exists() or sys.platform != "linux":
        return
    apt = shutil.which("apt-get")
    become = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if apt is None or become is None:
        print(f"note: {CHROMIUM} is missing and apt-get cannot be run here; install Debian's "
              "chromium package for the browser tests", flush=True)
        return
    print("installing Debian's chromium for the browser tests (first run only)", flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*become, apt, "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.call(install, env=environment, stdout=subprocess.DEVNULL) != 0:
        subprocess.call([*become, apt, "update", "-q"], env=environment,
                        stdout=subprocess.DEVNULL)
        subprocess.call(install, env=environment, stdout=subprocess.DEVNULL)
    if not CHROMIUM.exists():
        print(f"note: installing chromium failed; the browser tests need {CHROMIUM}",
              flush=True)


def run_both_halves() -> int:
    """The whole suite in full mode as two pytest processes at once: the SQLite half (with
    the tests that use no database) here, the PostgreSQL half beside it into a log that is
    printed when it ends. The halves share nothing (their own databases, files and ports)
    and most of their time is spent waiting on subprocesses and databases, so together they
    take little more than the longer one."""
    pytest = [str(PYTHON), "-m", "pytest", "--full"]
    log = Path(tempfile.gettempdir()) / f"sediment-tests-postgres-{os.getpid()}.log"
    print(f"running the SQLite half here and the PostgreSQL half beside it (log: {log})",
          flush=True)
    with log.open("wb") as output:
        postgres = subprocess.Popen([*pytest, "--backend", "postgres", "--database-tests-only"],
                                    cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        try:
            sqlite_code = subprocess.call([*pytest, "--backend", "sqlite"], cwd=REPO)
            postgres_code = postgres.wait()
        finally:
            if postgres.poll() is None:
                postgres.terminate()
                postgres.wait()
    print("\n==== the PostgreSQL half ====", flush=True)
    sys.stdout.write(log.read_text(errors="replace"))
    log.unlink()
    print(f"\nSQLite half: exit {sqlite_code}; PostgreSQL half: exit {postgres_code}",
          flush=True)
    return sqlite_code or postgres_code


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("run", [])
    if command == "run":
        ensure_environment("test")
        return subprocess.call([str(PYTHON), str(REPO / "run_service.py"), *rest], cwd=REPO)
    if command == "test":
        ensure_environment("test")
        ensure_chromium()
        for check in (["ruff", "check", "."], ["mypy"]):
            code = subprocess.call([str(PYTHON), "-m", *check], cwd=REPO)
            if code != 0:
                return code
        if rest:
            return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=REPO)
        return run_both_halves()
    if command == "bench":
        ensure_environment("test")
        for script in sorted((REPO / "bench").glob("*_bench.py")):
            # A benchmark with a SQLite mode runs in it too: the embedded default's ratios.
            modes = [[], ["--sqlite"]] if '"--sqlite"' in script.read_text() else [[]]
            for mode in modes:
                arguments = [*rest, *mode]
                print(f"== {script.name} {' '.join(arguments)}", flush=True)
                code = subprocess.call([str(PYTHON), str(script), *arguments], cwd=REPO)
                if code != 0:
                    return code
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
