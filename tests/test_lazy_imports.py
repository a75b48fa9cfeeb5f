"""Heavy modules load where they are used, not with the service: the embedded SQLite
default serves row reports without psycopg2 (4.6 MB resident) or pandas (47 MB), which
load with a PostgreSQL connection and an aggregate report. ``bench/memory_bench.py``
measures the memory; this checks the cause, which a new import at module level brings
back unnoticed (psycopg2 came back with the PostgreSQL infinity casters: 65.6 MB at rest
became 70.2 MB, over the 70 MB target)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

PROGRAM = """
import json, sys
from reporting.app import create_app
from reporting.state import state_of
from sediment.core.migrations import upgrade_all
from sediment.core.settings import load_settings

folder = sys.argv[1]
app = create_app(load_settings(environ={
    "SEDIMENT_DATABASE__PRIMARY_URL": f"sqlite:///{folder}/primary.sqlite3",
    "SEDIMENT_DATABASE__ARCHIVE_URL": f"sqlite:///{folder}/archive.sqlite3",
    "SEDIMENT_SERVICE__SEED_WHEN_EMPTY": "false", "SEDIMENT_SCHEDULER__ENABLED": "false",
    "SEDIMENT_SERVICE__LOG_LEVEL": "WARNING"}))
upgrade_all(state_of(app).engines)
client = app.test_client()

def loaded():
    return sorted(m for m in ("psycopg2", "pandas") if m in sys.modules)

seen = {"started": loaded()}
for path in ("/api/v1/reports/events?limit=2", "/api/v1/reports/events.csv"):
    assert client.get(path).status_code == 200, path
seen["row reports"] = loaded()
assert client.get("/api/v1/reports/customer-summary?limit=2").status_code == 200
seen["aggregate report"] = loaded()
print(json.dumps(seen))
"""


def test_sqlite_row_reports_load_neither_psycopg2_nor_pandas(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"started": [], "row reports": [], "aggregate report": ["pandas"]}
