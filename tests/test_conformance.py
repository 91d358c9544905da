"""docs/conformance.md is what tests/conformance.py renders, and every key of the reference is
read by pycni or explained."""

from __future__ import annotations

from . import conformance


def test_every_reference_key_is_read_or_explained() -> None:
    rows = conformance.rows()
    unexplained = [f"{r['plugin']}: {r['key']}" for r in rows if r["pycni"] == "NO"]
    assert unexplained == [], "keys of the reference pycni neither reads nor explains (tests/conformance.py NOT_READ)"
    stale = [
        k for k in conformance.NOT_READ if any(r["plugin"] == k[0] and r["key"] == k[1] and r["pycni"] == "yes" for r in rows)
    ]
    assert stale == [], "keys explained as not read that pycni reads"


def test_the_document_is_current() -> None:
    expected = conformance.render()
    actual = conformance.DOC.read_text() if conformance.DOC.exists() else ""
    assert actual == expected, "docs/conformance.md is stale: run `.venv/bin/python scripts/conformance.py`"
