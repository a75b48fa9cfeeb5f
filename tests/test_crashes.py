"""Kill the real CLI at every dangerous point, many times; one completed run then repairs all.

Quick mode kills a few times per point and backend; ``--full`` at least 25 times.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from archive.locks import runner_lock
from reporting.app import create_app
from sediment.core.migrations import upgrade_all
from tests.archiving import NOW, assert_invariants, run, seed_shop, snapshot
from tests.support import (
    REPO,
    DatabaseFactory,
    empty_all_tables,
    engines_of,
    make_settings,
    policies_of,
)

POINTS = ("after_select", "after_archive_commit", "before_primary_commit", "after_primary_commit",
          "random")
BATCHES = {"SEDIMENT_POLICY__ORDERS__BATCH_SIZE": "3",
           "SEDIMENT_POLICY__EVENTS__BATCH_SIZE": "25"}


@pytest.mark.parametrize("point", POINTS)
def test_crashes_lose_and_duplicate_nothing(
    databases: DatabaseFactory, point: str, request: pytest.FixtureRequest
) -> None:
    wanted = 25 if request.config.getoption("--full") else 3
    urls = databases.pair(f"crash_{point}")
    app = create_app(make_settings(*urls, **BATCHES))
    env = {**os.environ, "SEDIMENT_DATABASE__PRIMARY_URL": urls[0],
           "SEDIMENT_DATABASE__ARCHIVE_URL": urls[1], "SEDIMENT_SERVICE__LOG_LEVEL": "WARNING",
           **BATCHES}
    if point == "random":
        # A run of this shop takes ~0.2 s after a ~0.4 s start; a short pause between
        # batches (no transaction open) stretches it so random kills land inside runs.
        env["SEDIMENT_ARCHIVE__THROTTLE"] = "15ms"
    rng = random.Random(f"{point}-{databases.backend}")
    killed = rounds = 0
    engines = engines_of(app)
    upgrade_all(engines)
    primary, archive = engines.primary, engines.archive
    policies = list(policies_of(app))
    while killed < wanted:
        rounds += 1
        assert rounds <= 2 * wanted, "runs keep finishing before the crash point"
        empty_all_tables(engines)
        seed_shop(primary, archive)
        original = snapshot(primary)
        while killed < wanted:
            code = crash_once(point, rng, env)
            if code == 0:
                break  # this round's aged rows are all moved: start a fresh round
            assert code == -9, f"the CLI exited {code} instead of being killed"
            killed += 1
        for policy in policies:
            wait_for_lock(primary, policy.name)
            assert run(app, primary, archive, policy).status == "done"
        assert_invariants(original, primary, archive, policies)
        for policy in policies:
            assert run(app, primary, archive, policy).rows == 0
    engines.dispose()
    assert killed >= wanted


def wait_for_lock(primary: sa.Engine, policy: str, seconds: float = 10) -> None:
    """Wait until the killed runner's lock is gone.

    PostgreSQL ends a dead client's backend, and with it the advisory lock, only when it
    notices the closed socket: usually within milliseconds, not instantly. A runner started
    in that window rightly exits ``lock_busy``; the repair run here waits instead.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with runner_lock(primary, policy) as free:
            if free:
                return
        time.sleep(0.05)
    pytest.fail(f"the runner lock of {policy} was still held {seconds}s after the crash")


def crash_once(point: str, rng: random.Random, env: dict[str, str],
               extra: Sequence[str] = ()) -> int:
    args = ["--now", NOW.isoformat(), *extra]
    driver = [sys.executable, "-m", "tests.crash_driver"]
    if point == "random":
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen([*driver, "none", "0", *args], cwd=REPO, env=env,
                                       stdout=subprocess.DEVNULL, stderr=errors)
            time.sleep(rng.uniform(0.3, 1.5))
            process.kill()
            code = process.wait(timeout=60)
            if code not in (0, -9):
                errors.seek(0)
                pytest.fail(f"the CLI exited {code} before it was killed: "
                            f"{errors.read().decode(errors='replace')[-2000:]}")
        return code
    result = subprocess.run([*driver, point, str(rng.randint(1, 3)), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    if result.returncode not in (0, -9):
        pytest.fail(f"crash driver failed: {result.stderr[-2000:]}")
    return result.returncode
