"""Checking that an operator's SQL condition is one condition.

A policy's ``where`` setting and ``archive restore --where`` are SQL that Sediment puts
in parentheses inside its own statements. Text that closes those parentheses, ends the
statement or comments out the rest changed what the statement did: ``--where
"customer_id = 2) OR (true"`` restored every archived order, ``--where "... ; DROP TABLE
x; --"`` sent a second statement to psycopg2 (and the dry run ended in a traceback), and
``-- a note`` hid the closing parenthesis. The scan below reads quoted text, quoted
names and PostgreSQL's dollar quotes as the databases do, and refuses such text outside
them before any database sees it.
"""

from __future__ import annotations

import re

#: PostgreSQL's dollar quote tag: ``$$`` or ``$name$`` (``$1`` is a parameter, no quote).
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
#: Quotes whose text runs to the same quote, doubled to stand for itself.
_QUOTES = "'\"`"


def condition_problem(text: str) -> str | None:
    """Why ``text`` is not a single SQL condition, or ``None`` when it is one.

    Only its shape is checked (quotes closed, parentheses balanced, no ``;`` and no
    comment outside quotes); whether the database accepts it is for the database to say.
    """
    depth = 0
    at = 0
    while at < len(text):
        char = text[at]
        if char in _QUOTES:
            at = _after_quoted(text, at)
            if at < 0:
                return f"its {char} quote is never closed"
            continue
        tag = _DOLLAR_TAG.match(text, at) if char == "$" else None
        if tag is not None:
            end = text.find(tag.group(), tag.end())
            if end < 0:
                return f"its {tag.group()} quote is never closed"
            at = end + len(tag.group())
            continue
        if text.startswith(("--", "/*"), at):
            return "it holds a comment, which would hide the rest of Sediment's statement"
        if char == ";":
            return "it holds ';': give one condition, not statements"
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return "a ')' closes a parenthesis it never opened"
        at += 1
    return "a '(' is never closed" if depth else None


def _after_quoted(text: str, start: int) -> int:
    """The index after the quoted text starting at ``start``, or -1 if it never ends.

    A doubled quote stands for itself; in PostgreSQL's ``E'...'`` a backslash escapes.
    """
    quote = text[start]
    escapes = quote == "'" and start > 0 and text[start - 1] in "eE" and (
        start < 2 or not (text[start - 2].isalnum() or text[start - 2] == "_"))
    at = start + 1
    while at < len(text):
        if escapes and text[at] == "\\":
            at += 2
            continue
        if text[at] == quote:
            if text[at + 1:at + 2] == quote:
                at += 2
                continue
            return at + 1
        at += 1
    return -1
