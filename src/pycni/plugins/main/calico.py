"""calico: Calico's CNI plugin — a veth per workload, routed at L3 through the host.

ADD (Calico's cmdAdd): read the configuration and node name, look up the
workload's WorkloadEndpoint, get addresses from the IPAM plugin (`calico-ipam` or
`host-local`, run from CNI_PATH), set up the dataplane (see
`pycni.calico.dataplane`) and write the WorkloadEndpoint. A failed ADD releases the
addresses and removes the veth. The result names both ends: the container
interface (its addresses as /32 and /128, the 169.254.1.1 gateway and default
route) and the host veth with its ee:ee:ee:ee:ee:ee MAC.

DEL removes the container's interface first, then the WorkloadEndpoint (only if
this container still owns it) and the addresses. With the datastore unreachable it
journals what it owes the datastore and succeeds: a pod is never stuck terminating.

CHECK compares the kernel and the datastore with the previous result (Calico's
CHECK does nothing). GC removes this node's endpoints of the network whose
container is no longer valid, and delegates to the IPAM plugin. STATUS reports an
unreachable datastore.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from pycni import faults, gcreport
from pycni.calico import cni, dataplane, endpoints
from pycni.calico.datastore import Datastore, DatastoreUnavailable
from pycni.calico.endpoints import Endpoints
from pycni.calico.policy import cni as policy_cni
from pycni.calico.resources import Resource, ResourceError
from pycni.net import attachment, netns
from pycni.plugins import checking, delegation
from pycni.runtime import delegate
from pycni.skel import CmdArgs
from pycni.spec import gokeys, ipaddr
from pycni.spec.errors import CNIError, Code
from pycni.spec.gc import valid_attachments
from pycni.spec.result import Interface, IPConfig, Result, Route

ABOUT = "Calico CNI plugin (pycni)"
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _ipam_call(ctx: cni.Context) -> CmdArgs:
    """The call as the IPAM plugin gets it: Calico adds IgnoreUnknown=1 so that an IPAM
    plugin that does not know the Kubernetes CNI_ARGS still accepts them."""
    args = ctx.call.args
    merged = "IgnoreUnknown=1" + (f";{args}" if args else "")
    return dataclasses.replace(ctx.call, env={**ctx.call.env, "CNI_ARGS": merged}, args=merged)


def _ipam_type(ctx: cni.Context) -> str:
    if not ctx.conf.ipam.type:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, 'missing required key "type" in ipam', 'e.g. "ipam": {"type": "calico-ipam"}')
    return ctx.conf.ipam.type


def _container_routes(ctx: cni.Context) -> list[dataplane.IPNetwork]:
    """Calico's default routes, or host-local's `routes` (their gateways ignored: the host is the gateway)."""
    routes: list[dataplane.IPNetwork] = []
    if ctx.conf.ipam.type == "host-local":
        for entry in gokeys.get(ctx.conf.ipam.raw, "routes") or []:
            dst = gokeys.get(entry, "dst") if isinstance(entry, dict) else None
            if isinstance(dst, str):
                try:
                    routes.append(ipaddr.network(dst, strict=False))
                except ValueError:
                    raise CNIError(Code.INVALID_NETWORK_CONFIG, f"ipam.routes: invalid dst {dst!r}") from None
    if not routes:
        return list(dataplane.DEFAULT_ROUTES)
    if ctx.conf.include_default_routes:
        routes = [*dataplane.DEFAULT_ROUTES, *routes]
    return routes


def _workload(ctx: cni.Context, mtu: int, addresses: list[IPInterface], host_veth: str) -> dataplane.Workload:
    return dataplane.Workload(
        netns=ctx.call.netns,
        ifname=ctx.call.ifname,
        host_veth=host_veth,
        mtu=mtu,
        addresses=addresses,
        routes=_container_routes(ctx),
        num_queues=ctx.conf.num_queues,
        allow_ip_forwarding=ctx.conf.allow_ip_forwarding,
        owner=f"{ctx.ids.namespace}.{ctx.ids.pod}" if ctx.ids.pod else ctx.ids.container_id,
    )


def _result(ctx: cni.Context, w: dataplane.Workload, container_mac: str) -> Result:
    """Both ends of the veth, the /32 (/128) addresses on the container's, and the routes set up."""
    result = Result(cni_version=ctx.call.cni_version)
    result.interfaces = [
        Interface(name=w.ifname, mac=container_mac, mtu=w.mtu, sandbox=w.netns),
        Interface(name=w.host_veth, mac=dataplane.HOST_MAC),
    ]
    for addr in w.host_addresses:
        gateway = dataplane.GATEWAY_V4 if addr.version == 4 else dataplane.GATEWAY_V6
        result.ips.append(IPConfig(address=addr, gateway=gateway, interface=0))
    for dst in w.routes:
        if w.has(dst.version):
            gw = dataplane.GATEWAY_V4 if dst.version == 4 else dataplane.GATEWAY_V6
            result.routes.append(Route(dst=ipaddress.ip_interface(str(dst)), gw=gw))
    return result


def _endpoint_addresses(obj: Resource) -> list[IPInterface]:
    return [ipaddress.ip_interface(n) for n in obj["spec"].get("ipNetworks") or []]


def _profiles(ctx: cni.Context) -> list[str]:
    if ctx.conf.policy_type == "k8s" and ctx.ids.orchestrator == endpoints.ORCH_K8S:
        # Calico derives kns.<namespace> (and ksa.<ns>.<serviceaccount>) from the Kubernetes
        # API; without one the namespace profile is what can be known.
        return [f"kns.{ctx.ids.namespace}"]
    return [ctx.conf.name]


# -- ADD ---------------------------------------------------------------------------


def add(call: CmdArgs) -> Result:
    ctx = cni.context(call, "cni-plugin")
    conf = ctx.conf
    conf.require_nodename_file()
    mtu = conf.determine_mtu()
    if conf.ip_addrs_no_ipam and ctx.ids.orchestrator == endpoints.ORCH_CNI:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "requested feature is not supported for this runtime: ip_addrs_no_ipam")
    if ctx.ids.pod:
        ctx.log.info("Extracted pod %s namespace %s", ctx.ids.pod, ctx.ids.namespace)
    try:
        name = ctx.ids.name()
    except endpoints.EndpointNameError as exc:
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"error constructing WorkloadEndpoint name: {exc}") from None
    log = ctx.log.with_fields(WorkloadEndpoint=name)
    log.info("Calico CNI ADD")
    try:
        with cni.datastore(ctx) as store:
            cni.check_cluster_ready(store)
            return _add(ctx, store, mtu, log)
    except DatastoreUnavailable as exc:
        log.error("Final result of CNI ADD was an error: %s", exc)
        raise cni.unavailable(exc) from None


def _add(ctx: cni.Context, store: Datastore, mtu: int, log: Any) -> Result:
    labels = policy_cni.pod_labels(ctx.conf.raw)
    if not netns.exists(ctx.call.netns):
        raise netns.NetNSNotFound(ctx.call.netns)
    eps = Endpoints(store)
    existing = eps.for_workload(ctx.ids)
    host_veth = endpoints.host_veth_name(ctx.ids)
    if existing is not None:
        reused = _reuse(ctx, eps, existing, mtu, log)
        if reused is not None:
            return reused
    ipam_type = _ipam_type(ctx)
    if ipam_type == "host-local" and "usepodcidr" in str(ctx.conf.ipam.raw).lower():
        raise CNIError(Code.INVALID_NETWORK_CONFIG, 'ipam.subnet "usePodCidr" needs the Kubernetes API, which pycni cannot use')
    # A failure from here on gives the addresses back (and the dataplane removes itself).
    with delegation.ipam_allocation(_ipam_call(ctx), ipam_type, log=ctx.log, handover=ctx) as ipam_result:
        assert ipam_result is not None  # an IPAM type is required
        log.info("Got result from IPAM plugin: %s", ", ".join(str(ip.address) for ip in ipam_result.ips))
        w = _workload(ctx, mtu, [ip.address for ip in ipam_result.ips], host_veth)
        log.info("Calico CNI using IPs: %s", ", ".join(str(a) for a in w.host_addresses))
        mac = _attach(ctx, w, log)
        _write_endpoint(ctx, eps, existing, w, mac, labels)
    faults.checkpoint("endpoint-written")
    log.info("Wrote endpoint to datastore")
    return _result(ctx, w, mac)


def _attach(ctx: cni.Context, w: dataplane.Workload, log: Any) -> str:
    """Set up the veth pair, addresses and routes; the container end's MAC."""
    parts = dataplane.describe(w)
    attachment.apply(parts.att)
    if parts.host.replaced:
        log.info("Cleaning old hostVeth: %s", w.host_veth)
    mac = parts.container.actual_mac
    log.info("Added veth %s (container %s, MAC %s) with addresses %s", w.host_veth, w.ifname, mac,
             ", ".join(str(a) for a in w.host_addresses))  # fmt: skip
    return mac


def _write_endpoint(
    ctx: cni.Context, eps: Endpoints, existing: Resource | None, w: dataplane.Workload, mac: str, labels: dict[str, str]
) -> None:
    """Create the WorkloadEndpoint (update a pod's existing one) with the pod's `labels`, its
    profile first; on failure remove the dataplane."""
    obj = existing if existing is not None and ctx.ids.orchestrator == endpoints.ORCH_K8S else None
    if obj is None:
        obj = endpoints.new_endpoint(ctx.ids, ctx.ids.name())
    spec = obj["spec"]
    spec.update(
        orchestrator=ctx.ids.orchestrator,
        node=ctx.ids.node,
        containerID=ctx.call.container_id,
        endpoint=obj["spec"].get("endpoint") or ctx.call.ifname,
        ipNetworks=[str(a) for a in w.host_addresses],
        profiles=_profiles(ctx),
        interfaceName=w.host_veth,
        mac=mac,
    )
    if ctx.ids.pod:
        spec["pod"] = ctx.ids.pod
    obj["spec"] = endpoints.order_spec(spec)
    endpoints.set_labels(obj, labels)
    try:
        _ensure_profile(ctx, eps.store)
        if "resourceVersion" in obj["metadata"]:
            eps.update(obj)
        else:
            eps.create(obj)
    except (ResourceError, DatastoreUnavailable) as exc:
        dataplane.remove(ctx.call.netns, ctx.call.ifname)
        if isinstance(exc, DatastoreUnavailable):
            raise
        raise CNIError(Code.CONFLICT, f"error writing WorkloadEndpoint: {exc}") from None


def _ensure_profile(ctx: cni.Context, store: Datastore) -> None:
    """The endpoint's profile, created before the endpoint so that calico-node never sees it
    missing (a missing profile drops everything)."""
    if ctx.conf.policy_type == "k8s" and ctx.ids.orchestrator == endpoints.ORCH_K8S:
        policy_cni.ensure_namespace_profile(store, ctx.ids.namespace)
    elif not ctx.conf.policy_type:
        policy_cni.ensure_profile(store, ctx.conf.name, ctx.ids.orchestrator == endpoints.ORCH_K8S)


def _reuse(ctx: cni.Context, eps: Endpoints, existing: Resource, mtu: int, log: Any) -> Result | None:
    """A repeated ADD for a workload that already has its endpoint gets that endpoint's result.

    Under Kubernetes the endpoint is per pod: a new sandbox (another container ID) of the
    pod gets new addresses and a new veth (the kubelet DELs the old sandbox), so only
    the same container's intact endpoint is reused."""
    spec = existing["spec"]
    w = _workload(ctx, mtu, _endpoint_addresses(existing), spec.get("interfaceName") or endpoints.host_veth_name(ctx.ids))
    w.ifname = spec.get("endpoint") or ctx.call.ifname
    if ctx.ids.orchestrator == endpoints.ORCH_K8S:
        if spec.get("containerID") != ctx.call.container_id:
            return None
        if attachment.compare(dataplane.describe(w, spec.get("mac", "")).att):
            return None
    profiles = list(spec.get("profiles") or [])
    if ctx.conf.name not in profiles and ctx.ids.orchestrator == endpoints.ORCH_CNI:
        log.info("Calico CNI appending profile: %s", ctx.conf.name)

        def append(obj: Resource) -> None:
            obj["spec"]["profiles"] = [*(obj["spec"].get("profiles") or []), ctx.conf.name]

        eps.modify(existing["metadata"]["name"], existing["metadata"]["namespace"], append)
    log.info("Calico CNI found existing endpoint: %s", existing["metadata"]["name"])
    return _result(ctx, w, spec.get("mac", ""))


# -- CHECK -------------------------------------------------------------------------


def check(call: CmdArgs) -> None:
    ctx = cni.context(call, "cni-plugin")
    ctx.conf.require_nodename_file()
    prev = call.prev_result
    if prev is None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "CHECK needs the previous result (prevResult) of ADD")
    try:
        with cni.datastore(ctx) as store:
            _check(ctx, prev, Endpoints(store).for_workload(ctx.ids))
            delegate.check(_ipam_call(ctx), _ipam_type(ctx), handover=ctx)
    except DatastoreUnavailable as exc:
        raise cni.unavailable(exc) from None


def _check(ctx: cni.Context, prev: Result, existing: Resource | None) -> None:
    """The endpoint holds the previous result's addresses, and the kernel is as ADD left it."""
    call = ctx.call
    if existing is None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"WorkloadEndpoint {ctx.ids.name()} does not exist")
    spec = existing["spec"]
    if spec.get("containerID") not in ("", call.container_id):
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f"WorkloadEndpoint {existing['metadata']['name']} belongs to container {spec['containerID']}",
        )
    addresses = [ip.address for ip in prev.ips]
    owned = {str(a) for a in _endpoint_addresses(existing)}
    for addr in addresses:
        if f"{addr.ip}/{addr.max_prefixlen}" not in owned:
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG, f"address {addr.ip} is not on WorkloadEndpoint {existing['metadata']['name']}"
            )
    mac = ""
    index = prev.container_interface(call.ifname, call.netns)
    if index is not None:
        mac = prev.interfaces[index].mac
    w = _workload(ctx, ctx.conf.determine_mtu(), addresses, spec.get("interfaceName") or endpoints.host_veth_name(ctx.ids))
    problems = attachment.compare(dataplane.describe(w, mac or spec.get("mac", "")).att)
    if problems:
        raise checking.check_failed("calico", problems, Code.INVALID_NETWORK_CONFIG)


# -- DEL ---------------------------------------------------------------------------


def delete(call: CmdArgs) -> None:
    ctx = cni.context(call, "cni-plugin")
    ctx.conf.require_nodename_file()
    name = ctx.ids.name()
    log = ctx.log.with_fields(WorkloadEndpoint=name)
    log.info("Calico CNI DEL")
    log.info("Calico CNI deleting device in netns %s", call.netns)
    dataplane.remove(call.netns, call.ifname)
    try:
        with cni.datastore(ctx) as store:
            _delete_endpoint(ctx, Endpoints(store), name, log)
            faults.checkpoint("endpoint-deleted")
            log.info("Releasing IP address(es)")
            delegate.delete(_ipam_call(ctx), _ipam_type(ctx), handover=ctx)
    except DatastoreUnavailable:
        cni.record(ctx, cni.datastore_identity(ctx.conf), [], (ctx.ids.namespace, name))
        log.info("Releasing IP address(es)")
        delegate.delete(_ipam_call(ctx), _ipam_type(ctx))
    log.info("Teardown processing complete.")


def _delete_endpoint(ctx: cni.Context, eps: Endpoints, name: str, log: Any) -> None:
    for _ in range(5):
        found = eps.get(name, ctx.ids.namespace)
        if found is None:
            log.info("WorkloadEndpoint does not exist in the datastore, moving forward with the clean up")
            return
        owner = found["spec"].get("containerID", "")
        if owner and owner != ctx.call.container_id:
            log.warning("CNI_CONTAINERID does not match WorkloadEndpoint ContainerID (%s), don't delete WEP.", owner)
            return
        try:
            eps.delete(name, ctx.ids.namespace, int(found["metadata"]["resourceVersion"]))
            log.info("Deleted WorkloadEndpoint %s/%s", ctx.ids.namespace, name)
            return
        except ResourceError:
            continue  # changed between read and delete: look again
    raise CNIError(Code.TRY_AGAIN_LATER, f"error deleting endpoint: {name} was modified before it could be deleted")


# -- GC, STATUS ----------------------------------------------------------------------


def gc(call: CmdArgs) -> None:
    ctx = cni.context(call, "cni-plugin")
    valid = {container for container, _ifname in valid_attachments(call.conf.raw)}  # as calico-ipam's handles
    try:
        with cni.datastore(ctx) as store:
            eps = Endpoints(store)
            for obj in eps.list():
                spec = obj["spec"]
                ours = ctx.conf.name in (spec.get("profiles") or []) or (
                    ctx.conf.policy_type == "k8s" and spec.get("orchestrator") == endpoints.ORCH_K8S
                )
                if spec.get("node") != ctx.nodename or not ours or spec.get("containerID") in valid:
                    continue
                ctx.log.info(
                    "GC: deleting WorkloadEndpoint %s (container %s no longer valid)",
                    obj["metadata"]["name"],
                    spec.get("containerID"),
                )
                try:
                    eps.delete(obj["metadata"]["name"], obj["metadata"]["namespace"], int(obj["metadata"]["resourceVersion"]))
                except ResourceError:
                    continue
                gcreport.released("WorkloadEndpoint", obj["metadata"]["name"])
            if ctx.conf.ipam.type:
                delegate.gc(ctx.call, ctx.conf.ipam.type, handover=ctx)
    except DatastoreUnavailable as exc:
        raise cni.unavailable(exc) from None


def status(call: CmdArgs) -> None:
    ctx = cni.context(call, "cni-plugin")
    try:
        with cni.datastore(ctx) as store:
            cni.check_cluster_ready(store)
            if ctx.conf.ipam.type:
                delegate.status(ctx.call, ctx.conf.ipam.type, handover=ctx)
    except DatastoreUnavailable as exc:
        raise CNIError(Code.PLUGIN_NOT_AVAILABLE, f"the Calico datastore is unavailable: {exc}") from None
