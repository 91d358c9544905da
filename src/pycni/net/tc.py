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

import math
import socket
import struct
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
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_TBF_PARMS, TCA_TBF_RATE64 = 1, 4
RTM_NEWQDISC = 36
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
U32 = 0xFFFFFFFF


def _tick_in_usec() -> float:
    """Scheduler ticks per microsecond, from /proc/net/psched, as Go's netlink reads it."""
    try:
        with open("/proc/net/psched") as fh:
            t2us, us2t, clock_res, _ = (int(v, 16) for v in fh.read().split())
    except (OSError, ValueError):
        return 1.0
    if clock_res == 1_000_000_000:  # netlink's compatibility case
        t2us = us2t
    return float(t2us) / us2t * (float(clock_res) / TIME_UNITS_PER_SEC)


def go_uint32(value: float) -> int:
    """Go's uint32(float64) on amd64: the float becomes an int64 (CVTTSD2SQ, which gives
    1<<63 for NaN and anything out of range) whose low 32 bits are kept."""
    if math.isnan(value) or not -(2**63) <= value < 2**63:
        return 0  # (1 << 63) & 0xFFFFFFFF
    return int(value) & U32


def _div(a: float, b: float) -> float:
    """a / b with IEEE 754's answers for b == 0, as Go computes it."""
    if b:
        return a / b
    return math.nan if a == 0 else math.inf


@dataclass(frozen=True)
class TBF:
    """A token bucket in the kernel's units: rate in bytes/s, buffer in ticks, limit in bytes."""

    rate: int  # 64 bits: above 32 bits it also goes as TCA_TBF_RATE64
    buffer: int
    limit: int

    @classmethod
    def from_bits(cls, rate_bits: int, burst_bits: int) -> TBF:
        """The reference's createTBF, with Go's conversions: the burst in bytes is cut to 32
        bits, the buffer and the limit are uint32 conversions of float64s, the limit's sum
        wraps. Every value the reference accepts gives the same bucket, and the kernel takes
        or refuses it as it does the reference's."""
        if rate_bits <= 0 or burst_bits <= 0:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid token bucket: rate {rate_bits} bit/s, burst {burst_bits} bits")
        rate = rate_bits // 8
        burst = (burst_bits // 8) & U32
        time = go_uint32(_div(float(burst) * float(TIME_UNITS_PER_SEC), float(rate)))
        buffer = go_uint32(float(time) * _tick_in_usec())
        latency = float(TIME_UNITS_PER_SEC) * (LATENCY_MS / 1000.0)
        limit = (go_uint32(float(rate) * latency / float(TIME_UNITS_PER_SEC)) + burst) & U32
        return cls(rate=rate, buffer=buffer, limit=limit)


def _kernel_error(what: str, exc: Exception) -> CNIError:
    return CNIError(Code.KERNEL, f"{what}: {exc}")


def _tbf_options(tbf: TBF) -> bytes:
    """TCA_OPTIONS of a tbf as Go's netlink sends it: TCA_TBF_PARMS (struct tc_tbf_qopt with
    only rate, limit and buffer set) and TCA_TBF_RATE64 when the rate needs more than 32 bits.
    No rate table (pyroute2's tbf sends one and has no 64-bit rate): the kernel computes its own."""
    qopt = struct.pack("=BBHhHI", 0, 0, 0, 0, 0, tbf.rate & U32) + bytes(12) + struct.pack("=III", tbf.limit, tbf.buffer, 0)
    out = netlink.attr(TCA_TBF_PARMS, qopt)
    if tbf.rate > U32:
        out += netlink.attr(TCA_TBF_RATE64, struct.pack("=Q", tbf.rate))
    return out


def add_tbf(ipr: Any, index: int, tbf: TBF) -> None:
    """A root token bucket filter on link `index` (handle 1:), in `ipr`'s namespace."""
    header = struct.pack("=BBHiIII", socket.AF_UNSPEC, 0, 0, index, ROOT_HANDLE, TC_H_ROOT, 0)
    body = header + netlink.attr(TCA_KIND, b"tbf\0") + netlink.attr(TCA_OPTIONS, _tbf_options(tbf))
    try:
        netlink.request(getattr(ipr, "pycni_ns", None), RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, body)
    except OSError as exc:
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


RTM_GETQDISC = 38


def qdisc(ipr: Any, index: int, parent: int) -> Qdisc | None:
    """The qdisc of link `index` at `parent` (TC_H_ROOT or TC_H_INGRESS), looked up by the
    kernel: a dump lists every qdisc of the host (the kernel does not filter qdisc dumps by
    link), which made bandwidth's DEL grow with the number of pods."""
    body = struct.pack("=BxxxiIII", socket.AF_UNSPEC, index, 0, parent, 0)
    msg = netlink.get_one(ipr, RTM_GETQDISC, body)
    if msg is None:
        return None
    options: dict[str, Any] = {}
    opts = msg.get_attr("TCA_OPTIONS")
    parms = opts.get_attr("TCA_TBF_PARMS") if opts is not None and msg.get_attr("TCA_KIND") == "tbf" else None
    if parms is not None:
        options = {"rate": parms["rate"], "buffer": parms["buffer"], "limit": parms["limit"]}
    return Qdisc(str(msg.get_attr("TCA_KIND")), int(msg["handle"]), int(msg["parent"]), options)


def root_tbf(ipr: Any, index: int) -> Qdisc | None:
    q = qdisc(ipr, index, TC_H_ROOT)
    return q if q is not None and q.kind == "tbf" and q.handle == ROOT_HANDLE else None


def has_ingress(ipr: Any, index: int) -> bool:
    q = qdisc(ipr, index, TC_H_INGRESS)
    return q is not None and q.kind == "ingress"


def matches(q: Qdisc | None, tbf: TBF) -> bool:
    return (
        q is not None
        and q.options.get("rate") == tbf.rate & U32
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
