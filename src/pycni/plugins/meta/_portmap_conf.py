"""portmap's configuration: options, the `portMappings` capability, validation.

Shared by the plugin and its two backends (nftables, iptables).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pycni.skel import CmdArgs
from pycni.spec import ipaddr
from pycni.spec.config import Fields
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPAddress

PROTOCOLS = ("tcp", "udp", "sctp")
DEFAULT_MARK_BIT = 13  # the reference's default; Kubernetes uses 14 and 15, Calico 20-31
BACKENDS = ("nftables", "iptables")


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str
    host_ip: IPAddress | None = None  # None: every local address

    @property
    def specific_host_ip(self) -> IPAddress | None:
        """The host address this mapping is bound to, or None for every local address (0.0.0.0, ::)."""
        if self.host_ip is None or self.host_ip.is_unspecified:
            return None
        return self.host_ip

    def applies_to(self, family: int) -> bool:
        """A mapping with a host address only applies to that address's family (as in the reference)."""
        return self.host_ip is None or self.host_ip.version == family

    def describe(self) -> str:
        where = f"{self.specific_host_ip}" if self.specific_host_ip is not None else "*"
        return f"{self.protocol}/{where}:{self.host_port}"


@dataclass
class PortMapConf:
    snat: bool = True
    masq_all: bool = False
    mark_bit: int = DEFAULT_MARK_BIT
    external_set_mark_chain: str | None = None
    conditions: dict[int, list[str]] = field(default_factory=dict)
    backend: str = "nftables"
    mappings: list[PortMapping] = field(default_factory=list)

    def mappings_for(self, family: int) -> list[PortMapping]:
        return [m for m in self.mappings if m.applies_to(family)]


def _port(entry: Fields, key: str, where: str) -> int:
    value = entry.raw(key)
    if value is None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f'{where}: missing "{key}"')
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{where}: invalid {key} {value!r}: a port is an integer from 1 to 65535")
    return value


def parse_mappings(raw: list[object]) -> list[PortMapping]:
    mappings: list[PortMapping] = []
    seen: dict[tuple[str, str, int], PortMapping] = {}
    for idx, item in enumerate(raw):
        where = f"runtimeConfig.portMappings[{idx}]"
        if not isinstance(item, dict):
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{where}: a port mapping must be an object, not {item!r}")
        entry = Fields(item, where)
        host_port = _port(entry, "hostPort", where)
        container_port = _port(entry, "containerPort", where)
        protocol = entry.get_str("protocol", "tcp").lower() or "tcp"
        if protocol not in PROTOCOLS:
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG,
                f"{where}: invalid protocol {entry.raw('protocol')!r}: expected one of {', '.join(PROTOCOLS)}",
            )
        host_ip_text = entry.get_str("hostIP")
        host_ip: IPAddress | None = None
        if host_ip_text:
            try:
                host_ip = ipaddr.address(host_ip_text)
            except ValueError:
                raise CNIError(
                    Code.INVALID_NETWORK_CONFIG, f"{where}: invalid hostIP {host_ip_text!r}: not an IP address"
                ) from None
        mapping = PortMapping(host_port, container_port, protocol, host_ip)
        key = (protocol, str(mapping.specific_host_ip or f"*{host_ip.version if host_ip else ''}"), host_port)
        previous = seen.get(key)
        if previous == mapping:
            continue  # the same mapping twice is one mapping
        if previous is not None:
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG,
                f"{where}: host port {mapping.describe()} is mapped twice in portMappings "
                f"(to container ports {previous.container_port} and {container_port})",
            )
        seen[key] = mapping
        mappings.append(mapping)
    return mappings


def _conditions(fields: Fields, key: str) -> list[str] | None:
    """Extra matches, passed to nft or iptables-restore as text: a line break or another control
    character would start a command of its own there, so they are refused for both backends."""
    if key not in fields:
        return None
    conditions = fields.get_str_list(key)
    for item in conditions:
        if any(not c.isprintable() for c in item):
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{key}: {item!r} contains a line break or another control character")
    return conditions


def looks_like_iptables(conditions: list[str]) -> bool:
    """iptables matches start with an option ("-d", "--dport") or a negated one ("!", "-d")."""
    return bool(conditions) and (conditions[0].startswith("-") or (conditions[0] == "!" and len(conditions) > 1))


def parse(call: CmdArgs) -> PortMapConf:
    fields = call.conf.fields
    conf = PortMapConf(snat=fields.get_bool("snat", True), masq_all=fields.get_bool("masqAll", False))
    if "markMasqBit" in fields and "externalSetMarkChain" in fields:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, 'cannot specify both "externalSetMarkChain" and "markMasqBit"')
    conf.mark_bit = fields.get_int("markMasqBit", DEFAULT_MARK_BIT, minimum=0, maximum=31)
    if "externalSetMarkChain" in fields:
        conf.external_set_mark_chain = fields.get_str("externalSetMarkChain")
    for family, key in ((4, "conditionsV4"), (6, "conditionsV6")):
        given = _conditions(fields, key)
        if given:
            conf.conditions[family] = given
    iptables_style = [
        key for f, key in ((4, "conditionsV4"), (6, "conditionsV6")) if looks_like_iptables(conf.conditions.get(f, []))
    ]
    backend = fields.get_str("backend")
    if backend == "":
        # nftables unless the configuration speaks iptables (the reference's rule, with the default reversed).
        backend = "iptables" if iptables_style or conf.external_set_mark_chain else "nftables"
    if backend not in BACKENDS:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "nftables" and iptables_style:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f"{' and '.join(iptables_style)} use iptables syntax but the backend is nftables",
            'write the conditions as nft matches (e.g. "ip daddr != 192.0.2.0/24") or set "backend": "iptables"',
        )
    if backend == "nftables" and conf.external_set_mark_chain:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, '"externalSetMarkChain" is only used by the iptables backend')
    conf.backend = backend
    conf.mappings = parse_mappings(call.conf.runtime_config.get_list("portMappings"))
    return conf
