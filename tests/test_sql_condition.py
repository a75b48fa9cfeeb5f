"""The shape check of an operator's SQL condition (``where``, ``restore --where``), and the
scan of SQL text it rests on: text inside quotes is text, whatever it holds; outside them,
nothing may leave Sediment's parentheses or its statement."""

from __future__ import annotations

import pytest

from sediment.core.sql_condition import condition_problem
from sediment.core.sql_text import UnclosedText, ends_in_line_comment, segments


@pytest.mark.parametrize("text", [
    "", "customer_id = 2", "status <> 'open'", "note = 'a;b -- c /* d */ )'",
    '"we;ird)" = 1', "`odd--name` = 1", "body = $$a;)$$", "body = $t$ $$ ; $t$",
    "x = E'it\\'s;'", "name = 'O''Brien;'", "f(a, (b)) > 1", "x = $1",
    "doc ->> 'k' = 'v'", "a - -1 > 0",
])
def test_one_condition_passes(text: str) -> None:
    assert condition_problem(text) is None


@pytest.mark.parametrize(("text", "problem"), [
    ("customer_id = 2) OR (true", "a ')' closes a parenthesis it never opened"),
    ("(a = 1", "a '(' is never closed"),
    ("a = 1; DROP TABLE x", "it holds ';'"),
    ("a = 1 -- note", "it holds a comment"),
    ("a = 1 /* note */", "it holds a comment"),
    ("a--1 > 0", "it holds a comment"),
    ("x = 'open", "its ' quote is never closed"),
    ('"x = 1', 'its " quote is never closed'),
    ("x = $$open", "its $$ quote is never closed"),
    ("x = 'it\\'s; DROP TABLE x; --'", "it holds ';'"),  # no E: the backslash is text
])
def test_anything_else_is_named(text: str, problem: str) -> None:
    found = condition_problem(text)
    assert found is not None and found.startswith(problem), found


def test_sql_text_splits_into_code_quotes_and_comments_as_the_databases_read_it() -> None:
    text = "a ':x;' \"b;c\" $q$ :y $q$ -- c;\n/* d */ E'\\';' e"
    parts = segments(text)
    assert "".join(part.text for part in parts) == text
    assert [(part.kind, part.text) for part in parts] == [
        ("code", "a "), ("quoted", "':x;'"), ("code", " "), ("quoted", '"b;c"'),
        ("code", " "), ("quoted", "$q$ :y $q$"), ("code", " "), ("comment", "-- c;"),
        ("code", "\n"), ("comment", "/* d */"), ("code", " E"), ("quoted", "'\\';'"),
        ("code", " e")]
    assert not ends_in_line_comment(parts) and ends_in_line_comment(segments("a -- b"))
    with pytest.raises(UnclosedText, match="its /\\* comment is never closed"):
        segments("a /* b")
