"""The `calico` / `calico-ipam` network configuration (Calico's types.NetConf), parsed and checked.

Every key of Calico's configuration is read; the ones pycni adds (`datastore_path`,
`datastore_timeout`, `mtu_file`, `journal_dir`) have Calico's fixed paths as defaults,
so a Calico configuration works unchanged. Bad values are a code-7 error naming the key.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pycni.calico.datastore import AVAILABLE, EMBEDDED, DatastoreSettings, UnsupportedDatastore
from pycni.spec.config import Fields, PluginConf
from pycni.spec.errors import CNIError, Code

DEFAULT_NODENAME_FILE = "/var/lib/calico/nodename"
DEFAULT_MTU_FILE = "/var/lib/calico/mtu"
DEFAULT_JOURNAL_DIR = "/var/lib/calico/cni-journal"
DEFAULT_IPAM_LOCK_FILE = "/var/run/calico/ipam.lock"
DEFAULT_MTU = 1500
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9_.\-]+\Z")


def _invalid(msg: str) -> CNIError:
    return CNIError(Code.INVALID_NETWORK_CONFIG, msg)


@dataclass
class IPAMSection:
    type: str = ""
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    ipv4_pools: list[str] = field(default_factory=list)
    ipv6_pools: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class CalicoConf:
    name: str
    cni_version: str
    mtu: int
    mtu_file: str
    require_mtu_file: bool
    num_queues: int
    nodename: str
    nodename_file: str
    nodename_file_optional: bool
    hostname: str
    datastore: DatastoreSettings
    log_level: str
    log_file_path: str
    log_file_max_size: int
    log_file_max_age: int
    log_file_max_count: int
    ipam: IPAMSection
    policy_type: str
    kubeconfig: str
    allow_ip_forwarding: bool
    ip_addrs_no_ipam: bool
    floating_ips: bool
    include_default_routes: bool
    ipam_lock_file: str
    journal_dir: str
    raw: dict[str, Any]

    # -- node name (Calico's DetermineNodename) --------------------------------
    def require_nodename_file(self) -> None:
        """Unless optional, the nodename file must exist: it is how calico/node says the node is set up."""
        if self.nodename_file_optional or os.path.exists(self.nodename_file):
            return
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f"stat {self.nodename_file}: no such file or directory: check that the calico/node container is running "
            f"and has mounted /var/lib/calico/",
            f'write this node\'s name to {self.nodename_file}, point "nodename_file" at a file that holds it, '
            f'or set "nodename" (or "nodename_file_optional": true) in the network configuration',
        )

    def determine_nodename(self) -> str:
        if self.nodename:
            return self.nodename
        try:
            with open(self.nodename_file) as fh:
                from_file = fh.read().strip()
        except OSError:
            from_file = ""
        if from_file:
            return from_file
        if self.hostname:
            return self.hostname
        return socket.gethostname().lower()

    def determine_mtu(self) -> int:
        """`mtu`, else the MTU file written by calico/node, else 1500."""
        if self.mtu:
            return self.mtu
        try:
            with open(self.mtu_file) as fh:
                text = fh.read().strip()
        except FileNotFoundError:
            if self.require_mtu_file:
                raise CNIError(
                    Code.INVALID_NETWORK_CONFIG,
                    f"failed to read MTU file: {self.mtu_file} does not exist",
                    'write the MTU to it, point "mtu_file" at it, set "mtu", or drop "require_mtu_file"',
                ) from None
            return DEFAULT_MTU
        except OSError as exc:
            raise CNIError(Code.IO_FAILURE, f"failed to read MTU file {self.mtu_file}: {exc.strerror}") from None
        if not text.isdigit() or not 68 <= int(text) <= 65535:
            raise _invalid(f"failed to read MTU file {self.mtu_file}: {text!r} is not an MTU (68-65535)")
        return int(text) if text else DEFAULT_MTU


def _str_bool(fields: Fields, key: str, default: bool) -> bool:
    """Calico's assign_ipv4/assign_ipv6 are the strings "true"/"false" (JSON booleans accepted too)."""
    value = fields.raw(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _invalid(f'invalid value for "ipam.{key}": {value!r} is not "true" or "false"')


def parse_ipam(fields: Fields) -> IPAMSection:
    ipam = fields.get_obj("ipam")
    section = IPAMSection(
        type=ipam.get_str("type"),
        assign_ipv4=_str_bool(ipam, "assign_ipv4", True),
        assign_ipv6=_str_bool(ipam, "assign_ipv6", False),
        ipv4_pools=ipam.get_str_list("ipv4_pools"),
        ipv6_pools=ipam.get_str_list("ipv6_pools"),
        raw=dict(ipam.data),
    )
    return section


def parse(conf: PluginConf, env: Mapping[str, str] | None = None) -> CalicoConf:
    f = conf.fields
    if not _NETWORK_NAME.match(conf.name):
        raise _invalid(
            f"invalid characters detected in the given network name {conf.name!r}. "
            "Only letters a-z, numbers 0-9, and symbols _.- are supported"
        )
    kind = f.get_str("datastore_type") or EMBEDDED
    try:
        if kind not in AVAILABLE:
            raise UnsupportedDatastore(kind)
    except UnsupportedDatastore as exc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, str(exc)) from None
    endpoints = f.get_str("etcd_endpoints")
    authority = f.get_str("etcd_authority")
    if not endpoints and authority:
        endpoints = f"{f.get_str('etcd_scheme') or 'http'}://{authority}"
    if f.get_str("etcd_discovery_srv"):
        raise _invalid('"etcd_discovery_srv" (DNS SRV discovery) is not supported: list the servers in "etcd_endpoints"')
    timeout = f.raw("datastore_timeout", 0)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
        raise _invalid(f'invalid value for "datastore_timeout": {timeout!r} is not a number of seconds')
    datastore = DatastoreSettings(
        kind=kind,
        path=f.get_path("datastore_path") or DatastoreSettings().path,
        etcd_endpoints=endpoints,
        etcd_key_file=f.get_path("etcd_key_file"),
        etcd_cert_file=f.get_path("etcd_cert_file"),
        etcd_ca_cert_file=f.get_path("etcd_ca_cert_file"),
        timeout=float(timeout),
    )
    level = f.get_str("log_level") or "info"
    if level.lower() not in ("debug", "info", "warning", "warn", "error", "fatal", "panic"):
        raise _invalid(f'invalid value for "log_level": {level!r} (debug, info, warning or error)')
    kubernetes = f.get_obj("kubernetes")
    settings = f.get_obj("container_settings")
    features = f.get_obj("feature_control")
    return CalicoConf(
        name=conf.name,
        cni_version=conf.cni_version,
        mtu=f.get_int("mtu", 0, minimum=0, maximum=65535),
        mtu_file=f.get_path("mtu_file") or DEFAULT_MTU_FILE,
        require_mtu_file=f.get_bool("require_mtu_file"),
        num_queues=max(f.get_int("num_queues", 0, minimum=0, maximum=1024), 1),
        nodename=f.get_str("nodename") or kubernetes.get_str("node_name"),
        nodename_file=f.get_path("nodename_file") or DEFAULT_NODENAME_FILE,
        nodename_file_optional=f.get_bool("nodename_file_optional"),
        hostname=f.get_str("hostname"),
        datastore=datastore,
        log_level=level.lower(),
        log_file_path=f.get_path("log_file_path"),
        log_file_max_size=f.get_int("log_file_max_size", 100, minimum=0),
        log_file_max_age=f.get_int("log_file_max_age", 30, minimum=0),
        log_file_max_count=f.get_int("log_file_max_count", 10, minimum=0),
        ipam=parse_ipam(f),
        policy_type=f.get_obj("policy").get_str("type"),
        kubeconfig=kubernetes.get_str("kubeconfig"),
        allow_ip_forwarding=settings.get_bool("allow_ip_forwarding"),
        ip_addrs_no_ipam=features.get_bool("ip_addrs_no_ipam"),
        floating_ips=features.get_bool("floating_ips"),
        include_default_routes=f.get_bool("include_default_routes"),
        ipam_lock_file=f.get_path("ipam_lock_file") or DEFAULT_IPAM_LOCK_FILE,
        journal_dir=f.get_path("journal_dir") or DEFAULT_JOURNAL_DIR,
        raw=conf.raw,
    )
