"""Fuzzed result cache: libcni's cniCacheV1 files, truncated, of the wrong kind or types,
binary garbage, a legacy bare result, a directory where the file should be.

Whatever the file holds, DEL succeeds (a corrupt cache never blocks it) and removes the
file, CHECK ends with a CNIError or succeeds (never another exception), GC cleans what it
can, and a plugin never receives a prevResult that is not a valid result.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pycni.runtime import CNIConfig, GCArgs, RuntimeConf, cache
from pycni.spec.config import NetworkConfigList
from pycni.spec.errors import CNIError
from pycni.spec.result import Result

from . import inputs
from .conftest import fuzz_settings

STUB = """#!/bin/sh
cat > "$0.stdin"
if [ "$CNI_COMMAND" = VERSION ]; then echo '{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}'; fi
exit 0
"""
RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "eth0", "mac": "02:42:ac:11:00:02", "sandbox": "/run/netns/x"}],
    "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0}, {"address": "fd00::3/64", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {"nameservers": ["10.1.2.1"]},
}


def _document(result: Any, config: bytes) -> dict[str, Any]:
    return {
        "kind": cache.KIND,
        "containerId": "pctcache",
        "config": base64.b64encode(config).decode(),
        "ifName": "eth0",
        "networkName": "pctcachenet",
        "netns": "/run/netns/x",
        "cniArgs": [["IgnoreUnknown", "1"]],
        "capabilityArgs": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "tcp"}]},
        "result": result,
    }


@st.composite
def cache_files(draw: st.DrawFn, config: bytes) -> bytes | None:
    """The bytes of a cache file (None: a directory stands where the file should be)."""
    kind = draw(st.integers(min_value=0, max_value=9))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.binary(max_size=200))
    if kind == 2:
        return draw(st.sampled_from(inputs.RAW_STDIN))
    if kind == 3:
        return json.dumps(draw(inputs.results(RESULT))).encode()  # libcni's legacy cache: a bare result
    doc = _document(draw(inputs.results(RESULT)), config)
    doc = draw(inputs.mutate(doc, "/nonexistent", max_changes=3))
    text = inputs.encode(doc)
    if kind == 4:
        return text[: draw(st.integers(min_value=0, max_value=len(text)))]
    return text


def test_fuzzed_cache_files(tmp_path: Path) -> None:
    plugins = tmp_path / "bin"
    plugins.mkdir()
    stub = plugins / "pct-stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    conflist = {"cniVersion": "1.1.0", "name": "pctcachenet", "plugins": [{"type": "pct-stub"}]}
    net = NetworkConfigList.from_bytes(json.dumps(conflist).encode())
    cache_dir = tmp_path / "cache"
    runtime = CNIConfig([str(plugins)], cache_dir=str(cache_dir), timeout=30)
    rt = RuntimeConf(container_id="pctcache", netns="/run/netns/x", ifname="eth0")
    path = Path(cache.cache_path(str(cache_dir), net.name, rt.container_id, rt.ifname))
    counts = {"DEL": 0, "CHECK ok": 0, "CHECK refused": 0, "GC": 0, "prevResult given": 0}

    def plant(content: bytes | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)

    @fuzz_settings(60)
    @given(content=cache_files(net.raw_bytes), command=st.sampled_from(["DEL", "CHECK", "GC"]))
    def one_file(content: bytes | None, command: str) -> None:
        plant(content)
        if command == "DEL":
            runtime.del_network_list(net, rt)  # never raises: the stub succeeds
            assert not os.path.isfile(path), "DEL left the cache entry"  # a directory someone made is left alone
            sent = json.loads((plugins / "pct-stub.stdin").read_bytes())
            if "prevResult" in sent:
                counts["prevResult given"] += 1
                Result.from_dict(sent["prevResult"])  # whatever the cache held, what is passed on is a result
        elif command == "CHECK":
            try:
                runtime.check_network_list(net, rt)
                counts["CHECK ok"] += 1
            except CNIError:
                counts["CHECK refused"] += 1
        else:
            errors = runtime.gc_network_list(net, GCArgs())
            assert all(isinstance(e, CNIError) for e in errors)
            stale = [e for e in cache.list_attachments(str(cache_dir)) if e.network == net.name]
            assert not stale or errors, "GC kept a stale attachment without saying why"
        cache.list_attachments(str(cache_dir))  # listing never fails either
        if command != "CHECK":
            counts[command] += 1

    one_file()
    print(f"cache files: {sum(counts[k] for k in ('DEL', 'CHECK ok', 'CHECK refused', 'GC'))} inputs: {counts}")
