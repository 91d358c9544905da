"""What a call asks for beyond its plugin's own keys: a container namespace that exists, the
configuration's DNS, a MAC address (configuration, CNI_ARGS, args.cni, runtimeConfig)."""

from __future__ import annotations

import os

from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import DNS


def require_netns(call: CmdArgs) -> None:
    """ADD needs the container's namespace: fail before anything is allocated when it is missing."""
    from pycni.net import netns

    os.close(netns.open_fd(call.netns))


def conf_dns(call: CmdArgs) -> DNS | None:
    """The configuration's own `dns`, when any field of it is set (it then overrides IPAM's)."""
    raw = call.conf.fields.raw("dns")
    if not isinstance(raw, dict):
        return None
    try:
        dns = DNS.from_dict(raw)
    except CNIError as exc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid dns: {exc.msg}") from None
    return None if dns.is_empty() else dns


def parse_mac(value: str, where: str, code: int = Code.INVALID_NETWORK_CONFIG) -> str:
    """A MAC address in the kernel's spelling (lower case, colons)."""
    parts = value.replace("-", ":").split(":")
    if len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        return ":".join(parts).lower()
    raise CNIError(code, f"invalid MAC address {value!r} in {where}")


def requested_mac(call: CmdArgs, args_cni: bool = True, conf_key: bool = False) -> str:
    """The MAC asked for: runtimeConfig.mac over args.cni.mac over CNI_ARGS MAC (over the
    configuration's own "mac" with `conf_key`, as macvlan and tap read it; they have no
    args.cni.mac, as `args_cni=False` says)."""
    mac = parse_mac(call.conf.fields.get_str("mac"), '"mac"') if conf_key and call.conf.fields.get_str("mac") else ""
    if call.args:
        env = call.cni_args_dict(known=("MAC",)).get("MAC", "")
        mac = parse_mac(env, "CNI_ARGS MAC", Code.INVALID_ENVIRONMENT_VARIABLES) if env else mac
    sources = [(call.conf.args_cni, "args.cni.mac")] if args_cni else []
    for fields, where in [*sources, (call.conf.runtime_config, "runtimeConfig.mac")]:
        value = fields.get_str("mac")
        if value:
            mac = parse_mac(value, where)
    return mac
