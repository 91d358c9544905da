"""sysctl under /proc/sys/net, in the host or inside a container namespace.

Keys are paths relative to /proc/sys (`net/ipv4/conf/eth0/proxy_arp`), or the
dotted form (`net.ipv4.ip_forward`) when no component has a dot of its own. A
key that is not under `net/`, or could leave /proc/sys/net, is refused before
anything is read. /proc/sys/net shows the namespace of the thread that opens the
file, so namespaced access runs on a worker thread inside it (`netns.run_in`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from pycni.net import netns
from pycni.spec.errors import CNIError, Code

ROOT = "/proc/sys"


def normalize(key: str) -> str:
    """The slash form of a key, validated to stay under /proc/sys/net."""
    if not isinstance(key, str) or key == "":
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "empty sysctl key")
    path = key.replace(".", "/") if "/" not in key else key
    parts = path.strip("/").split("/")
    if parts[0] != "net" or len(parts) < 2:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"sysctl {key!r} is not under net.: only network sysctls may be set")
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"sysctl {key!r} is not a valid key under /proc/sys/net")
    return "/".join(parts)


def conf_key(family: int, ifname: str, name: str) -> str:
    """The per-interface key, e.g. conf_key(4, "eth0", "proxy_arp") -> net/ipv4/conf/eth0/proxy_arp."""
    return f"net/ipv{family}/conf/{ifname}/{name}"


def _read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as fh:
        return fh.read().strip()


def _write(path: str, value: str) -> None:
    with open(os.path.join(ROOT, path), "w") as fh:
        fh.write(value)


def _do(ns_path: str | None, fn: object) -> object:
    if ns_path is None:
        return fn()  # type: ignore[operator]
    return netns.run_in(ns_path, fn)  # type: ignore[arg-type]


def read(key: str, ns_path: str | None = None) -> str:
    path = normalize(key)
    try:
        return str(_do(ns_path, lambda: _read(path)))
    except FileNotFoundError:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"sysctl {key!r} does not exist") from None
    except OSError as exc:
        raise CNIError(Code.KERNEL, f"cannot read sysctl {key!r}: {exc.strerror}") from None


def write_many(items: Iterable[tuple[str, str]], ns_path: str | None = None) -> dict[str, str]:
    """Set several sysctls (in one namespace entry); return their previous values."""
    pairs = [(normalize(k), str(v)) for k, v in items]

    def apply() -> dict[str, str]:
        previous: dict[str, str] = {}
        for path, value in pairs:
            try:
                previous[path] = _read(path)
                if previous[path] != value:
                    _write(path, value)
            except FileNotFoundError:
                raise CNIError(Code.INVALID_NETWORK_CONFIG, f"sysctl {path.replace('/', '.')!r} does not exist") from None
            except OSError as exc:
                raise CNIError(Code.KERNEL, f"cannot set sysctl {path.replace('/', '.')} to {value!r}: {exc.strerror}") from None
        return previous

    result = _do(ns_path, apply)
    assert isinstance(result, dict)
    return result


def write(key: str, value: str, ns_path: str | None = None) -> str:
    """Set one sysctl; return its previous value."""
    return write_many([(key, value)], ns_path)[normalize(key)]
