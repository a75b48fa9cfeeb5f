"""Placeholder until the archiver lands (issue 3)."""

from __future__ import annotations

from typing import Any

from flask import Flask


def add_commands(commands: Any) -> None:
    return None


def start_scheduler(app: Flask) -> Any:
    return None
