"""tuning: sysctls and link settings (MAC, MTU, promiscuous, all-multicast, queue length)
of the container interface, restored on DEL.

As the reference: sysctls only under net. (written in the container's namespace);
the MAC comes from the configuration, then CNI_ARGS `MAC`, then the `mac`
capability, then `args.cni.mac`, the last one given winning; `args.cni` also
overrides sysctl (key by key), promisc, mtu, allmulti and txQLen. Previous values
are saved in `<dataDir>/<containerID>_<ifname>.json` (default dataDir
/run/cni/tuning, the reference's file) before anything changes and restored on DEL.

Better than the reference: a key naming the interface may use `IFNAME` (replaced by
CNI_IFNAME after the dotted form is read, so interface names with dots work), the
previous sysctl values are saved and restored too, a failed ADD rolls back, and GC
removes the records of attachments that are gone.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pycni import faults, gcreport
from pycni.net import netlink, netns, sysctl
from pycni.plugins import records
from pycni.plugins.meta import _chained
from pycni.skel import CmdArgs
from pycni.spec.config import Fields
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

ABOUT = "CNI tuning plugin (pycni)"
log = logging.getLogger("pycni.plugin.tuning")

U32_MAX = 2**32 - 1  # mtu and txQLen are u32 netlink attributes
DEFAULT_DATA_DIR = "/run/cni/tuning"
IFF_PROMISC = 0x100
IFF_ALLMULTI = 0x200
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")


@dataclass
class Tuning:
    data_dir: str = DEFAULT_DATA_DIR
    sysctls: dict[str, str] = field(default_factory=dict)
    mac: str = ""
    promisc: bool = False
    mtu: int = 0
    allmulti: bool | None = None
    txqlen: int | None = None

    @property
    def changes_link(self) -> bool:
        return bool(self.mac or self.mtu or self.promisc or self.allmulti is not None or self.txqlen is not None)


def _sysctl_map(fields: Fields, key: str) -> dict[str, str]:
    raw = fields.get_obj(key).data
    out = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG,
                f"{fields.where + '.' if fields.where else ''}{key}.{k}: value {v!r} must be a string",
            )
        out[k] = v
    return out


def _mac(value: str, where: str) -> str:
    if not _MAC.match(value):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid {where} {value!r}: expected a MAC address like 02:00:00:00:00:01")
    return value.lower()


def parse(call: CmdArgs) -> Tuning:
    f = call.conf.fields
    conf = Tuning(
        data_dir=f.get_path("dataDir") or DEFAULT_DATA_DIR,
        sysctls=_sysctl_map(f, "sysctl"),
        mac=f.get_str("mac"),
        promisc=f.get_bool("promisc", False),
        mtu=f.get_int("mtu", 0, minimum=0, maximum=U32_MAX),
        allmulti=f.get_bool("allmulti") if "allmulti" in f else None,
        txqlen=f.get_int("txQLen", 0, minimum=0, maximum=U32_MAX) if "txQLen" in f else None,
    )
    env_mac = call.cni_args_dict(known=("MAC",)).get("MAC", "")
    if env_mac:
        conf.mac = env_mac
    runtime_mac = call.conf.runtime_config.get_str("mac")
    if runtime_mac:
        conf.mac = runtime_mac
    args = call.conf.args_cni
    if "sysctl" in args:
        conf.sysctls.update(_sysctl_map(args, "sysctl"))
    if "mac" in args:
        conf.mac = args.get_str("mac")
    if "promisc" in args:
        conf.promisc = args.get_bool("promisc")
    if "mtu" in args:
        conf.mtu = args.get_int("mtu", 0, minimum=0, maximum=U32_MAX)
    if "allmulti" in args:
        conf.allmulti = args.get_bool("allmulti")
    if "txQLen" in args:
        conf.txqlen = args.get_int("txQLen", 0, minimum=0, maximum=U32_MAX)
    if conf.mac:
        conf.mac = _mac(conf.mac, "mac")
    return conf


def sysctl_path(key: str, ifname: str) -> str:
    """The /proc/sys/net path of `key`, with IFNAME standing for the container interface."""
    path = key.replace(".", "/") if "/" not in key else key
    path = "/".join(ifname if part == "IFNAME" else part for part in path.split("/"))
    return sysctl.normalize(path)


# -- the record of previous values (the reference's file, plus sysctls and network) -------


def record_path(data_dir: str, container_id: str, ifname: str) -> str:
    return os.path.join(data_dir, f"{container_id}_{ifname}.json")


def _foreign(record: dict[str, Any] | None, call: CmdArgs) -> bool:
    """Whether a record belongs to another attachment: `<containerID>_<ifname>.json` is the
    same file for container "a_b" interface "c" and container "a" interface "b_c". A record
    the reference plugin wrote does not say whose it is: it is taken to be the caller's."""
    if not record:
        return False
    owner = (record.get("containerID", call.container_id), record.get("ifname", call.ifname))
    return owner != (call.container_id, call.ifname)


def _read_record(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable tuning record %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


# -- link settings --------------------------------------------------------------------------


def _link(ipr: netlink.IPRoute, ifname: str) -> Any:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"container interface {ifname} not found in the container namespace")
    return ipr.get_links(found[0])[0]


def _snapshot(link: Any, conf: Tuning) -> dict[str, Any]:
    """What ADD is about to change, as the reference records it."""
    record: dict[str, Any] = {}
    if conf.mac:
        record["mac"] = str(link.get_attr("IFLA_ADDRESS"))
    if conf.promisc:
        record["promisc"] = bool(link["flags"] & IFF_PROMISC)
    if conf.mtu:
        record["mtu"] = int(link.get_attr("IFLA_MTU"))
    if conf.allmulti is not None:
        record["allmulti"] = bool(link["flags"] & IFF_ALLMULTI)
    if conf.txqlen is not None:
        record["txQLen"] = int(link.get_attr("IFLA_TXQLEN"))
    return record


def _set(ipr: netlink.IPRoute, index: int, what: str, **kwargs: Any) -> None:
    try:
        ipr.link("set", index=index, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a NetlinkError, reported with what was being set
        code = Code.INVALID_NETWORK_CONFIG if netlink.is_errno(exc, 22, 34) else Code.KERNEL
        raise CNIError(code, f"cannot set {what}: {exc}") from None


def _apply_link(ipr: netlink.IPRoute, index: int, values: dict[str, Any]) -> None:
    if values.get("mtu"):
        _set(ipr, index, f"mtu {values['mtu']}", mtu=values["mtu"])
    if values.get("mac"):
        _set(ipr, index, f"mac {values['mac']}", address=values["mac"])
    if "promisc" in values and values["promisc"] is not None:
        _set(ipr, index, "promiscuous mode", flags=IFF_PROMISC if values["promisc"] else 0, change=IFF_PROMISC)
    if "allmulti" in values and values["allmulti"] is not None:
        _set(ipr, index, "all-multicast mode", flags=IFF_ALLMULTI if values["allmulti"] else 0, change=IFF_ALLMULTI)
    if "txQLen" in values and values["txQLen"] is not None:
        _set(ipr, index, f"txQLen {values['txQLen']}", txqlen=values["txQLen"])


def _restore(call: CmdArgs, record: dict[str, Any]) -> None:
    previous_sysctls = record.get("sysctl") or {}
    if isinstance(previous_sysctls, dict) and previous_sysctls:
        sysctl.write_many([(k, str(v)) for k, v in previous_sysctls.items()], call.netns)
    with netlink.route(call.netns) as ipr:
        found = ipr.link_lookup(ifname=call.ifname)
        if found:
            wanted: dict[str, Any] = {k: record[k] for k in ("mtu", "mac", "promisc", "allmulti", "txQLen") if k in record}
            _apply_link(ipr, found[0], wanted)


# -- the operations ---------------------------------------------------------------------------


def add(call: CmdArgs) -> Result:
    prev = _chained.require_prev_result(call, "tuning")
    conf = parse(call)
    paths = {sysctl_path(k, call.ifname): v for k, v in conf.sysctls.items()}
    path = record_path(conf.data_dir, call.container_id, call.ifname)
    existing = _read_record(path)
    if _foreign(existing, call):
        assert existing is not None
        raise CNIError(
            Code.CONFLICT,
            f"tuning: {path} holds the saved settings of container {existing.get('containerID')!r} "
            f"interface {existing.get('ifname')!r}",
            "the two attachments' record names collide (<containerID>_<ifname>.json); nothing was changed",
        )
    with netlink.route(call.netns) as ipr:
        link = _link(ipr, call.ifname)
        record = _snapshot(link, conf)
    if paths:
        record["sysctl"] = {k: sysctl.read(k, call.netns) for k in paths}
    wrote_record = False
    made_dir = not os.path.isdir(conf.data_dir)  # a refused ADD must not leave it behind either
    if conf.changes_link or paths:
        record.update(network=call.conf.name, containerID=call.container_id, ifname=call.ifname)
        records.write_record(path, record, "tuning-record-tmp")
        wrote_record = True
        faults.checkpoint("tuning-record-written")
    try:
        if paths:
            sysctl.write_many(sorted(paths.items()), call.netns)
            faults.checkpoint("tuning-sysctls-written")
        with netlink.route(call.netns) as ipr:
            index = int(_link(ipr, call.ifname)["index"])
            changes: dict[str, Any] = {
                "mtu": conf.mtu,
                "mac": conf.mac,
                "promisc": True if conf.promisc else None,
                "allmulti": conf.allmulti,
                "txQLen": conf.txqlen,
            }
            _apply_link(ipr, index, changes)
        faults.checkpoint("tuning-link-set")
    except BaseException:
        if wrote_record:
            try:
                _restore(call, record)
            finally:
                records.remove_record(path)
                if made_dir:
                    try:
                        os.rmdir(conf.data_dir)
                    except OSError:
                        pass  # another attachment's record is there by now
        raise
    result = prev.copy()
    if conf.mac:
        for intf in result.interfaces:
            if intf.name == call.ifname and intf.sandbox:
                intf.mac = conf.mac
    return result


def check(call: CmdArgs) -> None:
    _chained.require_prev_result(call, "tuning")
    conf = parse(call)
    for key, want in conf.sysctls.items():
        got = sysctl.read(sysctl_path(key, call.ifname), call.netns)
        if got != want:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"sysctl {key} is {got!r}, configured {want!r}")
    with netlink.route(call.netns) as ipr:
        link = _link(ipr, call.ifname)
    if conf.mac and str(link.get_attr("IFLA_ADDRESS")).lower() != conf.mac:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG, f"{call.ifname} has MAC {link.get_attr('IFLA_ADDRESS')}, configured {conf.mac}"
        )
    promisc = bool(link["flags"] & IFF_PROMISC)
    if promisc != conf.promisc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{call.ifname} promiscuous mode is {promisc}, configured {conf.promisc}")
    if conf.mtu and int(link.get_attr("IFLA_MTU")) != conf.mtu:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{call.ifname} has MTU {link.get_attr('IFLA_MTU')}, configured {conf.mtu}")
    allmulti = bool(link["flags"] & IFF_ALLMULTI)
    if conf.allmulti is not None and allmulti != conf.allmulti:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{call.ifname} all-multicast mode is {allmulti}, configured {conf.allmulti}")
    if conf.txqlen is not None and int(link.get_attr("IFLA_TXQLEN")) != conf.txqlen:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG, f"{call.ifname} has txQLen {link.get_attr('IFLA_TXQLEN')}, configured {conf.txqlen}"
        )


def delete(call: CmdArgs) -> None:
    """Restore what ADD changed and drop the record; best effort, as the reference."""
    try:
        data_dir = call.conf.fields.get_path("dataDir") or DEFAULT_DATA_DIR
    except CNIError as err:
        log.warning("tuning DEL: %s; ADD refuses such a configuration, so there is no record to restore", err)
        return
    path = record_path(data_dir, call.container_id, call.ifname)
    record = _read_record(path)
    if record is None:
        records.remove_record(path)  # what a killed write of it may have left
        return
    if _foreign(record, call):
        log.warning("tuning DEL: %s is the record of another attachment (%s); left alone", path, record.get("containerID"))
        return
    if record and call.netns and netns.exists(call.netns):
        try:
            _restore(call, record)
        except CNIError as err:
            log.warning("could not restore %s of %s: %s", call.ifname, call.container_id, err)
        faults.checkpoint("tuning-restored")
    records.remove_record(path)


def gc(call: CmdArgs) -> None:
    """Remove this network's records of attachments that are not valid any more, and the
    temporary files of their writes that a killed ADD left."""
    data_dir = call.conf.fields.get_path("dataDir") or DEFAULT_DATA_DIR
    valid = _chained.valid_tags(call)
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return
    for name in names:
        if not name.endswith(".json") and not records.is_partial_record(name):
            continue
        record = _read_record(os.path.join(data_dir, name))
        if not record or record.get("network") != call.conf.name:
            continue  # another network's, or written by the reference plugin (no network in it)
        tag = _chained.owner_tag(call.conf.name, str(record.get("containerID")), str(record.get("ifname")))
        if tag not in valid:
            try:
                os.unlink(os.path.join(data_dir, name))
            except FileNotFoundError:
                continue
            gcreport.released("tuning record", _chained.attachment_of(tag))
