"""portmap's iptables backend, for hosts whose firewall is iptables: the reference's layout.

    nat PREROUTING, OUTPUT: -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
    CNI-HOSTPORT-DNAT:      -m comment --comment 'dnat name: "N" id: "C"' -m multiport -p tcp
                            --destination-ports 8080,... -j CNI-DN-<hash>   (inserted first: the newest wins)
    CNI-DN-<hash>:          -p tcp --dport 8080 -s <container subnet> -j CNI-HOSTPORT-SETMARK   (hairpin)
                            -p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK           (localhost, IPv4)
                            -p tcp --dport 8080 -j DNAT --to-destination <container>:80
    CNI-HOSTPORT-SETMARK:   -j MARK --set-xmark <bit>/<bit>
    nat POSTROUTING:        -j CNI-HOSTPORT-MASQ (first);  CNI-HOSTPORT-MASQ: -m mark --mark <bit>/<bit> -j MASQUERADE

The per-container chain and its entry rules are written by one `iptables-restore
--noflush` per family (atomic), under a host lock that also covers the conflict
check. The chain of interface eth0 has the reference's name, so either plugin can
delete what the other added; other interfaces get a name of their own (the
reference's name ignores the interface and two attachments of one container collide).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
from dataclasses import dataclass

from pycni import gcreport
from pycni.plugins.meta._portmap_conf import PortMapConf
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPInterface

TOP_DNAT = "CNI-HOSTPORT-DNAT"
SETMARK = "CNI-HOSTPORT-SETMARK"
MASQ = "CNI-HOSTPORT-MASQ"
MAX_CHAIN = 28
TOOLS = {4: ("iptables", "iptables-restore", "iptables-save"), 6: ("ip6tables", "ip6tables-restore", "ip6tables-save")}
_COMMENT = re.compile(r'^dnat name: "(?P<net>[^"]*)" id: "(?P<id>[^"]*)"(?: if: "(?P<if>[^"]*)")?$')


def chain_name(network: str, container_id: str, ifname: str) -> str:
    """CNI-DN-<sha512 hex>, 28 characters: the reference's name for eth0."""
    subject = network + container_id if ifname == "eth0" else f"{network}{container_id}/{ifname}"
    return ("CNI-DN-" + hashlib.sha512(subject.encode()).hexdigest())[:MAX_CHAIN]


def entry_comment(network: str, container_id: str, ifname: str) -> str:
    comment = f'dnat name: "{network}" id: "{container_id}"'
    if ifname != "eth0":
        comment += f' if: "{ifname}"'
    return comment if len(comment) <= 255 else comment[:252] + "..."


def _quote(arg: str) -> str:
    """One argument of an iptables-restore line: iptables-restore only understands double quotes."""
    if arg and not any(c in arg for c in " \"\\'\t"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line(args: list[str]) -> str:
    return " ".join(_quote(a) for a in args)


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        raise CNIError(Code.KERNEL_UNSUPPORTED, f"{argv[0]} is not installed: the iptables backend needs it") from None
    if check and proc.returncode != 0:
        raise CNIError(Code.KERNEL, f"{' '.join(argv[:4])} failed", (proc.stderr or proc.stdout).strip())
    return proc


def _iptables(family: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([TOOLS[family][0], "-w", "5", "-t", "nat", *args], check=check)


def _restore(family: int, script: str) -> None:
    _run([TOOLS[family][1], "-w", "5", "--noflush"], stdin=script)


def _save(family: int) -> list[list[str]]:
    """`iptables-save -t nat` as the argument list of each rule."""
    out = _run([TOOLS[family][2], "-t", "nat"]).stdout
    return [shlex.split(line) for line in out.splitlines() if line.startswith("-A ")]


def _ensure_rule(family: int, chain: str, rule: list[str], first: bool) -> None:
    if _iptables(family, "-C", chain, *rule, check=False).returncode != 0:
        _iptables(family, *(["-I", chain, "1"] if first else ["-A", chain]), *rule)


def _ensure_chain(family: int, chain: str) -> None:
    proc = _iptables(family, "-N", chain, check=False)
    if proc.returncode != 0 and "exists" not in proc.stderr:
        raise CNIError(Code.KERNEL, f"cannot create iptables chain {chain}", proc.stderr.strip())


def _mark(bit: int) -> str:
    return f"{1 << bit:#x}/{1 << bit:#x}"


def _ensure_shared(conf: PortMapConf, family: int) -> None:
    if conf.snat and conf.external_set_mark_chain is None:
        _ensure_chain(family, SETMARK)
        _ensure_rule(
            family,
            SETMARK,
            ["-m", "comment", "--comment", "CNI portfwd masquerade mark", "-j", "MARK", "--set-xmark", _mark(conf.mark_bit)],
            False,
        )
        _ensure_chain(family, MASQ)
        _ensure_rule(family, MASQ, ["-m", "mark", "--mark", _mark(conf.mark_bit), "-j", "MASQUERADE"], False)
        _ensure_rule(family, "POSTROUTING", ["-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", MASQ], True)
    _ensure_chain(family, TOP_DNAT)
    for entry in ("PREROUTING", "OUTPUT"):
        _ensure_rule(family, entry, ["-m", "addrtype", "--dst-type", "LOCAL", "-j", TOP_DNAT], False)


def _dnat_rules(conf: PortMapConf, family: int, address: IPInterface) -> list[list[str]]:
    setmark = conf.external_set_mark_chain or SETMARK
    rules: list[list[str]] = []
    for m in conf.mappings_for(family):
        base = ["-p", m.protocol, "--dport", str(m.host_port)]
        if m.specific_host_ip is not None:
            base += ["-d", str(m.specific_host_ip)]
        if conf.snat:
            source = ("0.0.0.0/0" if family == 4 else "::/0") if conf.masq_all else str(address)
            rules.append([*base, "-s", source, "-j", setmark])
            if family == 4 and not conf.masq_all:
                rules.append([*base, "-s", "127.0.0.1", "-j", setmark])
        target = f"{address.ip}:{m.container_port}" if family == 4 else f"[{address.ip}]:{m.container_port}"
        rules.append([*base, "-j", "DNAT", "--to-destination", target])
    return rules


def _entry_rules(conf: PortMapConf, family: int, comment: str) -> list[list[str]]:
    by_proto: dict[str, list[int]] = {}
    for m in conf.mappings_for(family):
        by_proto.setdefault(m.protocol, []).append(m.host_port)
    rules = []
    for proto in sorted(by_proto):
        ports = by_proto[proto]
        for start in range(0, len(ports), 15):  # multiport takes 15 ports at most
            spec = ",".join(str(p) for p in ports[start : start + 15])
            rule = ["-m", "comment", "--comment", comment, "-m", "multiport", "-p", proto, "--destination-ports", spec]
            rules.append(rule + conf.conditions.get(family, []))
    return rules


@dataclass
class Owner:
    network: str
    container_id: str
    ifname: str
    chain: str


def _owners(rules: list[list[str]]) -> dict[str, Owner]:
    """Per-container chain -> the attachment named by its entry rule's comment."""
    owners: dict[str, Owner] = {}
    for rule in rules:
        if rule[1] != TOP_DNAT or "--comment" not in rule or "-j" not in rule:
            continue
        match = _COMMENT.match(rule[rule.index("--comment") + 1])
        if match:
            chain = rule[rule.index("-j") + 1]
            owners[chain] = Owner(match["net"], match["id"], match["if"] or "eth0", chain)
    return owners


def _conflicts(conf: PortMapConf, family: int, rules: list[list[str]], mine: str) -> list[str]:
    owners = _owners(rules)
    found = []
    for rule in rules:
        chain = rule[1]
        if chain == mine or chain not in owners or "DNAT" not in rule or "--dport" not in rule:
            continue
        proto = rule[rule.index("-p") + 1] if "-p" in rule else ""
        port = int(rule[rule.index("--dport") + 1])
        dest = rule[rule.index("-d") + 1].split("/")[0] if "-d" in rule else None
        for m in conf.mappings_for(family):
            host = str(m.specific_host_ip) if m.specific_host_ip is not None else None
            if m.protocol == proto and m.host_port == port and host == dest:
                o = owners[chain]
                found.append(f"{m.describe()} (IPv{family}) is already mapped by {o.network} {o.container_id} {o.ifname}")
    return found


def _jumps_to(rule: list[str], chain: str) -> bool:
    return "-j" in rule and rule[rule.index("-j") + 1] == chain


def _chain_exists(family: int, chain: str) -> bool:
    return _iptables(family, "-S", chain, check=False).returncode == 0


def teardown(family: int, chain: str) -> None:
    """Remove a per-container chain and the rules jumping to it, in one iptables-restore."""
    if not _chain_exists(family, chain):
        return
    lines = ["*nat"]
    lines += [_line(["-D", *rule[1:]]) for rule in _save(family) if rule[1] != chain and _jumps_to(rule, chain)]
    lines += [f"-F {chain}", f"-X {chain}", "COMMIT"]
    _restore(family, "\n".join(lines) + "\n")


def add(conf: PortMapConf, network: str, container_id: str, ifname: str, addresses: dict[int, IPInterface]) -> None:
    chain = chain_name(network, container_id, ifname)
    comment = entry_comment(network, container_id, ifname)
    families = [f for f in sorted(addresses) if conf.mappings_for(f)]
    conflicts: list[str] = []
    for family in families:
        if conf.external_set_mark_chain and not _chain_exists(family, conf.external_set_mark_chain):
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG,
                f'externalSetMarkChain "{conf.external_set_mark_chain}" does not exist in the IPv{family} nat table',
                "it names a chain another component (kube-proxy: KUBE-MARK-MASQ) creates; nothing was changed",
            )
        conflicts += _conflicts(conf, family, _save(family), chain)
    if conflicts:
        raise CNIError(
            Code.CONFLICT,
            f"host port conflict for {network} {container_id} {ifname}: " + "; ".join(conflicts),
            "each host address, protocol and port can be mapped to one container only; nothing was changed",
        )
    for family in families:
        _ensure_shared(conf, family)
        teardown(family, chain)  # a repeated ADD replaces the old chain
        lines = ["*nat", f":{chain} - [0:0]"]
        lines += [_line(["-A", chain, *rule]) for rule in _dnat_rules(conf, family, addresses[family])]
        lines += [_line(["-I", TOP_DNAT, "1", *rule, "-j", chain]) for rule in reversed(_entry_rules(conf, family, comment))]
        lines.append("COMMIT")
        try:
            _restore(family, "\n".join(lines) + "\n")
        except CNIError as err:
            if conf.conditions.get(family):
                raise CNIError(
                    Code.INVALID_NETWORK_CONFIG, "conditionsV4/conditionsV6 were refused by iptables", err.details
                ) from None
            raise


def check(conf: PortMapConf, network: str, container_id: str, ifname: str, addresses: dict[int, IPInterface]) -> None:
    chain = chain_name(network, container_id, ifname)
    for family in sorted(addresses):
        if not conf.mappings_for(family):
            continue
        if not _chain_exists(family, chain):
            raise CNIError(Code.KERNEL, f"iptables chain {chain} of {network} {container_id} {ifname} is missing (IPv{family})")
        for rule in _dnat_rules(conf, family, addresses[family]):
            if _iptables(family, "-C", chain, *rule, check=False).returncode != 0:
                raise CNIError(Code.KERNEL, f"expected rule missing from {chain} (IPv{family}): {shlex.join(rule)}")


def delete(network: str, container_id: str, ifname: str) -> None:
    chain = chain_name(network, container_id, ifname)
    for family in TOOLS:
        teardown(family, chain)


def gc(network: str, valid: set[tuple[str, str]]) -> None:
    for family in TOOLS:
        for owner in _owners(_save(family)).values():
            if owner.network == network and (owner.container_id, owner.ifname) not in valid:
                teardown(family, owner.chain)
                gcreport.released("port-mapping chain", owner.chain)
