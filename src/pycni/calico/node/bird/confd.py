"""BIRD's configuration generated from the datastore, as Calico's confd renders its templates
(node/filesystem/etc/calico/confd/templates, and confd's bgp_processor for the peers and the
pool filters): bird.cfg, bird_ipam.cfg, bird_aggr.cfg and their IPv6 twins, in BIRD 1.x
syntax, for BIRD 1.6 (`bird`, `bird6`).

- the node-to-node mesh (unless the global BGPConfiguration sets nodeToNodeMeshEnabled
  false): a `Mesh_<ip>` peer per other node with an address of the family, passive towards
  nodes whose address sorts after ours (so each pair opens one session);
- BGPPeers: global ones (`Global_<ip>`; neither node nor nodeSelector) and node-specific ones
  (`Node_<ip>`; node, or a nodeSelector matching this node), to peerIP or to every node a
  peerSelector matches;
- export: only this node's blocks (a blackhole static route per block, `calico_aggr` lets a
  block out and nothing beneath it) and pool routes; routes of Felix's tunnel devices never
  go to iBGP peers;
- kernel: learned routes are installed (RTPROT_BIRD) except those of VXLAN pools, which are
  programmed by calico-node's routes component.

What confd reads from /calico/bgp/v1/ (the v1 keys Calico's syncer derives) is derived here
from the v3 resources directly. Output is confd's, line for line (tests compare it with
confd's compiled templates).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pycni.calico import selector
from pycni.calico.bgp import split_peer_ip
from pycni.calico.node.view import ClusterView, NodeInfo
from pycni.calico.pools import Pool

BIRD_INT_MAX = 2147483647
OVERRIDE_PREFERENCE = 200
DEFAULT_PRIORITY = 1024
_DIRECT_COMMENT = """ # Exclude cali* and kube-ipvs* but
                                          # include everything else.  In
                                          # IPVS-mode, kube-proxy creates a
                                          # kube-ipvs0 interface. We exclude
                                          # kube-ipvs0 because this interface
                                          # gets an address for every in use
                                          # cluster IP. We use static routes
                                          # for when we legitimately want to
                                          # export cluster IPs."""
_DEFAULT_INTERFACES = '-"cali*", -"kube-ipvs*", "*"'


@dataclass
class Peer:
    name: str
    ip: str
    asn: int
    kind: str  # mesh, global, node
    port: int = 0
    source: str = ""
    ttl_security: str = "off"
    passive: bool = False
    local_asn: int = 0
    restart_time: str = ""
    keepalive_time: str = ""
    next_hop_keep: bool = False
    next_hop_self: bool = False
    num_allow_local_as: int = 0
    rr_cluster_id: str = ""
    import_filter: list[str] = field(default_factory=list)
    export_filter: list[str] = field(default_factory=list)


@dataclass
class Files:
    """The three files of one family, named as confd names them."""

    main: str
    ipam: str
    aggr: str

    def by_name(self, version: int) -> dict[str, str]:
        six = "6" if version == 6 else ""
        return {f"bird{six}.cfg": self.main, f"bird{six}_ipam.cfg": self.ipam, f"bird{six}_aggr.cfg": self.aggr}


def _addr(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None) -> str:
    return "" if iface is None else str(iface.ip)


def _node_ip(node: NodeInfo, version: int) -> str:
    return _addr(node.ipv4 if version == 4 else node.ipv6)


def _peer_name(prefix: str, ip: str, version: int, port: int = 0) -> str:
    name = f"{prefix}_{ip.replace('.' if version == 4 else ':', '_')}"
    return f"{name}_port_{port}" if port else name


def _import_filter(priority: int) -> list[str]:
    return [
        f"if (defined(bgp_local_pref)&&(bgp_local_pref > {BIRD_INT_MAX - priority})) then",
        f"  preference = {OVERRIDE_PREFERENCE};",
        "accept;",
    ]


def _export_filter(same_as: bool, priority: int) -> list[str]:
    return [
        "if (defined(source) && source = RTS_BGP && defined(bgp_local_pref)) then {",
        f"  krt_metric = {BIRD_INT_MAX} - bgp_local_pref;",
        "} else {",
        f"  if (!defined(krt_metric)) then {{ krt_metric = {priority}; }}",
        f"  bgp_local_pref = {BIRD_INT_MAX} - krt_metric;",
        "}",
        f"calico_export_to_bgp_peers({str(same_as).lower()});",
        "reject;",
    ]


class Generator:
    """Renders the files for one node from a ClusterView."""

    def __init__(self, view: ClusterView, nodename: str, router_id: str = "") -> None:
        self.view = view
        self.nodename = nodename
        self.router_id = router_id
        self.priority = DEFAULT_PRIORITY

    @property
    def me(self) -> NodeInfo | None:
        return self.view.nodes.get(self.nodename)

    def asn(self) -> int:
        me = self.me
        return self.view.node_asn(me) if me is not None else self.view.global_asn()

    def log_level(self) -> str:
        node_cfg = self.view.bgp_configs.get(f"node.{self.nodename}", {})
        level = node_cfg.get("logSeverityScreen") or self.view.bgp_configs.get("default", {}).get("logSeverityScreen") or "Info"
        return str(level).lower()

    def debug_modes(self) -> tuple[str, str]:
        level = self.log_level()
        if level == "none":
            return "", ""
        if level == "debug":
            return "all", "debug all;"
        return "{ states }", "debug { states, routes, filters, events };"

    # -- peers -----------------------------------------------------------------------------

    def peers(self, version: int) -> list[Peer]:
        me = self.me
        if me is None:
            return []
        mine = _node_ip(me, version)
        if not mine:
            return []
        asn = self.asn()
        out: list[Peer] = []
        if self.view.mesh_enabled() and not me.rr_cluster_id:
            for node in sorted(self.view.nodes.values(), key=lambda n: _node_ip(n, version)):
                ip = _node_ip(node, version)
                if not ip or ip == mine or node.rr_cluster_id:
                    continue
                peer_asn = self.view.node_asn(node)
                out.append(
                    Peer(
                        name=_peer_name("Mesh", ip, version),
                        ip=ip,
                        asn=peer_asn,
                        kind="mesh",
                        source=mine,
                        passive=ip > mine,
                        import_filter=_import_filter(self.priority),
                        export_filter=_export_filter(peer_asn == asn, self.priority),
                        restart_time=str(
                            self.view.bgp_configs.get("default", {}).get("nodeMeshMaxRestartTime") or ""
                        ).removesuffix("s"),
                    )
                )
        seen: set[tuple[str, int]] = set()
        labels = me.label_map
        for global_pass in (True, False):
            for name in sorted(self.view.bgp_peers):
                spec = self.view.bgp_peers[name]
                is_global = not spec.get("node") and not spec.get("nodeSelector")
                if is_global != global_pass:
                    continue
                if not is_global:
                    if spec.get("node") and spec["node"] != self.nodename:
                        continue
                    if spec.get("nodeSelector") and not _selects(str(spec["nodeSelector"]), labels):
                        continue
                for peer in self._peers_of(spec, version, mine, asn, "Global" if is_global else "Node"):
                    key = (peer.ip, peer.port)
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(peer)
        return out

    def _peers_of(self, spec: dict[str, object], version: int, mine: str, asn: int, prefix: str) -> list[Peer]:
        targets: list[tuple[str, int, int, bool]] = []  # ip, port, asn, is a calico node
        if spec.get("peerSelector"):
            for node in sorted(self.view.nodes.values(), key=lambda n: n.name):
                if _selects(str(spec["peerSelector"]), node.label_map):
                    ip = _node_ip(node, version)
                    if ip:
                        targets.append((ip, 0, self.view.node_asn(node), True))
        elif spec.get("peerIP"):
            try:
                host, port = split_peer_ip(str(spec["peerIP"]))
            except ValueError:
                return []
            if ipaddress.ip_address(host).version != version:
                return []
            is_node = any(_node_ip(n, version) == host for n in self.view.nodes.values())
            targets.append((str(ipaddress.ip_address(host)), port, int(spec.get("asNumber") or 0), is_node))  # type: ignore[call-overload]
        out = []
        for ip, port, peer_asn, calico_node in targets:
            if ip == mine:
                continue
            local_asn = int(spec.get("localASNumber") or 0)  # type: ignore[call-overload]
            effective = local_asn or asn
            ttl = int(spec.get("ttlSecurity") or 0)  # type: ignore[call-overload]
            mode = str(spec.get("nextHopMode") or "")
            peer = Peer(
                name=_peer_name(prefix, ip, version, port),
                ip=ip,
                asn=peer_asn,
                kind=prefix.lower(),
                port=port,
                source=mine if spec.get("sourceAddress", "UseNodeIP") == "UseNodeIP" else "",
                ttl_security=str(ttl) if ttl else "off",
                local_asn=local_asn,
                restart_time=str(spec.get("maxRestartTime") or "").removesuffix("s"),
                keepalive_time=str(spec.get("keepaliveTime") or "").removesuffix("s"),
                next_hop_self=mode == "Self",
                next_hop_keep=mode == "Keep" or (bool(spec.get("keepOriginalNextHop")) and peer_asn != effective),
                num_allow_local_as=int(spec.get("numAllowedLocalASNumbers") or 0),  # type: ignore[call-overload]
                import_filter=_import_filter(self.priority),
                export_filter=_export_filter(peer_asn == effective, self.priority),
            )
            if peer.kind == "global" and calico_node and ip > mine:
                peer.passive = True
            me = self.me
            if me is not None and me.rr_cluster_id and peer_asn == effective:
                peer.rr_cluster_id = me.rr_cluster_id
            out.append(peer)
        return out

    # -- files -----------------------------------------------------------------------------

    def render(self, version: int) -> Files:
        return Files(self.main(version), self.ipam(version), self.aggr(version))

    def main(self, version: int) -> str:
        six = "6" if version == 6 else ""
        debug, peer_debug = self.debug_modes()
        me = self.me
        node_ip = _node_ip(me, version) if me is not None else ""
        router_id = self.router_id or (_node_ip(me, 4) if me is not None else "")
        out = ["function apply_communities ()", "{", "}", ""]
        out += [
            "template kernel kernel_template {",
            "  learn;             # Learn all alien routes from the kernel",
            "  persist;           # Don't remove routes on bird shutdown",
            "  scan time 2;       # Scan kernel routing table every 2 seconds",
            "  import all;",
            "}",
            "",
            "template direct direct_template {",
        ]
        if debug:
            out.append(f"  debug {debug};")
        ignored = [f'-"{i}"' for i in self.view.bgp_configs.get("default", {}).get("ignoredInterfaces") or []]
        interfaces = ", ".join([*ignored, _DEFAULT_INTERFACES])
        out.append(f"  interface {interfaces};" + (_DIRECT_COMMENT if interfaces == _DEFAULT_INTERFACES else ""))
        out += ["}", "", "# Generated by confd", f'include "bird{six}_aggr.cfg";', f'include "bird{six}_ipam.cfg";', ""]
        out.append(f"router id {router_id};")
        port = self.view.bgp_configs.get(f"node.{self.nodename}", {}).get("listenPort") or self.view.bgp_configs.get(
            "default", {}
        ).get("listenPort")
        if port:
            out += ["# BGP listen configuration", f"listen bgp port {port};"]
        out += [
            "",
            "# Configure synchronization between routing tables and kernel.",
            "protocol kernel from kernel_template {",
            "  export filter calico_kernel_programming; # Default is export none",
            "  graceful restart;  # Turn on graceful restart to reduce potential flaps in",
            "                     # routes when reloading BIRD configuration.  With a full",
            "                     # automatic mesh, there is no way to prevent BGP from",
            "                     # flapping since multiple nodes update their BGP",
            "                     # configuration at the same time, GR is not guaranteed to",
            "                     # work correctly in this scenario.",
            "  merge paths on;    # Allow export multipath routes (ECMP)",
            "}",
            "",
            "# Watch interface up/down events.",
            "protocol device {",
        ]
        if debug:
            out.append(f"  debug {debug};")
        out += ["  scan time 2;    # Scan interfaces every 2 seconds", "}", "", "protocol direct from direct_template {", "}", ""]
        if not node_ip:
            out.append(f"# IPv{version} disabled on this node.")
            return "\n".join(out) + "\n"
        out += ["# Template for all BGP clients", "template bgp bgp_template {"]
        if peer_debug:
            out.append(f"  {peer_debug}")
        out += [
            '  description "Connection to BGP peer";',
            f"  local as {self.asn()};",
            "  gateway recursive; # This should be the default, but just in case.",
            "  add paths on;",
            "  graceful restart;  # See comment in kernel section about graceful restart.",
            "  connect delay time 2;",
            "  connect retry time 5;",
            "  error wait time 5,30;",
            "}",
            "",
            "# -------------- BGP Filters ------------------",
            f"# No v{version} BGPFilters configured",
        ]
        peers = self.peers(version)
        if not peers:
            out.append("# No BGP peers configured for this node")
        else:
            out.append("# BGP Protocol Configurations")
            for p in peers:
                out += self._peer(p)
        out.append("")
        return "\n".join(out) + "\n"

    @staticmethod
    def _peer(p: Peer) -> list[str]:
        out = [f"protocol bgp {p.name} from bgp_template {{"]
        if p.local_asn:
            out.append(f"  local as {p.local_asn};")
        out.append(f"  neighbor {p.ip}{f' port {p.port}' if p.port else ''} as {p.asn};")
        if p.source:
            out.append(f"  source address {p.source};  # The local address we use for the TCP connection")
        if p.ttl_security == "off":
            out += ["  ttl security off;", "  multihop;"]
        else:
            out += ["  ttl security on;", f"  multihop {p.ttl_security};"]
        out += ["  import filter {", *(f"    {line}" for line in p.import_filter), "  };"]
        out += [
            "  export filter {",
            *(f"    {line}" for line in p.export_filter),
            "  };  # Only want to export routes for workloads.",
        ]
        if p.passive:
            out.append("  passive on;")
        if p.restart_time:
            out.append(f"  graceful restart time {p.restart_time};")
        if p.keepalive_time:
            out.append(f"  keepalive time {p.keepalive_time};")
        if p.rr_cluster_id:
            out += ["  rr client;", f"  rr cluster id {p.rr_cluster_id};"]
        if p.next_hop_keep:
            out.append("  next hop keep;")
        if p.next_hop_self:
            out.append("  next hop self;")
        if p.num_allow_local_as:
            out.append(f"  allow local as {p.num_allow_local_as};")
        out.append("}")
        return out

    def _pool_statements(self, version: int) -> tuple[list[str], list[str], list[str]]:
        """(export: disabled-pool rejects, export: accepts, kernel programming) as processIPPools."""
        me = self.me
        local = me.ipv4 if (me is not None and version == 4) else None
        rejects: list[str] = []
        accepts: list[str] = []
        kernel: list[str] = []
        for pool in self.view.pools.values():
            if pool.version != version:
                continue
            cidr = str(pool.cidr)
            export = _pool_statement(pool, cidr, for_kernel=False)
            if export is not None:
                (rejects if export[1] == "reject" else accepts).append(export[0])
            if version == 6 or local is not None:
                stmt = _pool_statement(pool, cidr, for_kernel=True)
                if stmt is not None and (version == 4 or stmt[1] == "reject"):
                    kernel.append(stmt[0])
        return sorted(rejects), sorted(accepts), sorted(kernel)

    def ipam(self, version: int) -> str:
        rejects, accepts, kernel = self._pool_statements(version)
        out = [
            "# Generated by confd",
            "",
            "function reject_local_routes () {",
            "  # Don't export local routes learned via BPF as they should never leave the node.",
            "  if (defined(ifname)) then {",
            '     if (ifname ~ "bpf*.cali") then {',
            "        reject;",
            "     }",
            "  }",
            "}",
            "",
            "function calico_export_to_bgp_peers(bool internal_peer) {",
            "  # filter code terminates when it calls `accept;` or `reject;`,",
            *rejects,
            "  if (internal_peer) then {",
            "    if (defined(ifname)) then {",
            '      if ((ifname ~ "*.cali") || (ifname ~ "*.calico") || (ifname ~ "tunl0")) then {',
            "        reject;",
            "      }",
            "    }",
            "  }",
            "  reject_local_routes();",
            "  apply_communities();",
            "  calico_aggr();",
            *accepts,
            "}",
            "",
            "filter calico_kernel_programming {",
            "  if (defined(source) && (source = RTS_BGP) && !defined(krt_metric)) then {",
            f"      krt_metric = {self.priority};",
            "      if (defined(bgp_local_pref)) then {",
            f"          krt_metric = {BIRD_INT_MAX} - bgp_local_pref;",
            "      }",
            f"      if (krt_metric < {self.priority}) then {{",
            f"          preference = {OVERRIDE_PREFERENCE};",
            "      }",
            "  }",
            *kernel,
            "  accept;",
            "}",
        ]
        return "\n".join(out) + "\n"

    def aggr(self, version: int) -> str:
        # confd lists the affinity keys: sorted as strings ("10.0.0.0-30" < "192...")
        blocks = sorted(
            (
                (cidr, state)
                for (host, cidr), state in self.view.affinities.items()
                if host == self.nodename and cidr.version == version
            ),
            key=lambda item: str(item[0]).replace("/", "-"),
        )
        full = 32 if version == 4 else 128
        out = ["# Generated by confd", "", "template static static_template {"]
        if blocks:
            out.append("   # IP blocks for this host.")
            out += [f"   route {cidr} blackhole;" for cidr, _ in blocks if cidr.prefixlen != full]
        else:
            out.append("   # No IP blocks or static routes for this host.")
        out += ["}", ""]
        if blocks:
            out += ["protocol static from static_template {", "}", ""]
        out += ["# Aggregation of routes on this host; export the block, nothing beneath it.", "function calico_aggr ()", "{"]
        for cidr, state in blocks:
            if state:
                out.append(f"      # Block {cidr} is {state}")
                if state != "confirmed":
                    continue
            else:
                out.append(f"      # Block {cidr} is implicitly confirmed.")
            out += [
                f"      if ( net = {cidr} ) then {{ accept; }}",
                f"      if ( net ~ {cidr} && krt_metric < {self.priority} ) then {{ accept; }}",
                f"      if ( net ~ {cidr} ) then {{ reject; }}",
            ]
        out.append("}")
        return "\n".join(out) + "\n"


def _pool_statement(pool: Pool, cidr: str, for_kernel: bool) -> tuple[str, str] | None:
    """(statement, action) for one pool, as processIPPool emits it (BIRD programs no-encap
    pools; VXLAN and IPIP pools are felix's, i.e. calico-node's routes component)."""
    vxlan = pool.vxlan_mode in ("Always", "CrossSubnet")
    ipip = pool.ipip_mode in ("Always", "CrossSubnet")
    if pool.disable_bgp_export and not for_kernel:
        return f"  if (net ~ {cidr}) then {{ reject; }} # BGP export is disabled.", "reject"
    if vxlan:
        if for_kernel:
            return f"  if (net ~ {cidr}) then {{ reject; }} # VXLAN routes are handled by Felix.", "reject"
        return f"  if (net ~ {cidr}) then {{ accept; }}", "accept"
    if not ipip:
        return f"  if (net ~ {cidr}) then {{ accept; }}", "accept"
    if for_kernel:
        return f"  if (net ~ {cidr}) then {{ reject; }} # Cluster routes are handled by Felix.", "reject"
    return f"  if (net ~ {cidr}) then {{ accept; }}", "accept"


def _selects(expression: str, labels: dict[str, str]) -> bool:
    try:
        return selector.matches(expression, labels)
    except selector.SelectorError:
        return False
