#!/usr/bin/env python3
"""Write docs/conformance.md: every configuration key of the reference plugins, whether Debian's
1.1.1 has it, whether pycni reads it and the tests that show it (tests/conformance.py renders it;
tests/test_conformance.py fails when the file differs). Run with the virtualenv's interpreter:

    .venv/bin/python scripts/conformance.py
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import conformance  # noqa: E402 - after the path is set

conformance.DOC.write_text(conformance.render())
print(f"wrote {conformance.DOC.relative_to(ROOT)}")
