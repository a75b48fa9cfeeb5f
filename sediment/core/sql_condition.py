"""Checking that an operator's SQL condition is one condition.

A policy's ``where`` setting and ``archive restore --where`` are SQL that Sediment puts
in parentheses inside its own statements. Text that closes those parentheses, ends the
statement or comments out the rest changed what the statement did: ``--where
"customer_id = 2) OR (true"`` restored every archived order, ``--where "... ; DROP TABLE
x; --"`` sent a second statement to psycopg2 (and the dry run ended in a traceback), and
``-- a note`` hid the closing parenthesis. The scan (:mod:`sediment.core.sql_text`) reads
quoted text, quoted names and PostgreSQL's dollar quotes as the databases do, and such text
outside them is refused before any database sees it.
"""

from __future__ import annotations

from sediment.core.sql_text import UnclosedText, segments


def condition_problem(text: str) -> str | None:
    """Why ``text`` is not a single SQL condition, or ``None`` when it is one.

    Only its shape is checked (quotes closed, parentheses balanced, no ``;`` and no
    comment outside quotes); whether the database accepts it is for the database to say.
    """
    try:
        parts = segments(text)
    except UnclosedText as exc:
        return str(exc)
    depth = 0
    for part in parts:
        if part.kind == "comment":
            return "it holds a comment, which would hide the rest of Sediment's statement"
        if part.kind != "code":
            continue
        if ";" in part.text:
            return "it holds ';': give one condition, not statements"
        for char in part.text:
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth < 0:
                    return "a ')' closes a parenthesis it never opened"
    return "a '(' is never closed" if depth else None
