"""dummy: a dummy interface in the container, carrying the addresses IPAM gives.

As the upstream plugin (newer than Debian's 1.1.1): `ipam` is required, the interface is
created in the container under its final name and brought up; CHECK also requires it to
be up. A dummy sends nothing anywhere: it gives applications an address of their own
next to another network's interface. A kernel without dummy support fails ADD with code
101 naming it (CONFIG_DUMMY), before any address is allocated.
"""

from __future__ import annotations

from pycni.net.attachment import Creation, Link
from pycni.plugins.main import _underlay as underlay
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code

ABOUT = "CNI dummy plugin (pycni)"


def ipam_type(call: CmdArgs) -> str:
    kind = call.conf.ipam.get_str("type")
    if not kind and call.command in ("ADD", "CHECK"):  # DEL, GC and STATUS do what they can
        raise CNIError(Code.INVALID_NETWORK_CONFIG, 'the dummy interface needs an IPAM plugin: set "ipam": {"type": ...}')
    return kind


def plan(call: CmdArgs) -> underlay.Plan:
    # Queue length 0, as the reference's netlink.Dummy{LinkAttrs{...}} makes it.
    return underlay.Plan(Link(call.ifname, ns=call.netns, kind="dummy", creation=Creation(create={"txqlen": 0})), ipam_type(call))


add, check, delete, gc, status = underlay.commands(plan)
