"""Serving: probes never wait behind busy report threads; several worker processes serve
with the scheduler in exactly one process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from reporting.server import ProbeFirstDispatcher
from tests.support import REPO, DatabaseFactory, env_for, free_port


@dataclass
class FakeRequest:
    path: str


@dataclass
class FakeTask:
    """What waitress hands its dispatcher: a channel with its next request first."""

    path: str
    release: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def requests(self) -> list[FakeRequest]:
        return [FakeRequest(self.path)]

    def service(self) -> None:
        self.release.wait(10)
        self.done.set()


def test_a_probe_is_answered_while_every_report_thread_is_busy() -> None:
    dispatcher = ProbeFirstDispatcher(probe_threads=1)
    dispatcher.set_thread_count(2)
    try:
        slow = [FakeTask("/api/v1/reports/customer-summary") for _ in range(3)]
        for task in slow:
            dispatcher.add_task(task)
        probe = FakeTask("/healthz")
        probe.release.set()
        dispatcher.add_task(probe)
        assert probe.done.wait(2), "the probe waited behind the report requests"
        assert not any(task.done.is_set() for task in slow)
    finally:
        for task in slow:
            task.release.set()
        # The third report request is still queued when the first two are released, and
        # waitress's shutdown cancels what is queued: a race this test is not about.
        for task in slow:
            task.done.wait(10)
        dispatcher.shutdown()
    assert all(task.done.is_set() for task in slow)


def test_serve_with_two_workers_schedules_in_one_process(databases: DatabaseFactory) -> None:
    port = free_port()
    env = {**os.environ, **env_for(*databases.pair("workers")),
           "SEDIMENT_SERVICE__SEED_WHEN_EMPTY": "true"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run_service.py"), "serve", "--port", str(port),
         "--workers", "2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pages = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and len(pages) < 6:
            try:
                url = f"http://127.0.0.1:{port}/api/v1/reports/events?limit=2"
                with urllib.request.urlopen(url, timeout=5) as response:
                    pages.append(response.status)
            except OSError:
                time.sleep(0.3)
        assert pages == [200] * 6, "the workers did not serve"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        for _ in range(4):  # whichever worker answers, it sums every worker's samples
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                        timeout=5) as response:
                text = response.read().decode()
            served = [sample.value for family in text_string_to_metric_families(text)
                      for sample in family.samples
                      if sample.name == "sediment_http_requests_total"
                      and sample.labels["route"] == "/api/v1/reports/<name>"]
            assert sum(served) == 6, text
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-3000:]
    assert "2 worker processes" in output
    assert output.count("Booting worker") == 2, output[-3000:]
    assert output.count("policy events scheduled") == 1  # the scheduler: this process only
