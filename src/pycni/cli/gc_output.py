"""What `pycni gc` prints: the runtime's `GCOutcome` as lines for a person, or one JSON object.

cnitool's gc prints nothing when it succeeds (and cobra's "Error: ..." when it fails), so
there is no output of its to keep: the report is what pycni adds. A person reads

    gc mynet: 3 cached attachments, 1 valid, 2 stale (DEL'd: cnitool-1a2b/eth0, cnitool-3c4d/eth0)
    bridge: released 2 ipMasq rules (10.1.0.5, 10.1.0.6); 1 macspoofchk rule (veth14dcf40e)
    host-local (via bridge): released 2 addresses (10.1.0.5, 10.1.0.6)
    portmap: nothing
    firewall: no report (not a pycni plugin)

and `--json` gives the same as one object, every item listed.
"""

from __future__ import annotations

from typing import Any

from pycni.runtime.api import GCOutcome, PluginGC

SHOWN = 6  # items named on a line; the rest are counted (--json lists them all)


def plural(count: int, kind: str) -> str:
    if count == 1:
        return f"1 {kind}"
    if kind.endswith(("s", "sh", "ch", "x")):
        return f"{count} {kind}es"
    if kind.endswith("y") and not kind.endswith(("ay", "ey", "oy", "uy")):
        return f"{count} {kind[:-1]}ies"
    return f"{count} {kind}s"


def _named(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def sections(plugin: PluginGC) -> list[dict[str, Any]]:
    """The plugin's sections, flattened: itself first, then its delegates (each with `via`);
    `released` is None for a plugin that reported nothing."""
    found = [dict(s) for s in plugin.sections or []]
    if not found:
        found = [{"plugin": plugin.plugin, "released": None}]
    if plugin.error is not None:
        found[0]["error"] = plugin.error.msg
    if plugin.ran and not plugin.ours:
        found[0]["reason"] = "not a pycni plugin"
    return found


def _section_line(section: dict[str, Any]) -> str:
    name = section["plugin"] + (f" (via {section['via']})" if section.get("via") else "")
    released = section.get("released")
    if released is None:
        what = "no report" + (f" ({section['reason']})" if section.get("reason") else "")
    elif released:
        what = "released " + "; ".join(f"{plural(len(items), kind)} ({_named(items)})" for kind, items in released.items())
    else:
        what = "nothing"
    if section.get("error"):
        what += f"; failed: {section['error']}"
    return f"{name}: {what}"


def lines(outcome: GCOutcome) -> list[str]:
    head = f"gc {outcome.network}: "
    if outcome.skipped:
        return [head + f"nothing collected: {outcome.skipped}"]
    if outcome.no_plugin_gc and not outcome.stale:
        return [head + f"nothing collected: {outcome.no_plugin_gc}"]
    head += f"{plural(outcome.cached, 'cached attachment')}, {outcome.valid} valid, {len(outcome.stale)} stale"
    deleted = [f"{cid}/{ifname}" for cid, ifname, error in outcome.stale if not error]
    failed = [f"{cid}/{ifname}" for cid, ifname, error in outcome.stale if error]
    notes = ([f"DEL'd: {_named(deleted)}"] if deleted else []) + ([f"DEL failed: {_named(failed)}"] if failed else [])
    if notes:
        head += f" ({'; '.join(notes)})"
    if outcome.no_plugin_gc:
        return [head, f"plugins not asked to collect: {outcome.no_plugin_gc}"]
    return [head] + [_section_line(s) for plugin in outcome.plugins for s in sections(plugin)]


def to_dict(outcome: GCOutcome) -> dict[str, Any]:
    collected = not outcome.skipped and not (outcome.no_plugin_gc and not outcome.stale)
    doc: dict[str, Any] = {"network": outcome.network, "cniVersion": outcome.cni_version, "collected": collected}
    if outcome.skipped:
        doc["reason"] = outcome.skipped
        return doc
    doc.update(
        cached=outcome.cached,
        valid=outcome.valid,
        stale=[
            {"containerID": cid, "ifname": ifname, "deleted": not error, **({"error": error} if error else {})}
            for cid, ifname, error in outcome.stale
        ],
        plugins=[s for plugin in outcome.plugins for s in sections(plugin)],
    )
    if outcome.no_plugin_gc:
        doc["reason"] = outcome.no_plugin_gc
    return doc
