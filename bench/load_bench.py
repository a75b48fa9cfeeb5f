#!/usr/bin/env python3
"""Availability under load: a mixed workload at 32 connections, alone and during an archive run.

    python bench/load_bench.py            # 1,000,000 events, 60 s per phase, 1 and 2 workers
    python bench/load_bench.py --quick    # 150,000 events, 8 s per phase (CI)

Against a real ``run_service.py serve`` on PostgreSQL, for ``--workers 1`` (waitress) and
``--workers 2`` (gunicorn), each in two phases: the workload alone, then the same workload
while ``archive run`` moves the events to ARCHIVE. The workload is bounded in count and
time and goes to 127.0.0.1 only: ``events`` pages over both databases (first pages and
pages followed by cursor), ``orders`` pages, the ``customer-summary`` and
``monthly-revenue`` aggregates, and CSV downloads of up to 200,000 rows. A separate probe
asks ``/healthz`` ten times a second.

Per phase it prints requests/s, p50/p99, the ``events`` page p99, 5xx responses, 429s (CSV
downloads beyond ``reports.csv_max_concurrent``), ``/healthz`` p99 and the service's peak
RSS (all its processes). The last line is ``events_p99_run_vs_alone=<ratio>`` for one
worker (target: at most 2).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import databases, free_port, service_environ, wait_until_up
from bench.report_bench import get, load_events
from reporting.app import create_app
from reporting.state import state_of
from sediment.core.migrations import upgrade_all
from sediment.core.seed import SeedPlan, seed
from sediment.core.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 32
ARCHIVE_NOW = "2027-01-01T00:00:00Z"
#: Request kinds and their weights in the mix.
MIX = (("events", 40), ("events_next", 25), ("orders", 12), ("customer_summary", 10),
       ("monthly_revenue", 8), ("csv", 2))
PATHS = {
    "events": "/api/v1/reports/events?limit=100",
    "orders": "/api/v1/reports/orders?limit=50&status=closed",
    "customer_summary": "/api/v1/reports/customer-summary?limit=50",
    "monthly_revenue": "/api/v1/reports/monthly-revenue?limit=50",
}


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    health: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    peak_process_mb: float = 0.0

    def record(self, kind: str, status: int, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds * 1000)
        self.statuses[status] += 1

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def report(self) -> str:
        every = sorted(t for v in self.latencies.values() for t in v)
        events = sorted(self.latencies.get("events", []) + self.latencies.get("events_next", []))
        server_errors = sum(n for status, n in self.statuses.items() if status >= 500)
        return (f"{self.name:<24} {self.requests / self.seconds:7.0f} req/s  "
                f"p50 {pct(every, 50):7.1f} ms  p99 {pct(every, 99):7.1f} ms  "
                f"events p99 {pct(events, 99):7.1f} ms  5xx {server_errors}  "
                f"429 {self.statuses.get(429, 0)}  healthz p99 {pct(sorted(self.health), 99):6.1f}"
                f" ms  peak RSS {self.peak_rss_mb:5.0f} MB (largest process "
                f"{self.peak_process_mb:.0f} MB)")


    def breakdown(self) -> str:
        return "    " + "  ".join(
            f"{kind} {len(values)}x p50 {pct(sorted(values), 50):.0f} p99 "
            f"{pct(sorted(values), 99):.0f} ms" for kind, values in sorted(self.latencies.items()))


def pct(values: list[float], percentile: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * percentile / 100))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="150,000 events, 8 s phases (CI)")
    parser.add_argument("--seconds", type=float, help="length of each phase")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to measure (default: 1 2)")
    args = parser.parse_args()
    events = 150_000 if args.quick else 1_000_000
    seconds = args.seconds or (8.0 if args.quick else 60.0)
    results: dict[tuple[int, bool], Phase] = {}
    for workers in args.workers:
        for during_run in (False, True):
            with databases(sqlite=False) as urls:
                environ = service_environ(*urls, SEDIMENT_POLICY__EVENTS__BATCH_SIZE="5000")
                prepare(environ, events)
                phase = measure(environ, workers, during_run, seconds, events)
                results[(workers, during_run)] = phase
                print(phase.report(), flush=True)
                print(phase.breakdown(), flush=True)
    alone, during = results.get((1, False)), results.get((1, True))
    if alone and during:
        def events_p99(phase: Phase) -> float:
            return pct(sorted(phase.latencies.get("events", [])), 99)
        print(f"events_p99_run_vs_alone={events_p99(during) / events_p99(alone):.2f}")
    return 0


def prepare(environ: dict[str, str], events: int) -> None:
    """Migrate, then load the events (aged at ARCHIVE_NOW) and a shop for the aggregates."""
    app = create_app(load_settings(environ=environ))
    upgrade_all(state_of(app).engines)
    primary = state_of(app).engines.primary
    load_events(primary, events)
    seed(primary, SeedPlan(customers=5_000, orders=30_000, events=0, seed=7),
         archive=state_of(app).engines.archive, append=True)
    state_of(app).engines.dispose()
    print(f"loaded {events:,} events and a shop of 5,000 customers, 30,000 orders", flush=True)


def measure(environ: dict[str, str], workers: int, during_run: bool, seconds: float,
            events: int) -> Phase:
    phase = Phase(f"{workers} worker{'s' if workers > 1 else ''}, "
                  f"{'during a run' if during_run else 'alone'}")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(REPO / "run_service.py"), "serve", "--port", str(port),
         "--workers", str(workers), "--no-scheduler"], env={**os.environ, **environ}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    archiver = None
    try:
        wait_until_up(port)
        if during_run:
            throttle = max(0.0, seconds / max(1, events // 5000) - 0.05)
            archiver = subprocess.Popen(
                [sys.executable, str(REPO / "run_service.py"), "archive", "run", "--policy",
                 "events", "--now", ARCHIVE_NOW, "--max-runtime", f"{int(seconds) + 5}s"],
                env={**os.environ, **environ, "SEDIMENT_ARCHIVE__THROTTLE": f"{throttle:.3f}s"},
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # the first batches are in flight
        run_load(port, phase, seconds, server.pid)
    finally:
        if archiver is not None:
            archiver.terminate()
            archiver.wait(timeout=60)
        server.terminate()
        server.wait(timeout=60)
    return phase


def run_load(port: int, phase: Phase, seconds: float, server_pid: int) -> None:
    deadline = time.perf_counter() + seconds
    stop = threading.Event()

    def client(number: int) -> None:
        rng = random.Random(number)
        kinds, weights = zip(*MIX, strict=True)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        cursor: str | None = None
        while time.perf_counter() < deadline:
            kind = rng.choices(kinds, weights)[0]
            if kind == "events_next":
                path = PATHS["events"] + (f"&cursor={cursor}" if cursor else "")
            elif kind == "csv":
                start = rng.randint(0, 10)
                path = ("/api/v1/reports/events.csv?source=primary&occurred_at[gte]="
                        f"2026-05-{10 + start:02d}T00:00:00Z&occurred_at[lt]="
                        f"2026-05-{12 + start:02d}T08:00:00Z")  # ~200,000 rows at most
            else:
                path = PATHS[kind]
            started = time.perf_counter()
            try:
                status, body = get(port, path, connection)
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status, body = 599, b""
            phase.record(kind, status, time.perf_counter() - started)
            if kind.startswith("events") and status == 200:
                cursor = json.loads(body)["page"]["next_cursor"]
        connection.close()

    # The probe runs in a process of its own: in this one it would wait for the GIL behind
    # the 32 clients, and measure them rather than the service.
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(port), str(seconds)],
                             stdout=subprocess.PIPE, text=True)

    def memory() -> None:
        while not stop.is_set():
            sizes = [rss_mb(pid) for pid in process_tree(server_pid)]
            phase.peak_rss_mb = max(phase.peak_rss_mb, sum(sizes))
            phase.peak_process_mb = max(phase.peak_process_mb, max(sizes, default=0.0))
            stop.wait(0.2)

    helpers = [threading.Thread(target=memory)]
    clients = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    started = time.perf_counter()
    for thread in (*helpers, *clients):
        thread.start()
    for thread in clients:
        thread.join()
    phase.seconds = time.perf_counter() - started
    stop.set()
    for thread in helpers:
        thread.join()
    phase.health = json.loads(probe.communicate(timeout=60)[0])


#: ``/healthz`` ten times a second for the phase; prints the latencies (ms) as JSON.
PROBE = """
import http.client, json, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
deadline, timings = time.perf_counter() + seconds, []
while time.perf_counter() < deadline:
    started = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        connection.close()
        timings.append((time.perf_counter() - started) * 1000)
    except OSError:
        timings.append(30_000.0)
    time.sleep(0.1)
print(json.dumps(timings))
"""


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's master and workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(child) for child in children)
    return found


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
