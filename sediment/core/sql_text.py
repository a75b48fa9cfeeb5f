"""SQL text read as the databases read it: code, quoted text and comments apart.

Sediment puts an operator's SQL inside its own statements (a policy's ``where``, a SQL
report's body) and looks in it for ``;``, parentheses and ``:name`` placeholders. Those
count only in code: a ``;`` in ``'x;y'`` or in a comment ends nothing, ``:noon`` in
``'at :noon'`` is no parameter, and a ``--`` comment on the last line runs to the end of
the line, past anything Sediment appends on it. :func:`segments` splits the text as both
databases do: ``'...'`` (a doubled quote stands for itself; PostgreSQL's ``E'...'`` takes
backslash escapes), ``"..."`` and `````...````` names, PostgreSQL's ``$tag$...$tag$``
quotes, ``--`` line comments and ``/* ... */`` comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

#: PostgreSQL's dollar quote tag: ``$$`` or ``$name$`` (``$1`` is a parameter, no quote).
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
#: Quotes whose text runs to the same quote, doubled to stand for itself.
_QUOTES = "'\"`"

Kind = Literal["code", "quoted", "comment"]


@dataclass(frozen=True)
class Segment:
    """A stretch of SQL text: code, a quoted text or name, or a comment."""

    kind: Kind
    text: str
    #: Where it starts in the text it was split from.
    start: int


class UnclosedText(ValueError):
    """SQL text whose quote or comment never ends (the message says which)."""


def segments(sql: str) -> list[Segment]:
    """``sql`` split into code, quoted and comment segments, in order; joined, they are
    ``sql`` again.

    :raises UnclosedText: for a quote or a ``/*`` comment that is never closed.
    """
    found: list[Segment] = []
    code_from = at = 0

    def close_code() -> None:
        if at > code_from:
            found.append(Segment("code", sql[code_from:at], code_from))

    while at < len(sql):
        char = sql[at]
        end = -1
        kind: Kind = "quoted"
        if char in _QUOTES:
            end = _after_quoted(sql, at)
            if end < 0:
                raise UnclosedText(f"its {char} quote is never closed")
        elif char == "$" and (tag := _DOLLAR_TAG.match(sql, at)) is not None:
            closing = sql.find(tag.group(), tag.end())
            if closing < 0:
                raise UnclosedText(f"its {tag.group()} quote is never closed")
            end = closing + len(tag.group())
        elif sql.startswith("--", at):
            kind = "comment"
            newline = sql.find("\n", at)
            end = len(sql) if newline < 0 else newline
        elif sql.startswith("/*", at):
            kind = "comment"
            closing = sql.find("*/", at + 2)
            if closing < 0:
                raise UnclosedText("its /* comment is never closed")
            end = closing + 2
        if end < 0:
            at += 1
            continue
        close_code()
        found.append(Segment(kind, sql[at:end], at))
        code_from = at = end
    close_code()
    return found


def ends_in_line_comment(parts: list[Segment]) -> bool:
    """Whether the text ends inside a ``--`` comment (so that whatever follows it on the
    same line is commented out)."""
    return bool(parts) and parts[-1].kind == "comment" and parts[-1].text.startswith("--")


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
