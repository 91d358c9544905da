"""Coverage-guided fuzzing of the parsers with atheris (`atheris_parsers.py`), seeded with
working configurations, results and cache files. `make test` runs a short campaign;
`make fuzz` a long one (PYCNI_FUZZ_SCALE times as many runs)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from .conftest import SCALE
from .world import World

RUNS = 40_000
TARGETS = 7  # one_input's targets: the first byte of an input chooses one


def _seeds(world: World, corpus: Path) -> int:
    docs: list[bytes] = []
    for plugin_type in ("bridge", "ptp", "macvlan", "tap", "host-device", "static", "portmap", "bandwidth", "tuning", "calico"):
        docs.append(json.dumps(world.plugin_conf(plugin_type) | {"prevResult": world.prev}).encode())
    docs.append(json.dumps(world.prev).encode())
    docs.append(json.dumps({"cniVersion": "1.1.0", "name": "n", "plugins": [world.plugin_conf("bridge")]}).encode())
    docs.append(json.dumps({"kind": "cniCacheV1", "containerId": "c", "config": base64.b64encode(b"{}").decode(),
                            "ifName": "eth0", "networkName": "n", "result": world.prev}).encode())  # fmt: skip
    docs.append(b"IP=10.1.2.3;MAC=02:00:00:00:00:01;IgnoreUnknown=1")
    docs.append(b'{"cniVersion":"1.1.0","code":7,"msg":"invalid","details":"x"}')
    count = 0
    for doc in docs:
        for target in range(TARGETS):
            (corpus / f"seed-{count}").write_bytes(bytes([target, 0]) + doc)
            count += 1
    return count


def test_atheris_parsers(fuzz_world: World, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = _seeds(fuzz_world, corpus)
    runs = int(RUNS * SCALE)
    seed = ["-seed=1"] if SCALE <= 1 else []  # as for hypothesis: fixed in `make test`, new in `make fuzz`
    script = Path(__file__).with_name("atheris_parsers.py")
    proc = subprocess.run(
        [sys.executable, str(script), *seed, f"-runs={runs}", "-max_len=8192", "-timeout=20", "-rss_limit_mb=4096", str(corpus)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600 + runs / 100,
        check=False,
    )
    tail = proc.stderr[-4000:]
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("timeout-*"))
    assert proc.returncode == 0 and not crashes, f"atheris found a crash ({crashes}):\n{tail}"
    done = [line for line in proc.stderr.splitlines() if line.startswith("Done ")]
    print(f"atheris: {seeds} seeds, {done[-1] if done else tail[-200:]}")
