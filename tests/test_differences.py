"""The README's list of deliberate differences from the reference cannot drift from the tests:
every entry is held by at least one test marked `@pytest.mark.difference("<name>")`, and every
such marker names an entry of the list."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Where pycni differs from the reference"


def listed() -> list[str]:
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"^- `([a-z0-9-]+)`:", body, flags=re.MULTILINE)


def marked() -> dict[str, list[str]]:
    """difference name -> the tests that hold it (found in the test sources, not by running them)."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for deco in node.decorator_list:
                if (
                    isinstance(deco, ast.Call)
                    and isinstance(deco.func, ast.Attribute)
                    and deco.func.attr == "difference"
                    and deco.args
                    and isinstance(deco.args[0], ast.Constant)
                ):
                    found.setdefault(str(deco.args[0].value), []).append(f"{path.relative_to(ROOT)}::{node.name}")
    return found


def test_every_listed_difference_is_held_by_a_test() -> None:
    names = listed()
    assert len(names) == len(set(names)), names
    assert names, "the list of differences is empty"
    tests = marked()
    assert [n for n in names if n not in tests] == [], "listed in README.md but held by no test"
    assert sorted(set(tests) - set(names)) == [], "marked in tests but not listed in README.md"
