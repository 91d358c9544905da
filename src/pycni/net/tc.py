"""Traffic control through pyroute2: token bucket shaping, ingress redirect to an ifb device.

The reference bandwidth plugin's shapes, with its arithmetic (rates and bursts are
given in bits; the kernel takes bytes and a bucket size in scheduler ticks):

    tc qdisc add dev <dev> root handle 1: tbf rate <r> burst <b> latency 25ms
    tc qdisc add dev <veth> handle ffff: ingress
    tc filter add dev <veth> parent ffff: protocol all prio 1 u32 match u32 0 0 \\
        classid 1:1 action mirred egress redirect dev <ifb>

The match-all is a u32 filter: this kernel has no `matchall` classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pycni.net import netlink
from pycni.spec.errors import CNIError, Code

LATENCY_MS = 25
TIME_UNITS_PER_SEC = 1_000_000
ROOT_HANDLE = 0x10000  # 1:
INGRESS_HANDLE = 0xFFFF0000  # ffff:
ETH_P_ALL = 0x0003
CLASSID = 0x10001  # 1:1
TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1


def _tick_in_usec() -> float:
    """Scheduler ticks per microsecond, from /proc/net/psched (as tc and netlink libraries read it)."""
    try:
        with open("/proc/net/psched") as fh:
            t2us, us2t, clock_res, _ = (int(v, 16) for v in fh.read().split())
    except (OSError, ValueError):
        return 1.0
    return float(t2us) / us2t * (float(clock_res) / TIME_UNITS_PER_SEC)


@dataclass(frozen=True)
class TBF:
    """A token bucket in the kernel's units: rate in bytes/s, buffer in ticks, limit in bytes."""

    rate: int
    burst: int  # bytes
    buffer: int
    limit: int

    @classmethod
    def from_bits(cls, rate_bits: int, burst_bits: int) -> TBF:
        if rate_bits <= 0 or burst_bits <= 0:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid token bucket: rate {rate_bits} bit/s, burst {burst_bits} bits")
        rate = rate_bits // 8
        burst = burst_bits // 8
        if rate == 0:
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG, f"rate {rate_bits} bit/s is below 8 bit/s, the smallest a token bucket can do"
            )
        buffer = int(float(int(burst * TIME_UNITS_PER_SEC / rate) & 0xFFFFFFFF) * _tick_in_usec())
        latency = TIME_UNITS_PER_SEC * (LATENCY_MS / 1000.0)
        limit = int(rate * latency / TIME_UNITS_PER_SEC) + burst
        return cls(rate=rate, burst=burst, buffer=buffer & 0xFFFFFFFF, limit=limit & 0xFFFFFFFF)


def _kernel_error(what: str, exc: Exception) -> CNIError:
    return CNIError(Code.KERNEL, f"{what}: {exc}")


def add_tbf(ipr: Any, index: int, tbf: TBF) -> None:
    """A root token bucket filter on link `index` (handle 1:)."""
    try:
        ipr.tc("add", "tbf", index, handle=ROOT_HANDLE, rate=tbf.rate, burst=tbf.burst, limit=tbf.limit)
    except Exception as exc:  # noqa: BLE001 - a NetlinkError, reported with the operation
        raise _kernel_error(f"cannot add a tbf qdisc to link {index}", exc) from None


def add_ingress_redirect(ipr: Any, index: int, target_index: int) -> None:
    """Redirect everything link `index` receives to link `target_index` (an ifb)."""
    try:
        ipr.tc("add", "ingress", index, handle=INGRESS_HANDLE)
    except Exception as exc:  # noqa: BLE001
        raise _kernel_error(f"cannot add an ingress qdisc to link {index}", exc) from None
    try:
        ipr.tc(
            "add-filter",
            "u32",
            index,
            parent=INGRESS_HANDLE,
            prio=1,
            protocol=ETH_P_ALL,
            target=CLASSID,
            keys=["0x0/0x0+0"],
            action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target_index},
        )
    except Exception as exc:  # noqa: BLE001
        raise _kernel_error(f"cannot add the redirect filter on link {index}", exc) from None


@dataclass
class Qdisc:
    kind: str
    handle: int
    parent: int
    options: dict[str, Any]


def qdiscs(ipr: Any, index: int) -> list[Qdisc]:
    found = []
    for msg in ipr.get_qdiscs(index=index):
        if msg["index"] != index:
            continue
        options: dict[str, Any] = {}
        opts = msg.get_attr("TCA_OPTIONS")
        if opts is not None:
            parms = opts.get_attr("TCA_TBF_PARMS") if msg.get_attr("TCA_KIND") == "tbf" else None
            if parms is not None:
                options = {"rate": parms["rate"], "buffer": parms["buffer"], "limit": parms["limit"]}
        found.append(Qdisc(str(msg.get_attr("TCA_KIND")), int(msg["handle"]), int(msg["parent"]), options))
    return found


def root_tbf(ipr: Any, index: int) -> Qdisc | None:
    for q in qdiscs(ipr, index):
        if q.kind == "tbf" and q.handle == ROOT_HANDLE:
            return q
    return None


def has_ingress(ipr: Any, index: int) -> bool:
    return any(q.kind == "ingress" for q in qdiscs(ipr, index))


def matches(q: Qdisc | None, tbf: TBF) -> bool:
    return (
        q is not None
        and q.options.get("rate") == tbf.rate
        and q.options.get("buffer") == tbf.buffer
        and q.options.get("limit") == tbf.limit
    )


def delete_root_tbf(ipr: Any, index: int) -> None:
    if root_tbf(ipr, index) is None:
        return
    try:
        ipr.tc("del", index=index, handle=ROOT_HANDLE, parent=TC_H_ROOT)
    except Exception as exc:  # noqa: BLE001
        if not netlink.is_errno(exc, netlink.ENOENT, 22):
            raise _kernel_error(f"cannot delete the tbf qdisc of link {index}", exc) from None


def delete_ingress(ipr: Any, index: int) -> None:
    if not has_ingress(ipr, index):
        return
    try:
        ipr.tc("del", index=index, handle=INGRESS_HANDLE, parent=TC_H_INGRESS)
    except Exception as exc:  # noqa: BLE001
        if not netlink.is_errno(exc, netlink.ENOENT, 22):
            raise _kernel_error(f"cannot delete the ingress qdisc of link {index}", exc) from None
