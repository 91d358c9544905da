"""Coverage-guided fuzzing (atheris, libFuzzer) of everything that parses untrusted bytes
without touching the kernel: configurations and configuration lists, results of every
version and their conversions, cache files, CNI_ARGS, a plugin's error output, and each
plugin's own configuration parser.

Run as a program (libFuzzer's options pass through, e.g. `-runs=100000`, a corpus
directory); `test_atheris.py` runs it. The only exceptions allowed are CNIError (and
ValueError from the cache decoder, which its callers turn into one); anything else is a
crash, and libFuzzer writes the input that caused it to `crash-<sha1>`.
"""

from __future__ import annotations

import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["pycni"]):
    from pycni import skel
    from pycni.calico import config as calico_config
    from pycni.plugins.ipam import static
    from pycni.plugins.ipam.hostlocal import config as host_local_config
    from pycni.plugins.main import bridge, host_device, ipvlan, macvlan, ptp, tap, vlan
    from pycni.plugins.meta import _portmap_conf, bandwidth, firewall, tuning
    from pycni.runtime import cache, invoke
    from pycni.spec import args, jsonfmt, version
    from pycni.spec.config import NetworkConfigList, PluginConf
    from pycni.spec.errors import CNIError
    from pycni.spec.result import Result

# Each plugin's configuration parser (what ADD reads before it touches anything).
PARSERS: list[tuple[str, Any]] = [
    ("bridge", bridge.load_conf),
    ("ptp", ptp.load_conf),
    ("macvlan", macvlan.load_conf),
    ("ipvlan", ipvlan.load_conf),
    ("vlan", vlan.load_conf),
    ("tap", tap.load_conf),
    ("host-device", host_device.load_conf),
    ("host-local", host_local_config.load),
    ("static", static._addresses),
    ("portmap", _portmap_conf.parse),
    ("bandwidth", bandwidth.parse_limits),
    ("tuning", tuning.parse),
    ("firewall", firewall._conf),
    ("calico", lambda call: calico_config.parse(call.conf, call.env)),
]
ENV = {"CNI_CONTAINERID": "pctatheris", "CNI_NETNS": "/run/netns/pct-atheris-none", "CNI_IFNAME": "eth0"}


def _result(data: bytes) -> None:
    try:
        doc = jsonfmt.loads_object(data, "result")
    except CNIError:
        return
    result = Result.from_dict(doc)
    for target in version.ALL_VERSIONS:
        try:
            rendered = result.to_dict(target)
        except CNIError:
            continue
        jsonfmt.dumps_indent(rendered).encode()
        Result.from_dict(rendered)
        result.convert(target)


def _plugin(data: bytes, fdp: atheris.FuzzedDataProvider) -> None:
    name, parse = PARSERS[fdp.ConsumeIntInRange(0, len(PARSERS) - 1)]
    env = dict(ENV, CNI_COMMAND="ADD", CNI_ARGS=fdp.ConsumeUnicodeNoSurrogates(24))
    module = skel.plugin_module(name)
    call = skel.parse_call(name, module, env, data)
    parse(call)


def one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    target = fdp.ConsumeIntInRange(0, 6)
    data = fdp.ConsumeBytes(fdp.remaining_bytes() // 2) if target == 6 else b""
    data = data or raw[2:]
    try:
        if target == 0:
            conf = PluginConf.parse(data, need_type=False)
            conf.load_prev_result()
            jsonfmt.dumps_indent(CNIError(7, str(conf.raw)).to_dict(conf.cni_version)).encode()
        elif target == 1:
            NetworkConfigList.from_bytes(data)
        elif target == 2:
            _result(data)
        elif target == 3:
            try:
                entry = cache.decode(data)
            except ValueError:
                return
            entry.result()
        elif target == 4:
            text = data.decode(errors="surrogateescape")
            args.load(text, ("IP", "MAC"))
        elif target == 5:
            err = invoke.error_from(invoke.Execution(data, data[:40], 1), "/opt/cni/bin/x")
            jsonfmt.dumps(err.to_dict("1.1.0")).encode()
        else:
            _plugin(data, fdp)
    except CNIError as err:
        assert isinstance(err.code, int) and err.msg, err
        jsonfmt.dumps_indent(err.to_dict("1.1.0")).encode()


def main() -> None:
    sys.setrecursionlimit(1000)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
