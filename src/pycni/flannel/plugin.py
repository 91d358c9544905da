"""The `flannel` CNI plugin, as flannel-io/cni-plugin (flannel.go, flannel_linux.go).

It reads flanneld's `subnetFile` (default /run/flannel/subnet.env), builds the configuration of
the plugin that does the work (`delegate`, type bridge by default) and runs it from CNI_PATH:

    {"name": <network>, "type": "bridge", "cniVersion": <ours>,
     "ipMasq": !FLANNEL_IPMASQ, "mtu": FLANNEL_MTU, "isGateway": true,    (unless delegate sets them)
     "ipam": {"type": "host-local", "ranges": [[{"subnet": FLANNEL_SUBNET}], [{"subnet": FLANNEL_IPV6_SUBNET}]],
              "routes": [<ipam.routes>..., {"dst": FLANNEL_NETWORK}, {"dst": FLANNEL_IPV6_NETWORK}]},
     "runtimeConfig": <ours>, <every other key of delegate>}

That configuration is saved, byte for byte as Go's json.Marshal writes it, at
`<dataDir>/<containerID>` (dataDir default /var/lib/cni/flannel) before the delegate runs: DEL
hands the saved bytes to the delegate and removes the file only when the delegate succeeded.
Beyond the reference: a failed ADD is undone (the delegate's DEL, then the file); CHECK runs
the delegate's CHECK on the saved configuration (the reference's does nothing); GC runs the
delegate's GC and removes the saved files of attachments that are gone; STATUS reports a
missing subnet.env as code 50.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from pycni import gcreport
from pycni.runtime import delegate as delegation
from pycni.runtime import invoke
from pycni.skel import CmdArgs
from pycni.spec import gokeys
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

ABOUT = "CNI flannel plugin (pycni)"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"


# -- Go's json.Marshal of the delegate configuration (map keys sorted, structs in field order) --


class _Struct(dict):  # type: ignore[type-arg]
    """A Go struct: its keys stay in field order."""


def _go_float(value: float) -> str:
    if not math.isfinite(value):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"delegate: {value} cannot be written as JSON")
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:  # Go writes e-07 / e+21 with at least two exponent digits
        mantissa, exponent = text.split("e")
        sign = "-" if exponent.startswith("-") else "+"
        text = f"{mantissa}e{sign}{exponent.lstrip('+-').zfill(2)}"
    return text


def go_marshal(value: Any) -> str:
    if isinstance(value, _Struct):
        items = list(value.items())
    elif isinstance(value, dict):
        items = sorted(value.items())
    else:
        items = None
    if items is not None:
        return "{" + ",".join(f"{_go_string(k)}:{go_marshal(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(go_marshal(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return _go_float(float(value)) if abs(value) >= 1 << 53 else str(value)  # Go decoded it as float64
    if isinstance(value, float):
        return _go_float(value)
    return _go_string(str(value))


def _go_string(text: str) -> str:
    from pycni.spec import jsonfmt

    return jsonfmt.dumps(text)


# -- subnet.env, read as the reference reads it -----------------------------------------------


@dataclass
class SubnetEnv:
    networks: list[ipaddress.IPv4Network]
    subnet: ipaddress.IPv4Network | None
    networks6: list[ipaddress.IPv6Network]
    subnet6: ipaddress.IPv6Network | None
    mtu: int | None
    ipmasq: bool | None


def _cidrs(text: str, name: str, path: str) -> list[Any]:
    out: list[Any] = []
    for item in text.split(","):
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{path}: {name}={text!r} is not a list of CIDRs") from None
        if net not in out:
            out.append(net)
    return out


def load_subnet_env(path: str) -> SubnetEnv:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise CNIError(
            Code.TRY_AGAIN_LATER,
            f"failed to load flannel 'subnet.env' file: {path} does not exist",
            "flanneld writes it once it holds a subnet lease: check flanneld on this node",
        ) from None
    except OSError as exc:
        raise CNIError(Code.IO_FAILURE, f"failed to load flannel 'subnet.env' file {path}: {exc.strerror}") from None
    env = SubnetEnv([], None, [], None, None, None)
    for line in lines:
        name, _, value = line.partition("=")
        if name == "FLANNEL_NETWORK":
            env.networks = _cidrs(value, name, path)
        elif name == "FLANNEL_SUBNET":
            env.subnet = _cidrs(value, name, path)[0]
        elif name == "FLANNEL_IPV6_NETWORK":
            env.networks6 = _cidrs(value, name, path)
        elif name == "FLANNEL_IPV6_SUBNET":
            env.subnet6 = _cidrs(value, name, path)[0]
        elif name == "FLANNEL_MTU":
            if not value.isdigit() or int(value) >= 1 << 32:
                raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{path}: FLANNEL_MTU={value!r} is not a number")
            env.mtu = int(value)
        elif name == "FLANNEL_IPMASQ":
            env.ipmasq = value == "true"
    missing = []
    if not env.networks and not env.networks6:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if env.subnet is None and env.subnet6 is None:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if env.mtu is None:
        missing.append("FLANNEL_MTU")
    if env.ipmasq is None:
        missing.append("FLANNEL_IPMASQ")
    if missing:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG, f"failed to load flannel 'subnet.env' file: {path} is missing {', '.join(missing)}"
        )
    return env


# -- the configuration ----------------------------------------------------------------------


@dataclass
class Conf:
    subnet_file: str
    data_dir: str
    delegate: dict[str, Any] | None
    ipam: dict[str, Any] | None
    runtime_config: dict[str, Any] | None


def _path(raw: dict[str, Any], name: str, default: str) -> str:
    value = gokeys.get(raw, name)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or "\0" in value or not value.startswith("/"):
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG, f"failed to load netconf: {name!r} must be an absolute path, not {json.dumps(value)}"
        )
    return value


def _object(raw: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = gokeys.get(raw, name)
    if value is not None and not isinstance(value, dict):
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG, f"failed to load netconf: {name!r} must be an object, not {json.dumps(value)}"
        )
    return value


def load_conf(call: CmdArgs) -> Conf:
    raw = call.conf.raw
    return Conf(
        subnet_file=_path(raw, "subnetFile", DEFAULT_SUBNET_FILE),
        data_dir=_path(raw, "dataDir", DEFAULT_DATA_DIR),
        delegate=_object(raw, "delegate"),
        ipam=_object(raw, "ipam"),
        runtime_config=_object(raw, "runtimeConfig"),
    )


def _route(raw: Any) -> _Struct:
    """One of ipam.routes as cni's types.Route re-marshals it (dst, gw, mtu, advmss, priority, table, scope)."""
    if not isinstance(raw, dict):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"failed to read IPAM routes: {json.dumps(raw)} is not a route object")
    out = _Struct()
    dst = gokeys.get(raw, "dst")
    try:
        if not isinstance(dst, str):
            raise ValueError
        if "/" not in dst:
            raise ValueError
        parsed = ipaddress.ip_interface(dst)  # types.IPNet keeps the address as written
        out["dst"] = f"{parsed.ip}/{parsed.network.prefixlen}"
    except ValueError:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"failed to read IPAM routes: dst {json.dumps(dst)} is not a CIDR") from None
    gw = gokeys.get(raw, "gw")
    if gw:
        try:
            out["gw"] = str(ipaddress.ip_address(gw))
        except (ValueError, TypeError):
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG, f"failed to read IPAM routes: gw {json.dumps(gw)} is not an address"
            ) from None
    for name in ("mtu", "advmss", "priority"):
        value = gokeys.get(raw, name)
        if value:
            out[name] = value
    for name in ("table", "scope"):
        value = gokeys.get(raw, name)
        if value is not None:
            out[name] = value
    return out


def delegate_conf(call: CmdArgs, conf: Conf, env: SubnetEnv) -> dict[str, Any]:
    """The delegate's configuration, as the reference's cmdAdd + doCmdAdd build it."""
    delegate = dict(conf.delegate or {})
    if "type" in delegate and not isinstance(delegate["type"], str):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "'delegate' dictionary, if present, must have (string) 'type' field")
    if "name" in delegate:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "'delegate' dictionary must not have 'name' field, it'll be set by flannel")
    if "ipam" in delegate:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
    if conf.runtime_config is not None:
        delegate["runtimeConfig"] = conf.runtime_config
    delegate["name"] = call.conf.name
    delegate.setdefault("type", "bridge")
    if not delegate["type"]:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "'delegate' dictionary, if present, must have (string) 'type' field")
    if "ipMasq" not in delegate:
        delegate["ipMasq"] = not env.ipmasq  # flanneld masquerades or the delegate must
    if "mtu" not in delegate:
        delegate["mtu"] = env.mtu
    if delegate["type"] == "bridge" and "isGateway" not in delegate:
        delegate["isGateway"] = True
    version = call.conf.raw.get("cniVersion")
    if isinstance(version, str) and version:
        delegate["cniVersion"] = version
    ipam = dict(conf.ipam or {})
    ipam.setdefault("type", "host-local")
    ranges = []
    if env.subnet is not None:
        ranges.append([{"subnet": str(env.subnet)}])
    if env.subnet6 is not None:
        ranges.append([{"subnet": str(env.subnet6)}])
    ipam["ranges"] = ranges
    routes = ipam.get("routes")
    user_routes = [_route(r) for r in routes] if isinstance(routes, list) else []
    if routes is not None and not isinstance(routes, list):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "failed to read IPAM routes: ipam.routes must be a list")
    ipam["routes"] = user_routes + [_Struct(dst=str(n)) for n in [*env.networks, *env.networks6]]
    delegate["ipam"] = ipam
    return delegate


def _record(conf: Conf, container_id: str) -> str:
    return os.path.join(conf.data_dir, container_id)


def _save(path: str, data: bytes) -> None:
    """The reference's saveScratchNetConf: dataDir 0700, the file 0600, written and synced."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _saved(path: str) -> tuple[bytes, dict[str, Any]] | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    return data, parsed if isinstance(parsed, dict) else {}


# -- the commands ------------------------------------------------------------------------------


# Errors by which a plugin refuses its input before it changes anything.
_REFUSALS = (
    Code.INCOMPATIBLE_CNI_VERSION,
    Code.UNSUPPORTED_FIELD,
    Code.INVALID_ENVIRONMENT_VARIABLES,
    Code.DECODING_FAILURE,
    Code.INVALID_NETWORK_CONFIG,
)


def _locate(call: CmdArgs, kind: str) -> None:
    """Fail before anything is saved when the delegate cannot be run at all."""
    if not call.path:
        raise CNIError(
            Code.INVALID_ENVIRONMENT_VARIABLES, f'CNI_PATH is empty: cannot find the "{kind}" plugin flannel delegates to'
        )
    invoke.find_in_path(kind, call.path)


def add(call: CmdArgs) -> Result:
    conf = load_conf(call)
    env = load_subnet_env(conf.subnet_file)
    delegate = delegate_conf(call, conf, env)
    kind = delegate["type"]
    _locate(call, kind)
    data = go_marshal(delegate).encode()
    path = _record(conf, call.container_id)
    _save(path, data)
    try:
        return delegation.add(call, kind, data)
    except CNIError as failed:
        try:
            delegation.delete(call, kind, data)  # what the delegate left of the failed ADD
            _remove(path)
        except CNIError as exc:
            if failed.code in _REFUSALS:
                _remove(path)  # the delegate refused its input: it made nothing for DEL to find
            else:
                call.log.warning("undoing the failed ADD: %s (the saved configuration stays for DEL)", exc)
        raise


def delete(call: CmdArgs) -> None:
    conf = load_conf(call)
    path = _record(conf, call.container_id)
    saved = _saved(path)
    if saved is None:
        return  # never added, or deleted already
    data, parsed = saved
    kind = parsed.get("type")
    if not isinstance(kind, str) or not kind:
        call.log.warning("%s is not a delegate configuration: leaving it and the attachment as they are", path)
        return
    delegation.delete(call, kind, data)
    _remove(path)


def check(call: CmdArgs) -> None:
    conf = load_conf(call)
    path = _record(conf, call.container_id)
    saved = _saved(path)
    if saved is None or not isinstance(saved[1].get("type"), str):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"flannel: no saved delegate configuration at {path} for this container")
    parsed = dict(saved[1])
    if "prevResult" in call.conf.raw:
        parsed["prevResult"] = call.conf.raw["prevResult"]
    parsed["cniVersion"] = call.cni_version
    delegation.check(call, parsed["type"], go_marshal(parsed).encode())


def _gc_base(call: CmdArgs, conf: Conf, records: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return delegate_conf(call, conf, load_subnet_env(conf.subnet_file))
    except CNIError:
        return next(iter(records.values()), None)  # flanneld is away: any saved configuration of this network


def gc(call: CmdArgs) -> None:
    conf = load_conf(call)
    valid = call.conf.raw.get(VALID_ATTACHMENTS_KEY) or []
    if not isinstance(valid, list):
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG, f"{VALID_ATTACHMENTS_KEY!r} must be a list of {{containerID, ifname}} objects"
        )
    keep = {str(item.get("containerID")) for item in valid if isinstance(item, dict)}
    records: dict[str, dict[str, Any]] = {}
    try:
        names = sorted(os.listdir(conf.data_dir))
    except FileNotFoundError:
        names = []
    for name in names:
        saved = _saved(os.path.join(conf.data_dir, name))
        if saved is not None and saved[1].get("name") == call.conf.name:
            records[name] = saved[1]
    base = _gc_base(call, conf, records)
    if base is None:
        return
    request = dict(base)
    request["cniVersion"] = call.cni_version
    request[VALID_ATTACHMENTS_KEY] = valid
    delegation.gc(call, str(request["type"]), go_marshal(request).encode())
    for name in sorted(records.keys() - keep):
        _remove(os.path.join(conf.data_dir, name))
        gcreport.released("saved configuration", name)


def status(call: CmdArgs) -> None:
    conf = load_conf(call)
    try:
        env = load_subnet_env(conf.subnet_file)
    except CNIError as exc:
        raise CNIError(Code.PLUGIN_NOT_AVAILABLE, f"flannel: {exc.msg}", exc.details) from None
    request = delegate_conf(call, conf, env)
    request["cniVersion"] = call.cni_version
    delegation.status(call, str(request["type"]), go_marshal(request).encode())
