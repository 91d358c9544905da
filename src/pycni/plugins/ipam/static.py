"""static IPAM: the addresses, routes and DNS the configuration names, and nothing stored.

As the reference: `ipam.addresses` ({address in CIDR notation, optional gateway}),
CNI_ARGS `IP` (comma-separated CIDRs, added) and `GATEWAY` (comma-separated, given to
the addresses that contain them), `args.cni.ips` and then the `ips` capability
(runtimeConfig), each replacing the list; `ipam.routes`, `ipam.dns`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pycni.skel import CmdArgs
from pycni.spec import ipaddr
from pycni.spec import version as versions
from pycni.spec.config import Fields
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import DNS, IPAddress, IPConfig, IPInterface, Result, Route

ABOUT = "CNI static IPAM plugin (pycni)"


@dataclass
class Address:
    address: IPInterface
    gateway: IPAddress | None = None


def _cidr(text: Any, where: str, code: int = Code.INVALID_NETWORK_CONFIG) -> IPInterface:
    if isinstance(text, str) and "/" in text:
        try:
            return ipaddr.interface(text.strip())
        except ValueError:
            pass
    raise CNIError(code, f"invalid CIDR {text!r} in {where}: an address with a prefix length, e.g. 10.10.0.5/24")


def _addresses(call: CmdArgs) -> list[Address]:
    if not isinstance(call.conf.fields.raw("ipam"), dict):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "IPAM config missing 'ipam' key")
    out: list[Address] = []
    for i, item in enumerate(call.conf.ipam.get_list("addresses")):
        where = f"ipam.addresses[{i}]"
        if not isinstance(item, dict):
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{where} must be an object with an address")
        entry = Fields(item, where)
        gateway = entry.raw("gateway")
        out.append(Address(_cidr(entry.raw("address"), where), _gateway(gateway, where) if gateway else None))
    if call.args:
        env = call.cni_args_dict(known=("IP", "GATEWAY"))
        for text in filter(None, env.get("IP", "").split(",")):
            out.append(Address(_cidr(text, "CNI_ARGS IP", Code.INVALID_ENVIRONMENT_VARIABLES)))
        for text in filter(None, env.get("GATEWAY", "").split(",")):
            gw = _gateway(text.strip(), "CNI_ARGS GATEWAY", Code.INVALID_ENVIRONMENT_VARIABLES)
            for addr in out:
                if gw.version == addr.address.version and gw in addr.address.network:
                    addr.gateway = gw
    for where, fields in (("args.cni.ips", call.conf.args_cni), ("runtimeConfig.ips", call.conf.runtime_config)):
        ips = fields.get_list("ips")
        if ips:
            out = [Address(_cidr(text, f"{where}[{i}]")) for i, text in enumerate(ips)]
    families = [a.address.version for a in out]
    if max(families.count(4), families.count(6), 0) > 1 and not versions.at_least(call.cni_version, "0.3.0"):
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG, f"CNI version {call.cni_version} does not support more than 1 address per family"
        )
    return out


def _gateway(text: Any, where: str, code: int = Code.INVALID_NETWORK_CONFIG) -> IPAddress:
    try:
        return ipaddr.address(str(text).strip())
    except ValueError:
        raise CNIError(code, f"invalid gateway address {text!r} in {where}") from None


def _routes(call: CmdArgs) -> list[Route]:
    routes = []
    for i, item in enumerate(call.conf.ipam.get_list("routes")):
        try:
            routes.append(Route.from_dict(item))
        except CNIError as exc:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid ipam.routes[{i}]: {exc.msg}") from None
    return routes


def _dns(call: CmdArgs) -> DNS:
    try:
        return DNS.from_dict(call.conf.ipam.raw("dns"))
    except CNIError as exc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid ipam.dns: {exc.msg}") from None


def add(call: CmdArgs) -> Result:
    return Result(
        cni_version=call.cni_version,
        ips=[IPConfig(address=a.address, gateway=a.gateway) for a in _addresses(call)],
        routes=_routes(call),
        dns=_dns(call),
    )


def check(call: CmdArgs) -> None:
    addresses = _addresses(call)
    prev = call.prev_result
    if prev is None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "static: required prevResult missing")
    for addr in addresses:
        match = next((ip for ip in prev.ips if ip.address.ip == addr.address.ip), None)
        if match is None:
            raise CNIError(Code.UNKNOWN_CONTAINER, f"static: address {addr.address} is not in the prevResult of {call.ifname}")
        if addr.gateway is not None and match.gateway != addr.gateway:
            raise CNIError(Code.UNKNOWN_CONTAINER, f"static: Failed to match addr {match.address.ip} on interface {call.ifname}")


def delete(call: CmdArgs) -> None:
    """Nothing was allocated, so there is nothing to release."""
