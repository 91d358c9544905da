"""What the `calico` and `calico-ipam` plugins share: the call's configuration, log and
datastore, the host-wide IPAM lock, and the DEL journal's replay.

A call is one pass: its configuration is parsed once and its datastore opened once, with the
journal replayed once. When `calico` runs `calico-ipam` in its own process (a launcher of
this installation in CNI_PATH), it hands its `Context` over (`pycni.runtime.delegate`), and
calico-ipam works in it: same configuration, node name and identifiers, same open datastore.
Run as a process (or as another installation), calico-ipam parses and connects on its own."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pycni.calico import config, log
from pycni.calico.config import CalicoConf
from pycni.calico.datastore import Datastore, DatastoreUnavailable, KeyNotFound, open_datastore
from pycni.calico.endpoints import Endpoints, Identifiers, identifiers
from pycni.calico.ipam import IPAM
from pycni.calico.journal import Entry, Journal
from pycni.calico.resources import CLUSTER_INFORMATION, ResourceError, Resources
from pycni.extras import MissingExtra
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code


@dataclass
class Context:
    call: CmdArgs
    conf: CalicoConf
    log: log.CalicoLog
    nodename: str
    ids: Identifiers
    # The open datastore (journal replayed) while the call holds one (`datastore`); a
    # calico-ipam run in-process by this call works in it.
    store: Datastore | None = None

    @property
    def handle_id(self) -> str:
        return self.ids.handle_id(self.conf.name)


def context(call: CmdArgs, component: str) -> Context:
    handed = call.handed_over
    if isinstance(handed, Context) and handed.call.conf is call.conf:
        # calico-ipam run in-process by calico: the configuration it parsed, its session.
        return Context(
            call, handed.conf, handed.log.for_component(component, call.log), handed.nodename, handed.ids, handed.store
        )
    conf = config.parse(call.conf, call.env)
    logger = log.for_call(
        component,
        conf.log_file_path,
        conf.log_level,
        conf.log_file_max_size,
        conf.log_file_max_age,
        conf.log_file_max_count,
        call.log,
    )
    nodename = conf.determine_nodename()
    cni_args = dict(call.cni_args_pairs()) if call.command != "GC" and call.command != "STATUS" else {}
    _check_names(nodename, cni_args)
    ids = identifiers(nodename, call.container_id, call.ifname, cni_args)
    fields: dict[str, str] = {"ContainerID": call.container_id}
    if ids.pod:
        fields.update(Pod=ids.pod, Namespace=ids.namespace)
    return Context(call, conf, logger.with_fields(**fields), nodename, ids)


# Kubernetes object names (DNS-1123): what a pod name or namespace from CNI_ARGS may be.
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\Z")
_NAME_ARGS = ("K8S_POD_NAME", "K8S_POD_NAMESPACE", "CNI_TEST_NAMESPACE")


def _check_names(nodename: str, cni_args: dict[str, str]) -> None:
    """Names that become datastore keys, endpoint names and labels: a '/' would make one
    workload's key a prefix of another's, and text that is not UTF-8 cannot be stored."""
    for key in _NAME_ARGS:
        value = cni_args.get(key, "")
        if value and (len(value) > 253 or not _K8S_NAME.match(value)):
            raise CNIError(
                Code.INVALID_ENVIRONMENT_VARIABLES,
                f"CNI_ARGS {key} {value!r} is not a Kubernetes name",
                "lower-case letters, digits, '-' and '.', beginning and ending with a letter or digit, at most 253 characters",
            )
    if not nodename or len(nodename) > 253 or any(c == "/" or c.isspace() or not c.isprintable() for c in nodename):
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f"node name {nodename!r} cannot name a Calico node: it is empty, too long, or has a '/', a space or a control "
            "character",
            'set "nodename" in the network configuration, or write the name to the nodename file',
        )


def unavailable(exc: DatastoreUnavailable) -> CNIError:
    return CNIError(Code.TRY_AGAIN_LATER, f"the Calico datastore is unavailable: {exc}", "try again later")


@contextmanager
def datastore(ctx: Context) -> Iterator[Datastore]:
    """The call's datastore, with any journaled releases for it replayed first; the one
    open already when the call has it (handed over by the calico that runs this calico-ipam)."""
    if ctx.store is not None:
        yield ctx.store
        return
    try:
        store = open_datastore(ctx.conf.datastore)
    except MissingExtra as exc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, str(exc)) from None
    try:
        replay_journal(ctx, store)
        ctx.store = store
        yield store
    finally:
        ctx.store = None
        store.close()


def replay_journal(ctx: Context, store: Datastore) -> None:
    def apply(entry: Entry) -> None:
        ipam = IPAM(store, log=ctx.log)
        for handle in entry.handles:
            try:
                ipam.release_by_handle(handle)
            except KeyNotFound:
                pass
        if entry.endpoint_name:
            endpoints = Endpoints(store)
            found = endpoints.get(entry.endpoint_name, entry.endpoint_namespace)
            if found is not None and found["spec"].get("containerID", "") in ("", entry.container_id):
                try:
                    endpoints.delete(entry.endpoint_name, entry.endpoint_namespace, int(found["metadata"]["resourceVersion"]))
                except ResourceError:
                    pass  # changed since: it belongs to a newer sandbox now
        ctx.log.info("Replayed journaled release for container %s (handles %s)", entry.container_id, ", ".join(entry.handles))

    done = Journal(ctx.conf.journal_dir).replay(store.identity, apply)
    if done:
        ctx.log.info("Replayed %d journaled release(s)", done)


def record(ctx: Context, identity: str, handles: list[str], endpoint: tuple[str, str] | None = None) -> None:
    entry = Entry(identity, ctx.conf.name, ctx.call.container_id, handles)
    if endpoint is not None:
        entry.endpoint_namespace, entry.endpoint_name = endpoint
    path = Journal(ctx.conf.journal_dir).record(entry)
    ctx.log.warning("Datastore unavailable: recorded the release in %s; it is replayed when the datastore is back", path)


def datastore_identity(conf: CalicoConf) -> str:
    """The identity a store of these settings has, without connecting to it."""
    if conf.datastore.kind == "etcdv3":
        from pycni.calico.datastore.etcd import DEFAULT_ENDPOINTS, parse_endpoints

        parsed = parse_endpoints(conf.datastore.etcd_endpoints or DEFAULT_ENDPOINTS)
        return "etcdv3:" + ",".join(sorted(f"{s}://{h}:{p}" for s, h, p in parsed))
    return f"embedded:{os.path.abspath(conf.datastore.path)}"


def check_cluster_ready(store: Datastore) -> None:
    """Calico refuses to work while ClusterInformation says the datastore is not ready (an upgrade)."""
    info = Resources(store, CLUSTER_INFORMATION).get("default")
    if info is not None and (info.get("spec") or {}).get("datastoreReady") is False:
        raise CNIError(Code.TRY_AGAIN_LATER, "Calico is currently not ready to process requests")


@contextmanager
def ipam_lock(path: str) -> Iterator[None]:
    """Calico's best-effort host-wide IPAM lock: one assignment at a time per host keeps
    concurrent calls from fighting over the same block (correctness does not depend on it)."""
    fd = -1
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        if fd >= 0:
            os.close(fd)
        fd = -1
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)
