"""`pycni install-cni`: what Calico's installer (calico/cni's `install`, cni-plugin/pkg/install)
does in its DaemonSet, for pycni: the plugin launchers into the CNI bin directory, and the
network configuration from a template into the CNI configuration directory.

Calico's environment, with Calico's defaults unless said:

    CNI_NETWORK_CONFIG         the template itself; or
    CNI_NETWORK_CONFIG_FILE    a file holding it (it wins); default: Calico's own template
    CNI_NET_DIR                where the configuration goes (/etc/cni/net.d)
    CNI_CONF_NAME              its file name (10-calico.conflist); CNI_OLD_CONF_NAME (the same by
                               default) is removed when it differs
    SKIP_CNI_BINARIES          plugin types not to install (comma-separated)
    UPDATE_CNI_BINARIES        "false": leave the launchers that are there already
    TLS_ASSETS_DIR             etcd-ca, etcd-cert, etcd-key copied to <CNI_NET_DIR>/calico-tls
                               (/calico-secrets)
    SLEEP                      "true": stay up until stopped (pycni's default: "false")

and the template's placeholders: __KUBERNETES_NODE_NAME__ (KUBERNETES_NODE_NAME, else the
nodename file calico-node writes, else the host name), __CNI_MTU__ (CNI_MTU, else the MTU file
calico-node writes, else 1500), __KUBECONFIG_FILEPATH__ (<CNI_NET_DIR>/calico-kubeconfig),
__LOG_LEVEL__, __LOG_FILE_PATH__, __LOG_FILE_MAX_SIZE__, __LOG_FILE_MAX_AGE__,
__LOG_FILE_MAX_COUNT__, __DATASTORE_TYPE__ (DATASTORE_TYPE, pycni's default "embedded", as
calico-node's), __ETCD_ENDPOINTS__, __ETCD_DISCOVERY_SRV__, __ETCD_CERT_FILE__,
__ETCD_CA_CERT_FILE__, __ETCD_KEY_FILE__, __KUBERNETES_SERVICE_HOST__,
__KUBERNETES_SERVICE_PORT__, __SERVICEACCOUNT_TOKEN__. The nodename and MTU files are
calico-node's: CALICO_NODENAME_FILE, else <CALICO_VAR_LIB_DIR>/nodename, and
<CALICO_VAR_LIB_DIR>/mtu (/var/lib/calico).

Better than Calico's: a template that keeps a placeholder nothing fills, or that is not JSON
once filled, is refused naming it, and nothing is written; every file (launchers, the
configuration, the TLS assets) is replaced atomically, so a runtime never reads half of one.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping

from pycni import files, launcher, registry

DEFAULT_NET_DIR = "/etc/cni/net.d"
DEFAULT_LIB_DIR = "/var/lib/calico"
DEFAULT_CONF_NAME = "10-calico.conflist"
DEFAULT_TLS_ASSETS_DIR = "/calico-secrets"
TLS_FILES = {"__ETCD_CA_CERT_FILE__": "etcd-ca", "__ETCD_CERT_FILE__": "etcd-cert", "__ETCD_KEY_FILE__": "etcd-key"}
PLACEHOLDER = re.compile(r"__[A-Z][A-Z0-9_]*__")

# Calico's own template (install.go), used when the environment gives none.
DEFAULT_TEMPLATE = """{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "__LOG_LEVEL__",
      "log_file_path": "__LOG_FILE_PATH__",
      "datastore_type": "__DATASTORE_TYPE__",
      "nodename": "__KUBERNETES_NODE_NAME__",
      "mtu": __CNI_MTU__,
      "ipam": {"type": "calico-ipam"},
      "policy": {"type": "k8s"},
      "kubernetes": {"kubeconfig": "__KUBECONFIG_FILEPATH__"}
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    }
  ]
}"""


class InstallError(Exception):
    """What install-cni refuses to do, and why; nothing was written."""


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def template(env: Mapping[str, str]) -> str:
    path = env.get("CNI_NETWORK_CONFIG_FILE", "")
    if path:
        try:
            with open(path) as fh:
                return fh.read()
        except OSError as exc:
            raise InstallError(f"CNI_NETWORK_CONFIG_FILE {path}: {exc.strerror}") from None
    return env.get("CNI_NETWORK_CONFIG", "") or DEFAULT_TEMPLATE


def node_name(env: Mapping[str, str]) -> str:
    """KUBERNETES_NODE_NAME, else the nodename file calico-node writes, else the host name."""
    lib_dir = env.get("CALICO_VAR_LIB_DIR", "") or DEFAULT_LIB_DIR
    nodename_file = env.get("CALICO_NODENAME_FILE", "") or os.path.join(lib_dir, "nodename")
    return env.get("KUBERNETES_NODE_NAME", "") or _read(nodename_file) or socket.gethostname().lower()


def mtu(env: Mapping[str, str]) -> str:
    """CNI_MTU, else the MTU file calico-node writes, else 1500; a number either way."""
    given, source = env.get("CNI_MTU", ""), "CNI_MTU"
    if not given:
        source = os.path.join(env.get("CALICO_VAR_LIB_DIR", "") or DEFAULT_LIB_DIR, "mtu")
        given = _read(source) or "1500"
    if not given.isdigit() or not 68 <= int(given) <= 65535:
        raise InstallError(f"{source}: {given!r} is not an MTU (68-65535)")
    return given


def values(env: Mapping[str, str], net_dir: str, tls: Mapping[str, str]) -> dict[str, str]:
    """Every placeholder and what fills it (Calico's names and defaults)."""
    filled = {
        "__LOG_LEVEL__": env.get("LOG_LEVEL", "info"),
        "__LOG_FILE_PATH__": env.get("LOG_FILE_PATH", "/var/log/calico/cni/cni.log"),
        "__LOG_FILE_MAX_SIZE__": env.get("LOG_FILE_MAX_SIZE", "100"),
        "__LOG_FILE_MAX_AGE__": env.get("LOG_FILE_MAX_AGE", "30"),
        "__LOG_FILE_MAX_COUNT__": env.get("LOG_FILE_MAX_COUNT", "10"),
        "__DATASTORE_TYPE__": env.get("DATASTORE_TYPE", "embedded"),
        "__KUBERNETES_NODE_NAME__": node_name(env),
        "__KUBECONFIG_FILEPATH__": os.path.join(net_dir, "calico-kubeconfig"),
        "__CNI_MTU__": mtu(env),
        "__KUBERNETES_SERVICE_HOST__": env.get("KUBERNETES_SERVICE_HOST", ""),
        "__KUBERNETES_SERVICE_PORT__": env.get("KUBERNETES_SERVICE_PORT", ""),
        "__SERVICEACCOUNT_TOKEN__": "",  # pycni has no Kubernetes API to hold a token for
        "__ETCD_ENDPOINTS__": env.get("ETCD_ENDPOINTS", ""),
        "__ETCD_DISCOVERY_SRV__": env.get("ETCD_DISCOVERY_SRV", ""),
    }
    for placeholder, name in TLS_FILES.items():
        filled[placeholder] = tls.get(name, "")
    return filled


def render(text: str, filled: Mapping[str, str]) -> str:
    """The template with its placeholders filled; InstallError naming one nothing fills, or
    when the result is not a JSON object."""
    out = PLACEHOLDER.sub(lambda m: filled.get(m.group(0), m.group(0)), text)
    left = sorted(set(PLACEHOLDER.findall(out)))
    if left:
        raise InstallError(f"the network configuration template has placeholders install-cni cannot fill: {', '.join(left)}")
    try:
        doc = json.loads(out)
    except ValueError as exc:
        raise InstallError(f"the network configuration is not valid JSON once filled: {exc}") from None
    if not isinstance(doc, dict):
        raise InstallError("the network configuration is not a JSON object once filled")
    return out


def tls_assets(env: Mapping[str, str], net_dir: str, write: bool) -> dict[str, str]:
    """The etcd TLS files found in TLS_ASSETS_DIR, as the paths the plugins read them at
    (<net dir>/calico-tls/<name>), copied there with `write`."""
    source = env.get("TLS_ASSETS_DIR", "") or DEFAULT_TLS_ASSETS_DIR
    found: dict[str, str] = {}
    for name in TLS_FILES.values():
        src = os.path.join(source, name)
        if not os.path.isfile(src):
            continue
        target = os.path.join(net_dir, "calico-tls", name)
        if write:
            with open(src, "rb") as fh:
                files.replace_file(target, fh.read(), 0o600)
        found[name] = target
    return found


def install(env: Mapping[str, str], bin_dirs: list[str], agent_socket: str) -> tuple[str, str, list[str]]:
    """Check the template, then write the launchers, the TLS assets and the configuration.
    Returns (the configuration's path, its text, the launchers written)."""
    net_dir = env.get("CNI_NET_DIR", "") or DEFAULT_NET_DIR
    name = env.get("CNI_CONF_NAME", "") or DEFAULT_CONF_NAME
    if "/" in name or name in (".", ".."):
        raise InstallError(f"CNI_CONF_NAME {name!r} is not a file name")
    text = render(template(env), values(env, net_dir, tls_assets(env, net_dir, write=False)))
    skip = {t.strip() for t in env.get("SKIP_CNI_BINARIES", "").split(",") if t.strip()}
    update = env.get("UPDATE_CNI_BINARIES", "true").lower() != "false"
    written: list[str] = []
    for directory in bin_dirs:
        types = [t for t in registry.discover() if t not in skip]
        if not update:
            types = [t for t in types if not os.path.exists(os.path.join(directory, t))]
        if types:
            written += launcher.install(directory, types, agent_socket=agent_socket)
    tls_assets(env, net_dir, write=True)
    path = os.path.join(net_dir, name)
    files.replace_file(path, text.encode(), 0o644)
    old = env.get("CNI_OLD_CONF_NAME", "") or DEFAULT_CONF_NAME
    if old != name and "/" not in old:
        try:
            os.unlink(os.path.join(net_dir, old))
        except FileNotFoundError:
            pass
    return path, text, written


def sleep_until_stopped() -> None:
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
