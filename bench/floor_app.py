#!/usr/bin/env python3
"""The raw-driver floor of a report page: the ``events`` report's first-page SQL in a bare
Flask + waitress + psycopg2 app, for ``bench/report_bench.py`` to measure Sediment against.

    python bench/floor_app.py --dsn postgresql://root@127.0.0.1/db --port 8123 [--threads 8]

``GET /events?limit=N`` runs the statement Sediment itself sends for the report's first page
on PRIMARY (the page query joined to the customers lookup, newest first), builds one dict
per row and answers with orjson (the fastest JSON encoder, which Sediment uses too). No
validation, no cursor, no signing, no middleware: what any app must do at least to serve
the same page.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import psycopg2.pool
from flask import Flask, Response, request
from waitress import serve

#: The statement Sediment sends (seen with an SQLAlchemy ``before_cursor_execute`` hook).
FIRST_PAGE = (
    "SELECT report.id, report.occurred_at, report.kind, report.customer_id, "
    "lookup_0.name AS customer_name, report.order_id, report.detail FROM (SELECT events.id "
    "AS id, events.occurred_at AS occurred_at, events.kind AS kind, events.customer_id AS "
    "customer_id, events.order_id AS order_id, events.detail AS detail FROM events) AS "
    "report LEFT OUTER JOIN customers AS lookup_0 ON lookup_0.id = report.customer_id "
    "ORDER BY report.occurred_at DESC, report.id DESC LIMIT %(limit)s"
)


def create_floor_app(dsn: str, threads: int) -> Flask:
    app = Flask("floor")
    # minconn = maxconn: psycopg2's pool closes a returned connection beyond minconn.
    pool = psycopg2.pool.ThreadedConnectionPool(threads, threads, dsn)
    opened = [pool.getconn() for _ in range(threads)]  # all now, in autocommit: no BEGIN
    for connection in opened:
        connection.autocommit = True
        pool.putconn(connection)

    @app.get("/events")
    def events() -> Any:
        limit = int(request.args.get("limit", "100"))
        connection = pool.getconn()
        try:
            with connection.cursor() as cursor:
                cursor.execute(FIRST_PAGE, {"limit": limit + 1})
                names = [column.name for column in cursor.description]
                rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            pool.putconn(connection)
        body = orjson.dumps({"rows": rows[:limit], "has_more": len(rows) > limit})
        return Response(body, mimetype="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    serve(create_floor_app(args.dsn, args.threads), host="127.0.0.1", port=args.port,
          threads=args.threads, _quiet=True)


if __name__ == "__main__":
    main()
