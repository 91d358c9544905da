"""`pycni agent` with every call it serves profiled (bench/flatcost.py --profile).

    python bench/profagent.py DIR agent --socket ... (the arguments of `pycni`)

Each call leaves DIR/<level>/<plugin>-<command>-<n>.prof, <level> being what
DIR/level says when the call starts (the bench writes the number of attachments
there; "fill" while it makes them, which is not profiled).
"""

from __future__ import annotations

import cProfile
import itertools
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from pycni import skel
from pycni.cli import main as cli

OUT = Path(sys.argv.pop(1))
COUNTER = itertools.count()
REAL = skel.dispatch


def dispatch(
    plugin: str | ModuleType, env: Mapping[str, str], stdin: bytes, mode: skel.CallMode = skel.IN_PROCESS, module_name: str = ""
) -> skel.Outcome:
    try:
        level = (OUT / "level").read_text().strip()
    except OSError:
        level = "0"
    if level == "fill":
        return REAL(plugin, env, stdin, mode, module_name)
    profile = cProfile.Profile()
    profile.enable()  # this thread only: each call is profiled on its own
    try:
        return REAL(plugin, env, stdin, mode, module_name)
    finally:
        profile.disable()
        where = OUT / level
        where.mkdir(parents=True, exist_ok=True)
        name = plugin if isinstance(plugin, str) else plugin.__name__.rsplit(".", 1)[-1]
        profile.dump_stats(where / f"{name}-{env.get('CNI_COMMAND', '')}-{next(COUNTER)}.prof")


skel.dispatch = dispatch  # type: ignore[assignment]  # the server looks it up at each call
sys.exit(cli.main())
