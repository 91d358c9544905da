"""calico-node's start: everything node/pkg/lifecycle/startup and node/pkg/allocateip do
before the daemon's loop begins.

1. the node's addresses (IP / IP6 and the autodetection methods), checked against the host's
   interfaces and against the other nodes;
2. the `Node` resource: spec.bgp.ipv4Address / ipv6Address, asNumber (AS), created or merged;
3. the default pools (CALICO_IPV4POOL_* / CALICO_IPV6POOL_*) unless a pool of that family exists
   or NO_DEFAULT_POOLS=true;
4. the VXLAN tunnel address through IPAM (handle `vxlan-tunnel-addr-<node>`, attributes
   node and type=vxlanTunnelAddress) and spec.vxlanTunnelMACAddr (felix's derivation);
5. the nodename file and /var/lib/calico/mtu.

Every check that can refuse the configuration runs before the first write: a bad IP, an
autodetection method that finds nothing, overlapping pools, an IPIP default pool on a
kernel without IPIP are a `StartupError` and nothing is created.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pycni.calico import model
from pycni.calico.bgp import parse_asn
from pycni.calico.datastore import Datastore, DatastoreUnavailable, open_datastore
from pycni.calico.ipam import IPAM
from pycni.calico.node import autodetect, ipip
from pycni.calico.node.config import VXLAN_OVERHEAD, NodeConfig
from pycni.calico.pools import BLOCK_SIZE_RANGE, ENCAP_MODES, Pool, PoolError, Pools
from pycni.calico.resources import NODE, ResourceError, Resources
from pycni.spec.errors import CNIError

log = logging.getLogger("calico-node")
T = TypeVar("T")

VXLAN_HANDLE = "vxlan-tunnel-addr-{}"
VXLAN_V6_HANDLE = "vxlan-v6-tunnel-addr-{}"
ATTR_TYPE_VXLAN = "vxlanTunnelAddress"
ATTR_TYPE_VXLAN_V6 = "vxlanV6TunnelAddress"


class StartupError(RuntimeError):
    """calico-node cannot start; the message says why and what to change."""


@dataclass
class NodeIdentity:
    """What start-up settled: the node's name, addresses and interface, its MTUs."""

    nodename: str
    ipv4: ipaddress.IPv4Interface | None
    ipv6: ipaddress.IPv6Interface | None
    interface: str
    underlay_mtu: int
    mtu: int


def vxlan_mac(nodename: str, version: int = 4) -> str:
    """Felix's VTEP MAC for a node without one configured: "f" (0x66) then the first five
    bytes of the SHA-1 of the node name (with "-v6" appended for IPv6)."""
    digest = hashlib.sha1((nodename if version == 4 else nodename + "-v6").encode()).digest()
    return ":".join(f"{b:02x}" for b in b"f" + digest[:5])


def open_store(cfg: NodeConfig, timeout: float) -> Datastore:
    """The datastore, waiting up to `timeout` for it (forever with WAIT_FOR_DATASTORE=true)."""
    forever = cfg.env.get("WAIT_FOR_DATASTORE", "").lower() == "true"
    deadline = time.monotonic() + timeout
    while True:
        try:
            store = open_datastore(cfg.datastore)
            store.revision()
            return store
        except DatastoreUnavailable as exc:
            if not forever and time.monotonic() > deadline:
                raise StartupError(f"cannot reach the datastore: {exc}") from None
            log.warning("Waiting for the datastore: %s", exc)
            time.sleep(1.0)


def _retry(fn: Callable[[], T]) -> T:
    for _ in range(20):
        try:
            return fn()
        except ResourceError as exc:
            if "conflict" not in str(exc) and "already exists" not in str(exc):
                raise
    raise StartupError("the Node resource kept changing while calico-node registered it")


# -- addresses --------------------------------------------------------------------------------


def _explicit(var: str, text: str, version: int, items: list[autodetect.Interface]) -> tuple[Any, str]:
    try:
        value = ipaddress.ip_interface(text)
    except ValueError:
        raise StartupError(f"Environment does not contain a valid IPv{version} address: {var}={text}") from None
    if value.version != version:
        raise StartupError(f"Environment does not contain a valid IPv{version} address: {var}={text}")
    local = autodetect.find_local(value.ip, items)
    if local is None:
        raise StartupError(
            f"{var}={text}: IPv{version} address {value.ip} is not assigned to any interface of this host; "
            f"set {var} to one of its addresses, or {var}=autodetect"
        )
    if "/" in text:
        return value, local[1]
    return local  # the prefix comes from the interface


def resolve_address(
    var: str, value: str, method: str, version: int, existing: str, items: list[autodetect.Interface]
) -> tuple[Any, str]:
    """(address with prefix or None, interface) for IP / IP6, as configureIPsAndSubnets decides."""
    autodetect_default = version == 4 and value == "" and not existing
    if value == "autodetect" or autodetect_default:
        try:
            return autodetect.autodetect(method, version, items)
        except autodetect.AutodetectError as exc:
            hint = "IP6_AUTODETECTION_METHOD" if version == 6 else "IP_AUTODETECTION_METHOD"
            raise StartupError(
                f"Couldn't autodetect an IPv{version} address: {exc}. Choose another {hint}, or set {var} explicitly"
            ) from None
    if value == "none":
        return None, ""
    text = value or existing
    if not text:
        return None, ""
    return _explicit(var if value else f"the Node's existing IPv{version} address ({var} unset)", text, version, items)


# -- pools ------------------------------------------------------------------------------------


def _check_pools(cfg: NodeConfig, pools: list[Pool], want_v6: bool) -> list[int]:
    """Which default pools to create (families); StartupError for a pool set that cannot work."""
    for i, a in enumerate(pools):
        for b in pools[i + 1 :]:
            if a.version == b.version and a.cidr.overlaps(b.cidr):
                raise StartupError(
                    f"IPPool({a.name}) CIDR {a.cidr} overlaps with IPPool({b.name}) CIDR {b.cidr}: delete or change one"
                )
    for pool in pools:
        if ipip.uses_ipip(pool) and not ipip.kernel_supports_ipip():
            raise StartupError(f"IPPool({pool.name}) has ipipMode {pool.ipip_mode}: {ipip.MISSING}")
    if cfg.no_default_pools:
        return []
    create = []
    for version in (4, 6):
        prefix = f"CALICO_IPV{version}POOL_"
        text = cfg.pool_env.get(prefix + "CIDR", "").strip()
        if text == "none" or (version == 6 and not text and not want_v6):
            continue
        if text:
            try:
                cidr = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise StartupError(f"Invalid CIDR specified in {prefix}CIDR '{text}'") from None
            if cidr.version != version:
                raise StartupError(f"Invalid CIDR specified in {prefix}CIDR '{text}': not an IPv{version} CIDR")
        block = cfg.pool_env.get(prefix + "BLOCK_SIZE", "").strip()
        if block:
            low, high = BLOCK_SIZE_RANGE[version]
            if not block.isdigit() or not low <= int(block) <= high:
                raise StartupError(f"Invalid blocksize {block} for version {version} ({prefix}BLOCK_SIZE: {low} to {high})")
        for key in ("IPIP", "VXLAN") if version == 4 else ("VXLAN",):
            mode = cfg.pool_env.get(prefix + key, "").strip()
            if mode.lower().replace("-", "") not in ENCAP_MODES:
                raise StartupError(f"Unrecognized {key} mode specified in {prefix}{key} '{mode}' (Never, Always, CrossSubnet)")
        ipip_mode = ENCAP_MODES[cfg.pool_env.get(prefix + "IPIP", "").strip().lower().replace("-", "")]
        vxlan_mode = ENCAP_MODES[cfg.pool_env.get(prefix + "VXLAN", "").strip().lower().replace("-", "")]
        if version == 4 and ipip_mode != "Never" and vxlan_mode != "Never":
            raise StartupError("CALICO_IPV4POOL_IPIP and CALICO_IPV4POOL_VXLAN cannot both be enabled on the default pool")
        present = [p for p in pools if p.version == version]
        if present:
            if text:
                for pool in present:
                    if pool.cidr != cidr and pool.cidr.overlaps(cidr):
                        raise StartupError(f"{prefix}CIDR {cidr} overlaps with IPPool({pool.name}) CIDR {pool.cidr}")
            continue
        if version == 4 and ipip_mode != "Never" and not ipip.kernel_supports_ipip():
            raise StartupError(f"CALICO_IPV4POOL_IPIP={ipip_mode}: {ipip.MISSING}")
        create.append(version)
    return create


def _create_default_pools(store: Datastore, cfg: NodeConfig, versions: list[int]) -> None:
    env = dict(cfg.pool_env)
    for version in versions:
        prefix = f"CALICO_IPV{version}POOL_"
        for key in ("IPIP", "VXLAN"):
            if prefix + key in env:
                env[prefix + key] = ENCAP_MODES[env[prefix + key].strip().lower().replace("-", "")]
        nat = env.get(prefix + "NAT_OUTGOING")
        if nat is not None:  # Calico's evaluateENVBool
            env[prefix + "NAT_OUTGOING"] = "false" if nat.strip().lower() in ("false", "0", "no", "n", "f") else "true"
        try:
            Pools(store).ensure_default(version, env)
        except (PoolError, ResourceError) as exc:
            raise StartupError(f"Failed to create the default IPv{version} pool: {exc}") from None
        log.info("Default IPv%d pool ensured", version)


# -- the Node resource --------------------------------------------------------------------------


def _check_conflicts(store: Datastore, name: str, ipv4: Any, ipv6: Any) -> None:
    for other in Resources(store, NODE).list():
        if other["metadata"]["name"] == name:
            continue
        bgp = (other.get("spec") or {}).get("bgp") or {}
        for mine, key in ((ipv4, "ipv4Address"), (ipv6, "ipv6Address")):
            theirs = bgp.get(key)
            if mine is not None and theirs and ipaddress.ip_interface(theirs).ip == mine.ip:
                raise StartupError(
                    f"Calico node '{other['metadata']['name']}' is already using the IPv{mine.version} address {mine.ip}: "
                    "give this node another address (IP/IP6), or delete the other node with `calicoctl delete node`"
                )


def register_node(store: Datastore, cfg: NodeConfig, ipv4: Any, ipv6: Any) -> dict[str, Any]:
    nodes = Resources(store, NODE)

    def write() -> dict[str, Any]:
        current = nodes.get(cfg.nodename)
        obj = current or {"metadata": {"name": cfg.nodename}, "spec": {}}
        spec = obj.setdefault("spec", {})
        if cfg.backend == "none":
            return current or nodes.create(obj)
        bgp = dict(spec.get("bgp") or {})
        for key, value in (("ipv4Address", ipv4), ("ipv6Address", ipv6)):
            if value is not None:
                bgp[key] = str(value)
            else:
                bgp.pop(key, None)
        if cfg.asn:
            bgp["asNumber"] = parse_asn(cfg.asn)
        spec["bgp"] = {k: bgp[k] for k in ("ipv4Address", "ipv6Address", "asNumber") if k in bgp} | {
            k: v for k, v in bgp.items() if k not in ("ipv4Address", "ipv6Address", "asNumber")
        }
        if current is None:
            log.info("Creating the Node resource %s", cfg.nodename)
            return nodes.create(obj)
        if json.dumps(current, sort_keys=True) == json.dumps(obj, sort_keys=True):
            return current
        return nodes.update(obj)

    return _retry(write)


def _tunnel_pools(store: Datastore, node: dict[str, Any], version: int) -> list[Pool]:
    labels = {str(k): str(v) for k, v in ((node.get("metadata") or {}).get("labels") or {}).items()}
    return [
        p
        for p in Pools(store).enabled(version)
        if p.vxlan_mode in ("Always", "CrossSubnet") and "Tunnel" in p.allowed_uses and p.selects(labels)
    ]


def reconcile_tunnel_address(store: Datastore, nodename: str, version: int = 4) -> str:
    """Felix's allocateip for VXLAN: keep the node's tunnel address if IPAM records it as this
    node's, else release the handle and assign a new one from a VXLAN pool; remove it when no
    VXLAN pool selects the node. Returns the address ("" when none)."""
    handle = (VXLAN_HANDLE if version == 4 else VXLAN_V6_HANDLE).format(nodename)
    attr_type = ATTR_TYPE_VXLAN if version == 4 else ATTR_TYPE_VXLAN_V6
    addr_key = "ipv4VXLANTunnelAddr" if version == 4 else "ipv6VXLANTunnelAddr"
    mac_key = "vxlanTunnelMACAddr" if version == 4 else "vxlanTunnelMACAddrV6"
    nodes = Resources(store, NODE)
    ipam = IPAM(store)
    node = nodes.get(nodename)
    if node is None:
        raise StartupError(f"the Node resource {nodename} disappeared during start-up")
    pools = _tunnel_pools(store, node, version)
    current = str((node.get("spec") or {}).get(addr_key) or "")
    address = ""
    if pools:
        if current:
            attr = ipam.assignment(ipaddress.ip_address(current))
            ok = (
                attr is not None
                and attr.secondary.get(model.ATTR_TYPE) == attr_type
                and attr.secondary.get(model.ATTR_NODE) == nodename
            )
            in_pool = any(ipaddress.ip_address(current) in p.cidr for p in pools)
            if ok and in_pool:
                address = current
        if not address:
            try:
                ipam.release_by_handle(handle)
            except Exception:  # noqa: BLE001 - KeyNotFound: nothing held yet
                pass
            attrs = {model.ATTR_NODE: nodename, model.ATTR_TYPE: attr_type}
            try:
                if version == 4:
                    v4, _ = ipam.auto_assign(1, 0, handle, attrs, nodename, v4_pools=[p.cidr for p in pools])
                    got = v4
                else:
                    _, v6 = ipam.auto_assign(0, 1, handle, attrs, nodename, v6_pools=[p.cidr for p in pools])
                    got = v6
            except CNIError as exc:
                raise StartupError(f"failed to allocate the VXLAN tunnel address: {exc.msg}") from None
            if got is None or not got.ips:
                reason = got.partial_error() if got is not None else "no VXLAN pool"
                raise StartupError(f"failed to allocate the VXLAN tunnel address: {reason}")
            address = str(got.ips[0].ip)
            log.info("Assigned VXLAN tunnel address %s to node %s", address, nodename)
    elif current:
        try:
            ipam.release_by_handle(handle)
        except Exception:  # noqa: BLE001 - already released
            pass
        log.info("No VXLAN pool selects this node: released its tunnel address %s", current)

    def change(obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if address:
            spec[addr_key] = address
            spec.setdefault(mac_key, vxlan_mac(nodename, version))
        else:
            spec.pop(addr_key, None)

    if address != current or (address and not (node.get("spec") or {}).get(mac_key)):
        nodes.modify(nodename, None, change)
    return address


# -- files ---------------------------------------------------------------------------------------


def write_file(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _link_mtu(name: str) -> int:
    try:
        with open(f"/sys/class/net/{name}/mtu") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 1500


def run(store: Datastore, cfg: NodeConfig) -> NodeIdentity:
    """Everything before the loop; StartupError (nothing written) when it cannot be done."""
    nodes = Resources(store, NODE)
    existing = nodes.get(cfg.nodename) or {}
    bgp = (existing.get("spec") or {}).get("bgp") or {}
    ipv4 = ipv6 = None
    interface = ""
    if cfg.backend != "none" or cfg.ip or cfg.ip6:
        v4_items = autodetect.interfaces(4)
        ipv4, interface = resolve_address(
            "IP", cfg.ip, cfg.ip_autodetection_method, 4, str(bgp.get("ipv4Address") or ""), v4_items
        )
        if cfg.ip6 or bgp.get("ipv6Address"):
            v6_items = autodetect.interfaces(6)
            ipv6, iface6 = resolve_address(
                "IP6", cfg.ip6, cfg.ip6_autodetection_method, 6, str(bgp.get("ipv6Address") or ""), v6_items
            )
            interface = interface or iface6
    _check_conflicts(store, cfg.nodename, ipv4, ipv6)
    pools = Pools(store).all()
    create = _check_pools(cfg, pools, want_v6=ipv6 is not None)
    # Checks done: from here on, write.
    node = register_node(store, cfg, ipv4, ipv6)
    del node
    _create_default_pools(store, cfg, create)
    IPAM(store).config()  # the IPAM configuration exists, as ensureDefaultIPAMConfigExists makes it
    if cfg.backend != "none":
        reconcile_tunnel_address(store, cfg.nodename, 4)
    underlay = _link_mtu(interface) if interface else 1500
    vxlan = any(p.vxlan_mode != "Never" and not p.disabled for p in Pools(store).all())
    mtu = cfg.vxlan_mtu or (underlay - VXLAN_OVERHEAD[4] if vxlan else underlay)
    write_file(cfg.nodename_file, cfg.nodename)
    write_file(cfg.mtu_file, f"{mtu}\n")
    log.info("Using node name: %s", cfg.nodename)
    return NodeIdentity(cfg.nodename, ipv4, ipv6, interface, underlay, mtu)
