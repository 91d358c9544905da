"""Calico's selector language: every operator, Calico's canonical form, and its errors."""

from __future__ import annotations

import pytest

from pycni.calico import selector

LABELS = {"app": "web", "tier": "front", "env": "prod-eu", "empty": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("all()", True),
        ("global()", True),
        ("has(app)", True),
        ("!has(app)", False),
        ("has(missing)", False),
        ("! has(missing)", True),
        ("app == 'web'", True),
        ('app == "db"', False),
        ("app != 'db'", True),
        ("missing != 'x'", True),  # != holds when the label is absent
        ("app in {'web', 'db'}", True),
        ("app in {}", False),
        ("app not in {'web'}", False),
        ("missing not in {'x'}", True),
        ("app notin {'db'}", True),
        ("env contains 'od'", True),
        ("env starts with 'prod'", True),
        ("env ends with 'eu'", True),
        ("missing contains ''", False),  # contains, starts/ends with need the label
        ("empty == ''", True),
        ("app == 'web' && tier == 'front'", True),
        ("app == 'web' && tier == 'back'", False),
        ("app == 'db' || tier == 'front'", True),
        ("app == 'db' || tier == 'back' && has(app)", False),  # && binds tighter than ||
        ("(app == 'db' || tier == 'front') && has(env)", True),
        ("!(app == 'web')", False),
        ("!!has(app)", True),
        ("  app   ==   'web'  ", True),
    ],
)
def test_evaluation(text: str, expected: bool) -> None:
    assert selector.parse(text)(LABELS) is expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", "all()"),
        ("app=='web'", 'app == "web"'),
        ("a == 'x' && b == 'y' || c == 'z'", '((a == "x" && b == "y") || c == "z")'),
        ("k in {'b', 'a', 'b'}", 'k in {"a", "b"}'),
        ("k == 'say \"hi\"'", "k == 'say \"hi\"'"),
        ("! has(a)", "!has(a)"),
        ("has( a )", "has(a)"),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    parsed = selector.parse(text)
    assert str(parsed) == canonical
    assert selector.parse(canonical) == parsed


def test_prefixing_namespace_labels() -> None:
    parsed = selector.parse("team == 'a' && has(env) && k in {'x'} && !(z starts with 'q')")
    assert str(parsed.prefixed("pcns.")) == '(pcns.team == "a" && has(pcns.env) && pcns.k in {"x"} && !pcns.z starts with "q")'


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("app ==", "expected string"),
        ("app = 'x'", "expected =="),
        ("app == web", "expected string"),
        ("app in 'x'", "expected set literal"),
        ("app in {'x'", "expected }"),
        ("has(app", "no closing ')' after has("),
        ("all(", "no closing ')' after all("),
        ("(app == 'x'", "expected )"),
        ("app == 'x' &&", "unexpected end of string"),
        ("app == 'x' & b == 'y'", "expected &&"),
        ("app 'x'", "expected == or != not"),
        ("app x", "expected operator after label"),
        ("app == 'x' b", "unexpected content at end of selector"),
        ("app == 'unterminated", "unterminated string"),
        ("&&", "unexpected token"),
    ],
)
def test_errors_name_the_selector(text: str, error: str) -> None:
    with pytest.raises(selector.SelectorError) as info:
        selector.parse(text)
    assert error in str(info.value) and repr(text) in str(info.value)
