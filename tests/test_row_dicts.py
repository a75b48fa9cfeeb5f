"""Rows as dicts by a compiled dict display (:mod:`reporting.row_dicts`)."""

from __future__ import annotations

import pytest

from reporting.row_dicts import row_dict

NAMES = [
    ("id", "name"),
    ("it's", 'say "hi"', "back\\slash", "new\nline", "{}", "'}); import os #", "é ✓", ""),
    ("twice", "other", "twice"),  # dict(zip()) keeps the last value of a repeated name
    (),
]


@pytest.mark.parametrize("names", NAMES)
def test_a_row_dict_is_what_dict_zip_makes(names: tuple[str, ...]) -> None:
    values = [object() for _ in names]
    made = row_dict(names)(values)
    assert made == dict(zip(names, values, strict=True))
    assert list(made) == list(dict(zip(names, values, strict=True)))


def test_the_function_is_made_once_per_column_list() -> None:
    assert row_dict(("a", "b")) is row_dict(("a", "b"))
