"""Running network configuration lists: ADD, CHECK, DEL, GC, STATUS and VERSION,
with libcni's semantics and its result cache.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycni import gcreport, launcher
from pycni.runtime import cache, invoke
from pycni.spec import gc, gokeys, jsonfmt, names
from pycni.spec import version as versions
from pycni.spec.args import format_pairs
from pycni.spec.config import NetworkConfigList
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

_CAPABILITIES = gokeys.fold("capabilities")

log = logging.getLogger("pycni.runtime")


@dataclass
class RuntimeConf:
    """The per-attachment parameters of one operation (libcni's RuntimeConf)."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class GCArgs:
    valid_attachments: list[tuple[str, str]] = field(default_factory=list)  # (containerID, ifname)


@dataclass
class PluginGC:
    """One plugin's GC: what it says it released, one section per plugin that ran in the call
    (the plugin, then those it delegated to; `pycni.gcreport`), or None when it reported
    nothing (a reference plugin, or a pycni older than the report)."""

    plugin: str
    ours: bool  # one of pycni's launchers: asked for a report
    sections: list[dict[str, Any]] | None = None
    error: CNIError | None = None
    ran: bool = True  # False when it could not be run (not found)


@dataclass
class GCOutcome:
    """What a network's GC did: the cached attachments it found and DEL'd as stale, and each
    plugin's GC; `skipped` says why nothing was done at all, `no_plugin_gc` why the plugins
    were not asked to collect."""

    network: str
    cni_version: str
    skipped: str = ""
    no_plugin_gc: str = ""
    cached: int = 0  # the network's cached attachments
    valid: int = 0  # ...of which the valid set named
    stale: list[tuple[str, str, str]] = field(default_factory=list)  # (containerID, ifname, DEL's error or "")
    plugins: list[PluginGC] = field(default_factory=list)
    errors: list[CNIError] = field(default_factory=list)


def gc_skipped(net: NetworkConfigList) -> str:
    """Why GC of `net` must do nothing at all, or "" (libcni: `disableGC` skips both halves)."""
    if net.disable_gc:
        return "disableGC is true: the spec says runtimes must not call GC for this network"
    return ""


def plugin_gc_absent(net: NetworkConfigList) -> str:
    """Why the plugins of `net` are not asked to GC, or "".

    GC is a command of spec 1.1.0 (the seed's table puts it at 1.0.0, which it is not). As
    libcni's GCNetworkList, the DEL of stale cached attachments happens whatever the version;
    only the plugins' half is skipped, and `pycni gc` says so instead of a silent success."""
    version = net.cni_version or versions.IMPLICIT_VERSION
    if not versions.at_least(version, "1.1.0"):
        return f'cniVersion {version} has no GC (the spec added it in 1.1.0): put "1.1.0" in cniVersion or cniVersions'
    return ""


class PluginFailed(CNIError):
    """A plugin of a chain failed; keeps the plugin's own code."""

    def __init__(self, plugin: dict[str, Any], op: str, cause: CNIError) -> None:
        desc = f'type="{gokeys.get(plugin, "type")}"'
        if gokeys.get(plugin, "name"):
            desc += f' name="{gokeys.get(plugin, "name")}"'
        super().__init__(cause.code, f"plugin {desc} failed ({op}): {cause.msg}", cause.details)
        self.cause = cause


class CNIConfig:
    """A runtime: where plugins are found, where results are cached, how long a plugin may run."""

    def __init__(
        self,
        path: Sequence[str],
        cache_dir: str = cache.DEFAULT_CACHE_DIR,
        timeout: float = invoke.DEFAULT_TIMEOUT,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.path = [p for p in path if p]
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.base_env = base_env

    # -- building one plugin's stdin ------------------------------------------
    @staticmethod
    def build_config(
        net: NetworkConfigList,
        plugin: dict[str, Any],
        prev_result: Result | None = None,
        rt: RuntimeConf | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bytes:
        """The request configuration: the plugin object with name, cniVersion,
        prevResult and runtimeConfig inserted and capabilities removed."""
        conf = {k: v for k, v in plugin.items() if gokeys.fold(k) != _CAPABILITIES}
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        if prev_result is not None:
            conf["prevResult"] = prev_result.to_dict()
        if rt is not None:
            runtime_config = {
                cap: rt.capability_args[cap]
                for cap, enabled in (gokeys.get(plugin, "capabilities") or {}).items()
                if enabled and cap in rt.capability_args
            }
            if runtime_config:
                conf["runtimeConfig"] = runtime_config
        if extra:
            conf.update(extra)
        return jsonfmt.dumps(conf).encode()

    def _args(self, command: str, rt: RuntimeConf | None) -> invoke.Args:
        if rt is None:
            return invoke.Args(command=command, path=":".join(self.path))
        return invoke.Args(
            command=command,
            container_id=rt.container_id,
            netns=rt.netns,
            ifname=rt.ifname,
            cni_args=format_pairs(rt.args),
            path=":".join(self.path),
        )

    def _env(self, command: str, rt: RuntimeConf | None) -> dict[str, str]:
        return self._args(command, rt).as_env(self.base_env)

    @staticmethod
    def _validate_attachment(net: NetworkConfigList, rt: RuntimeConf) -> None:
        names.validate_container_id(rt.container_id)
        names.validate_network_name(net.name)
        names.validate_interface_name(rt.ifname)

    # -- ADD -------------------------------------------------------------------
    def add_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> Result:
        self._validate_attachment(net, rt)
        other = cache.foreign(self.cache_dir, net.name, rt.container_id, rt.ifname)
        if other is not None:
            raise CNIError(
                Code.CONFLICT,
                f"the result cache file of network {net.name!r}, container {rt.container_id!r}, interface {rt.ifname!r} "
                f"holds network {other.network!r}, container {other.container_id!r}, interface {other.ifname!r}",
                "libcni names it <network>-<containerID>-<ifname>: the two attachments collide; nothing was changed",
            )
        result: Result | None = None
        for plugin in net.plugins:
            plugin_path = invoke.find_in_path(gokeys.get(plugin, "type"), self.path)
            stdin = self.build_config(net, plugin, result, rt)
            try:
                result = invoke.exec_with_result(plugin_path, stdin, self._env("ADD", rt), net.cni_version, self.timeout)
            except CNIError as err:
                raise PluginFailed(plugin, "add", err) from None
        assert result is not None  # a list always has a plugin
        entry = cache.CachedAttachment(
            container_id=rt.container_id,
            network=net.name,
            ifname=rt.ifname,
            config=net.raw_bytes,
            netns=rt.netns,
            cni_args=rt.args or None,
            capability_args=rt.capability_args,
            raw_result=result.to_dict(),
        )
        try:
            cache.write(self.cache_dir, entry)
        except OSError as exc:
            raise CNIError(Code.IO_FAILURE, f'failed to set network "{net.name}" cached result: {exc}') from None
        return result

    # -- CHECK -----------------------------------------------------------------
    def check_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        if not versions.at_least(net.cni_version or versions.IMPLICIT_VERSION, "0.4.0"):
            raise CNIError(
                Code.INCOMPATIBLE_CNI_VERSION,
                f'configuration version "{net.cni_version}" does not support the CHECK command',
            )
        if net.disable_check:
            return
        self._validate_attachment(net, rt)
        cached = self._cached_result(net, rt)
        if cached is None:
            raise CNIError(
                Code.UNKNOWN_CONTAINER,
                f"no cached result for network {net.name!r}, container {rt.container_id!r}, "
                f"interface {rt.ifname!r} in {cache.results_dir(self.cache_dir)}: CHECK needs the result of its ADD",
            )
        self._run_each(net, net.plugins, "CHECK", cached, rt)

    # -- DEL -------------------------------------------------------------------
    def del_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        self._validate_attachment(net, rt)
        cached: Result | None = None
        if versions.at_least(net.cni_version or versions.IMPLICIT_VERSION, "0.4.0"):
            try:
                cached = self._cached_result(net, rt)
            except (CNIError, ValueError) as exc:
                # A corrupt cache must never block DEL: drop it and delete without prevResult.
                log.warning("ignoring unreadable cached result of %s/%s/%s: %s", net.name, rt.container_id, rt.ifname, exc)
                cache.remove(self.cache_dir, net.name, rt.container_id, rt.ifname)
        self._run_each(net, list(reversed(net.plugins)), "DEL", cached, rt)
        cache.remove(self.cache_dir, net.name, rt.container_id, rt.ifname)

    def _run_each(
        self, net: NetworkConfigList, plugins: list[dict[str, Any]], command: str, prev: Result | None, rt: RuntimeConf
    ) -> None:
        """CHECK or DEL every plugin in order with the same prevResult; stop at the first failure."""
        op = {"CHECK": "check", "DEL": "delete"}[command]
        for plugin in plugins:
            plugin_path = invoke.find_in_path(gokeys.get(plugin, "type"), self.path)
            stdin = self.build_config(net, plugin, prev, rt)
            try:
                invoke.exec_without_result(plugin_path, stdin, self._env(command, rt), self.timeout)
            except CNIError as err:
                raise PluginFailed(plugin, op, err) from None

    def _cached_result(self, net: NetworkConfigList, rt: RuntimeConf) -> Result | None:
        try:
            result = cache.read_result(self.cache_dir, net.name, rt.container_id, rt.ifname)
        except ValueError as exc:
            raise CNIError(
                Code.DECODING_FAILURE,
                f"the cached result of network {net.name!r}, container {rt.container_id!r}, interface {rt.ifname!r} "
                f"is unreadable: {exc}",
                "delete the attachment (DEL ignores an unreadable cache) and add it again",
            ) from None
        if result is None:
            return None
        target = net.cni_version or versions.IMPLICIT_VERSION
        if result.cni_version != target:
            # The list's version decides prevResult's version (libcni's GetAsVersion).
            result = result.convert(target)
        return result

    def cached_result(self, net: NetworkConfigList, rt: RuntimeConf) -> Result | None:
        return self._cached_result(net, rt)

    # -- GC --------------------------------------------------------------------
    def gc_network_list(self, net: NetworkConfigList, args: GCArgs | None) -> list[CNIError]:
        """DEL every cached attachment of `net` outside the valid set, then GC every
        plugin (spec 1.1.0). Errors are collected, not fatal: GC cleans all it can."""
        return self.collect_garbage(net, args).errors

    def collect_garbage(self, net: NetworkConfigList, args: GCArgs | None) -> GCOutcome:
        """`gc_network_list`, saying what it did (`GCOutcome`)."""
        outcome = GCOutcome(network=net.name, cni_version=net.cni_version, skipped=gc_skipped(net))
        if outcome.skipped:
            return outcome  # as libcni for disableGC
        valid = set(args.valid_attachments) if args is not None else set()
        for entry in cache.list_attachments(self.cache_dir):
            if entry.network != net.name:
                continue
            outcome.cached += 1
            if (entry.container_id, entry.ifname) in valid:
                outcome.valid += 1
                continue
            rt = RuntimeConf(
                container_id=entry.container_id,
                netns=entry.netns,
                ifname=entry.ifname,
                args=list(entry.cni_args or []),
                capability_args=entry.capability_args,
            )
            try:
                self.del_network_list(net, rt)
            except CNIError as err:
                outcome.errors.append(
                    CNIError(err.code, f"failed to delete stale attachment {rt.container_id} {rt.ifname}: {err.msg}", err.details)
                )
                outcome.stale.append((rt.container_id, rt.ifname, err.msg))
            else:
                outcome.stale.append((rt.container_id, rt.ifname, ""))
        outcome.no_plugin_gc = plugin_gc_absent(net)
        if outcome.no_plugin_gc:
            return outcome
        extra: dict[str, Any] = dict(gc.request_fields(args.valid_attachments if args else []))
        for plugin in net.plugins:
            plugin_type = gokeys.get(plugin, "type")
            try:
                plugin_path = invoke.find_in_path(plugin_type, self.path)
                stdin = self.build_config(net, plugin, extra=extra)
                done = self._gc_plugin(plugin_type, plugin_path, stdin)
            except CNIError as err:
                done = PluginGC(plugin_type, ours=False, error=err, ran=False)
            outcome.plugins.append(done)
            if done.error is not None:
                cause = done.error
                outcome.errors.append(CNIError(cause.code, f"failed to GC plugin {plugin_type}: {cause.msg}", cause.details))
        return outcome

    def _gc_plugin(self, plugin_type: str, plugin_path: str, stdin: bytes) -> PluginGC:
        """One plugin's GC, asking pycni's own launchers (only them) for a report
        (`pycni.gcreport`); a failed one keeps the report of what it did release."""
        env = self._env("GC", None)
        ours = launcher.is_launcher(plugin_path)
        if ours:
            env[gcreport.REPORT_ENV] = "1"
        else:
            env.pop(gcreport.REPORT_ENV, None)
        execution = invoke.execute(plugin_path, stdin, env, self.timeout)
        done = PluginGC(plugin_type, ours=ours, sections=gcreport.parse(execution.stderr) if ours else None)
        if execution.returncode != 0:
            plain = invoke.Execution(execution.stdout, gcreport.without_line(execution.stderr), execution.returncode)
            done.error = invoke.error_from(plain, plugin_path)
        return done

    # -- STATUS ----------------------------------------------------------------
    def status_network_list(self, net: NetworkConfigList) -> None:
        """Raise the first plugin's error; versions before 1.1.0 have no STATUS and are ready."""
        if not versions.at_least(net.cni_version or versions.IMPLICIT_VERSION, "1.1.0"):
            return
        for plugin in net.plugins:
            plugin_path = invoke.find_in_path(gokeys.get(plugin, "type"), self.path)
            stdin = self.build_config(net, plugin)
            invoke.exec_without_result(plugin_path, stdin, self._env("STATUS", None), self.timeout)

    # -- VERSION / validation ----------------------------------------------------
    def version_info(self, plugin_type: str) -> list[str]:
        return invoke.version_info(invoke.find_in_path(plugin_type, self.path), self.base_env, self.timeout)

    def validate_network_list(self, net: NetworkConfigList) -> list[str]:
        """Every plugin exists and supports the list's version (the IPAM plugin too);
        return the capabilities the list declares. All problems are reported at once."""
        problems: list[str] = []
        caps: set[str] = set()
        wanted = net.cni_version or versions.IMPLICIT_VERSION
        for idx, plugin in enumerate(net.plugins):
            types = [gokeys.get(plugin, "type")]
            ipam = gokeys.get(plugin, "ipam")
            if isinstance(ipam, dict) and isinstance(gokeys.get(ipam, "type"), str):
                types.append(gokeys.get(ipam, "type"))
            for plugin_type in types:
                try:
                    supported = self.version_info(plugin_type)
                except CNIError as err:
                    problems.append(f"plugins[{idx}] {plugin_type}: {err}")
                    continue
                if wanted not in supported:
                    problems.append(
                        f'plugins[{idx}] {plugin_type} does not support config version "{wanted}" '
                        f"(it supports {', '.join(supported)})"
                    )
            caps.update(c for c, on in (gokeys.get(plugin, "capabilities") or {}).items() if on)
        if problems:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f'network "{net.name}" is not valid: ' + "; ".join(problems))
        return sorted(caps)
