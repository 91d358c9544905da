"""calico-node's configuration, read from its environment as Calico's calico/node reads it.

Calico's variables keep their names and meanings (NODENAME, IP, IP6, IP_AUTODETECTION_METHOD,
CALICO_NETWORKING_BACKEND, AS, CALICO_IPV4POOL_*, NO_DEFAULT_POOLS, DATASTORE_TYPE,
ETCD_ENDPOINTS, FELIX_*). pycni adds the two directories a node keeps its state in, so that
several nodes can share one machine: CALICO_VAR_LIB_DIR (default /var/lib/calico) and
CALICO_VAR_RUN_DIR (default /var/run/calico; BIRD's sockets and generated configuration).
Every value is checked here, before anything is created: a bad one is a `ConfigError` naming
the variable.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from pycni.calico.datastore import AVAILABLE, EMBEDDED, DatastoreSettings
from pycni.calico.node.policy.render import Options, options_from_env

BACKENDS = ("bird", "vxlan", "none")
DEFAULT_LIB_DIR = "/var/lib/calico"
DEFAULT_RUN_DIR = "/var/run/calico"
DEFAULT_HEALTH_PORT = 9099
DEFAULT_METRICS_PORT = 9091
VXLAN_OVERHEAD = {4: 50, 6: 70}


class ConfigError(ValueError):
    """A configuration calico-node cannot start with; the message names the variable."""


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    """Calico's evaluateENVBool: false, 0, no, n, f (any case) are false; anything else set is true."""
    value = env.get(key)
    if value is None:
        return default
    return value.strip().lower() not in ("false", "0", "no", "n", "f")


def _port(env: Mapping[str, str], key: str, default: int) -> int:
    text = env.get(key, "").strip()
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{key}={text!r} is not a TCP port (1-65535)")
    return int(text)


def _seconds(env: Mapping[str, str], key: str, default: float) -> float:
    text = env.get(key, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{key}={text!r} must be more than 0 seconds")
    return value


@dataclass
class NodeConfig:
    nodename: str
    #: IP / IP6: "autodetect", "none", "" (keep the Node's, else autodetect for IPv4), or an address
    ip: str
    ip6: str
    ip_autodetection_method: str
    ip6_autodetection_method: str
    backend: str
    asn: str
    datastore: DatastoreSettings
    lib_dir: str
    run_dir: str
    nodename_file: str
    no_default_pools: bool
    #: the CALICO_IPV4POOL_* / CALICO_IPV6POOL_* variables, for the default pools
    pool_env: dict[str, str]
    bird_binary: str
    bird6_binary: str
    health_enabled: bool
    health_host: str
    health_port: int
    metrics_enabled: bool
    metrics_host: str
    metrics_port: int
    vxlan_mtu: int
    vxlan_vni: int
    vxlan_port: int
    resync_interval: float
    reconcile_interval: float
    env: dict[str, str] = field(default_factory=dict)
    #: what the policy component renders (FELIX_LOGPREFIX, FELIX_DEFAULTENDPOINTTOHOSTACTION, ...)
    policy: Options = field(default_factory=Options)

    @property
    def mtu_file(self) -> str:
        return os.path.join(self.lib_dir, "mtu")

    @property
    def confd_dir(self) -> str:
        """Where BIRD's configuration is generated (Calico: /etc/calico/confd/config)."""
        return os.path.join(self.run_dir, "confd", "config")

    def bird_socket(self, version: int) -> str:
        return os.path.join(self.run_dir, "bird.ctl" if version == 4 else "bird6.ctl")


def nodename_from(env: Mapping[str, str], nodename_file: str) -> str:
    """Calico's DetermineNodeName: NODENAME, else the nodename file, else HOSTNAME, else the
    host name (lower case)."""
    name = env.get("NODENAME", "").strip()
    if name:
        return name
    try:
        with open(nodename_file) as fh:
            name = fh.read().strip()
    except OSError:
        name = ""
    if name:
        return name
    name = env.get("HOSTNAME", "").strip().lower()
    return name or socket.gethostname().strip().lower()


def _bird(env: Mapping[str, str], key: str, name: str) -> str:
    explicit = env.get(key, "").strip()
    if explicit:
        return explicit
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin") or ""


def load(env: Mapping[str, str]) -> NodeConfig:
    env = dict(env)
    lib_dir = env.get("CALICO_VAR_LIB_DIR", "").strip() or DEFAULT_LIB_DIR
    run_dir = env.get("CALICO_VAR_RUN_DIR", "").strip() or DEFAULT_RUN_DIR
    nodename_file = env.get("CALICO_NODENAME_FILE", "").strip() or os.path.join(lib_dir, "nodename")
    backend = env.get("CALICO_NETWORKING_BACKEND", "bird").strip().lower() or "bird"
    if backend not in BACKENDS:
        raise ConfigError(f"CALICO_NETWORKING_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
    kind = env.get("DATASTORE_TYPE", "").strip() or EMBEDDED
    if kind == "kubernetes":
        raise ConfigError(
            f"DATASTORE_TYPE=kubernetes needs a Kubernetes API server, which pycni cannot use; use {', '.join(AVAILABLE)}"
        )
    if kind not in AVAILABLE:
        raise ConfigError(f"DATASTORE_TYPE={kind!r} is not one of {', '.join(AVAILABLE)}")
    datastore = DatastoreSettings(
        kind=kind,
        path=env.get("DATASTORE_PATH", "").strip() or os.path.join(lib_dir, "calico.db"),
        etcd_endpoints=env.get("ETCD_ENDPOINTS", "").strip(),
        etcd_key_file=env.get("ETCD_KEY_FILE", "").strip(),
        etcd_cert_file=env.get("ETCD_CERT_FILE", "").strip(),
        etcd_ca_cert_file=env.get("ETCD_CA_CERT_FILE", "").strip(),
        timeout=_seconds(env, "DATASTORE_TIMEOUT", 5.0),
    )
    if kind == "etcdv3" and datastore.etcd_endpoints:
        from pycni.calico.datastore.etcd import parse_endpoints

        try:
            parse_endpoints(datastore.etcd_endpoints)
        except ValueError as exc:
            raise ConfigError(f"ETCD_ENDPOINTS: {exc}") from None
    asn = env.get("AS", "").strip()
    if asn:
        from pycni.calico.bgp import parse_asn

        try:
            parse_asn(asn)
        except ValueError as exc:
            raise ConfigError(f"The AS number specified in the environment (AS={asn}) is not valid: {exc}") from None
    vxlan_mtu = env.get("FELIX_VXLANMTU", "").strip()
    if vxlan_mtu and (not vxlan_mtu.isdigit() or not 0 <= int(vxlan_mtu) <= 65535):
        raise ConfigError(f"FELIX_VXLANMTU={vxlan_mtu!r} is not an MTU")
    vni = env.get("FELIX_VXLANVNI", "").strip() or "4096"
    if not vni.isdigit() or not 0 < int(vni) < 1 << 24:
        raise ConfigError(f"FELIX_VXLANVNI={vni!r} is not a VXLAN network identifier (1-16777215)")
    pool_env = {k: v for k, v in env.items() if k.startswith(("CALICO_IPV4POOL_", "CALICO_IPV6POOL_"))}
    no_default = env.get("NO_DEFAULT_POOLS", "").strip().lower() == "true"
    if no_default and (pool_env.get("CALICO_IPV4POOL_CIDR") or pool_env.get("CALICO_IPV6POOL_CIDR")):
        raise ConfigError(
            "Invalid configuration with NO_DEFAULT_POOLS defined and CALICO_IPV4POOL_CIDR or CALICO_IPV6POOL_CIDR defined."
        )
    try:
        policy = options_from_env(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return NodeConfig(
        nodename=nodename_from(env, nodename_file),
        ip=env.get("IP", "").strip(),
        ip6=env.get("IP6", "").strip(),
        ip_autodetection_method=env.get("IP_AUTODETECTION_METHOD", "").strip() or "first-found",
        ip6_autodetection_method=env.get("IP6_AUTODETECTION_METHOD", "").strip() or "first-found",
        backend=backend,
        asn=asn,
        datastore=datastore,
        lib_dir=lib_dir,
        run_dir=run_dir,
        nodename_file=nodename_file,
        no_default_pools=no_default,
        pool_env=pool_env,
        bird_binary=_bird(env, "CALICO_BIRD_BINARY", "bird"),
        bird6_binary=_bird(env, "CALICO_BIRD6_BINARY", "bird6"),
        # calico/node's manifests turn felix's health endpoint on: the readiness probe needs it.
        health_enabled=_bool(env, "FELIX_HEALTHENABLED", True),
        health_host=env.get("FELIX_HEALTHHOST", "").strip() or "localhost",
        health_port=_port(env, "FELIX_HEALTHPORT", DEFAULT_HEALTH_PORT),
        metrics_enabled=_bool(env, "FELIX_PROMETHEUSMETRICSENABLED", False),
        metrics_host=env.get("FELIX_PROMETHEUSMETRICSHOST", "").strip(),
        metrics_port=_port(env, "FELIX_PROMETHEUSMETRICSPORT", DEFAULT_METRICS_PORT),
        vxlan_mtu=int(vxlan_mtu or 0),
        vxlan_vni=int(vni),
        vxlan_port=_port(env, "FELIX_VXLANPORT", 4789),
        resync_interval=_seconds(env, "FELIX_ROUTEREFRESHINTERVAL", 90.0),
        reconcile_interval=_seconds(env, "PYCNI_RECONCILE_INTERVAL", 10.0),
        env=env,
        policy=policy,
    )
