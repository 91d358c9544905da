"""Network configuration: the list a runtime reads, and the single plugin
configuration a plugin receives on stdin.

Typed accessors (`Fields`) give every plugin the same clear errors: code 7 naming
the key and the value it did not accept.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from pycni.spec import gokeys, ipaddr, jsonfmt, names
from pycni.spec import version as versions
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

_MISSING = object()


def _bad(key: str, value: Any, expected: str, where: str = "") -> CNIError:
    place = f" in {where}" if where else ""
    return CNIError(
        Code.INVALID_NETWORK_CONFIG,
        f"invalid value for {key!r}{place}: {jsonfmt.dumps(value)} is not {expected}",
    )


class Fields:
    """Typed, validated access to a JSON object's keys (a config or a section of one).

    Keys are the fields of the Go struct the reference decodes the object into: they
    match as encoding/json matches them, case-insensitively (`pycni.spec.gokeys`)."""

    def __init__(self, data: dict[str, Any], where: str = "") -> None:
        self.data = data
        self.where = where

    def __contains__(self, key: str) -> bool:
        return gokeys.has(self.data, key)

    def raw(self, key: str, default: Any = None) -> Any:
        return gokeys.get(self.data, key, default)

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def required(self, key: str) -> Any:
        if key not in self:
            place = f" in {self.where}" if self.where else ""
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f'missing required key "{key}"{place}')
        return self.raw(key)

    def get_str(self, key: str, default: str = "", required: bool = False) -> str:
        value = self.required(key) if required else self.raw(key, default)
        if not isinstance(value, str):
            raise _bad(self._path(key), value, "a string")
        return value

    def get_path(self, key: str, default: str = "") -> str:
        """A file or directory on the host: absolute (a relative one would depend on the working
        directory of whoever runs the call: the agent's is not a plugin process's), no NUL."""
        value = self.get_str(key, default)
        if value and "\0" in value:
            raise _bad(self._path(key), value, "a path: it contains a NUL character")
        if value and not value.startswith("/"):
            raise _bad(self._path(key), value, "an absolute path")
        return value

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self.raw(key, default)
        if isinstance(value, bool):
            return value
        raise _bad(self._path(key), value, "a boolean (true or false)")

    def get_int(self, key: str, default: int = 0, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.raw(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(self._path(key), value, "an integer")
        if minimum is not None and value < minimum:
            raise _bad(self._path(key), value, f"an integer of at least {minimum}")
        if maximum is not None and value > maximum:
            raise _bad(self._path(key), value, f"an integer of at most {maximum}")
        return value

    def get_obj(self, key: str) -> Fields:
        value = self.raw(key, {})
        if not isinstance(value, dict):
            raise _bad(self._path(key), value, "an object")
        return Fields(value, self._path(key))

    def get_list(self, key: str) -> list[Any]:
        value = self.raw(key, [])
        if not isinstance(value, list):
            raise _bad(self._path(key), value, "a list")
        return value

    def get_str_list(self, key: str) -> list[str]:
        value = self.get_list(key)
        if not all(isinstance(v, str) for v in value):
            raise _bad(self._path(key), value, "a list of strings")
        return list(value)

    def get_cidr(self, key: str, required: bool = False) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        text = self.get_str(key, required=required)
        if text == "":
            return None
        try:
            return ipaddr.interface(text)
        except ValueError:
            raise _bad(self._path(key), text, "an address in CIDR notation") from None

    def get_ip(self, key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        text = self.get_str(key)
        if text == "":
            return None
        try:
            return ipaddr.address(text)
        except ValueError:
            raise _bad(self._path(key), text, "an IP address") from None


@dataclass
class PluginConf:
    """The configuration one plugin invocation receives on stdin."""

    raw: dict[str, Any]
    cni_version: str
    name: str
    type: str
    prev_result: Result | None = None

    @property
    def fields(self) -> Fields:
        return Fields(self.raw)

    @property
    def runtime_config(self) -> Fields:
        return Fields(self.raw).get_obj("runtimeConfig")

    @property
    def ipam(self) -> Fields:
        return Fields(self.raw).get_obj("ipam")

    @property
    def has_prev_result(self) -> bool:
        return gokeys.has(self.raw, "prevResult")

    @property
    def args_cni(self) -> Fields:
        """The ``args.cni`` object (CONVENTIONS.md)."""
        return Fields(self.raw).get_obj("args").get_obj("cni")

    @classmethod
    def parse(cls, stdin: bytes, need_type: bool = True) -> PluginConf:
        data = jsonfmt.loads_object(stdin, "network configuration")
        ver = gokeys.get(data, "cniVersion", "")
        if not isinstance(ver, str):
            raise CNIError(Code.DECODING_FAILURE, f"decoding version from network config: cniVersion {ver!r} is not a string")
        ver = ver or versions.IMPLICIT_VERSION
        versions.parse(ver)
        name = names.validate_network_name(gokeys.get(data, "name"))
        plugin_type = gokeys.get(data, "type", "")
        if need_type:
            names.validate_plugin_type(plugin_type)
        elif not isinstance(plugin_type, str):
            raise _bad("type", plugin_type, "a string")
        return cls(raw=data, cni_version=ver, name=name, type=plugin_type)

    def load_prev_result(self) -> Result | None:
        """Parse ``prevResult`` (in the configuration's version) once, on demand."""
        raw = gokeys.get(self.raw, "prevResult")
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise CNIError(Code.DECODING_FAILURE, "prevResult must be a JSON object")
        try:
            result = Result.from_dict(raw, default_version=self.cni_version)
        except CNIError as exc:
            raise CNIError(exc.code, f"could not parse prevResult: {exc.msg}", exc.details) from None
        self.prev_result = result.convert(self.cni_version) if result.cni_version != self.cni_version else result
        return self.prev_result


def read_bool(data: dict[str, Any], key: str) -> bool:
    """A list-level boolean: JSON true/false or the strings "true"/"false", as libcni reads it."""
    value = data.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad(key, value, 'a boolean (true, false, "true" or "false")')


@dataclass
class NetworkConfigList:
    """A network configuration (a ``.conflist``), as the runtime uses it."""

    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    disable_check: bool = False
    disable_gc: bool = False
    load_only_inlined_plugins: bool = False
    cni_versions: list[str] | None = None
    raw_bytes: bytes = b""
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "") -> NetworkConfigList:
        where = f" ({source})" if source else ""
        raw = jsonfmt.loads_object(data, f"configuration list{where}")
        name = names.validate_network_name(raw.get("name"))
        ver = raw.get("cniVersion", "")
        if not isinstance(ver, str):
            raise _bad("cniVersion", ver, "a string")
        if ver:
            versions.parse(ver)
        cni_versions: list[str] | None = None
        if "cniVersions" in raw:
            value = raw["cniVersions"]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _bad("cniVersions", value, "a list of version strings")
            for v in value:
                versions.parse(v)
            cni_versions = list(value)
        selected = versions.select(ver, cni_versions)
        conf = cls(
            name=name,
            cni_version=selected,
            plugins=[],
            disable_check=read_bool(raw, "disableCheck"),
            disable_gc=read_bool(raw, "disableGC"),
            load_only_inlined_plugins=read_bool(raw, "loadOnlyInlinedPlugins"),
            cni_versions=cni_versions,
            raw_bytes=data,
            source=source,
        )
        if not selected:
            conf.warnings.append('no "cniVersion": plugins will treat the configuration as version 0.1.0')
        if "plugins" not in raw:
            if conf.load_only_inlined_plugins:
                raise CNIError(Code.INVALID_NETWORK_CONFIG, '"loadOnlyInlinedPlugins" is true but there is no "plugins" key')
            return conf
        plugins = raw["plugins"]
        if not isinstance(plugins, list):
            raise _bad("plugins", plugins, "a list of plugin configuration objects")
        if not plugins:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f'network "{name}": "plugins" is empty')
        for idx, plugin in enumerate(plugins):
            conf.plugins.append(validate_plugin_object(plugin, f"plugins[{idx}]"))
        return conf

    @classmethod
    def from_file(cls, path: str) -> NetworkConfigList:
        """A ``.conflist`` file, with ``<dir>/<name>/*.conf`` merged unless loadOnlyInlinedPlugins."""
        conf = cls.from_bytes(_read(path), source=path)
        if not conf.load_only_inlined_plugins:
            conf.plugins.extend(_sibling_plugins(os.path.dirname(path), conf.name))
        if not conf.plugins:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f'network "{conf.name}" in {path}: no plugin configurations found')
        return conf

    @classmethod
    def from_single_conf(cls, data: bytes, source: str = "") -> NetworkConfigList:
        """The deprecated single-plugin ``.conf``/``.json`` file, taken as a one-plugin list."""
        where = f" ({source})" if source else ""
        raw = jsonfmt.loads_object(data, f"configuration{where}")
        plugin = validate_plugin_object(raw, source or "configuration")
        listed = {"name": raw.get("name"), "cniVersion": raw.get("cniVersion", ""), "plugins": [plugin]}
        return cls.from_bytes(jsonfmt.dumps(listed).encode(), source=source)

    def plugin_types(self) -> list[str]:
        return [str(gokeys.get(p, "type")) for p in self.plugins]


def validate_plugin_object(plugin: Any, where: str) -> dict[str, Any]:
    if not isinstance(plugin, dict):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{where}: a plugin configuration must be a JSON object")
    names.validate_plugin_type(gokeys.get(plugin, "type"), f'type" in {where} "')
    caps = gokeys.get(plugin, "capabilities")
    if caps is not None and (not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values())):
        raise _bad("capabilities", caps, "an object of capability names to booleans", where)
    ipam = gokeys.get(plugin, "ipam")
    if ipam is not None:
        if not isinstance(ipam, dict):
            raise _bad("ipam", ipam, "an object", where)
        if gokeys.has(ipam, "type"):
            names.validate_plugin_type(gokeys.get(ipam, "type"), "ipam.type")
    return plugin


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise CNIError(Code.IO_FAILURE, f"error reading {path}: {exc.strerror}") from None


def conf_files(directory: str, extensions: tuple[str, ...]) -> list[str]:
    """Files in `directory` with one of `extensions`, sorted (a missing directory is empty)."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CNIError(Code.IO_FAILURE, f"error reading {directory}: {exc.strerror}") from None
    return [e.path for e in entries if not e.is_dir() and os.path.splitext(e.name)[1] in extensions]


def _sibling_plugins(directory: str, network: str) -> list[dict[str, Any]]:
    plugins = []
    for path in conf_files(os.path.join(directory, network), (".conf",)):
        raw = jsonfmt.loads_object(_read(path), f"plugin configuration {path}")
        plugins.append(validate_plugin_object(raw, path))
    return plugins


def load_network(directory: str, name: str) -> NetworkConfigList:
    """Find network `name` in `directory`, as libcni's LoadConfList does: the first
    ``.conflist`` (sorted by file name) with that name, else a single ``.conf``/``.json``."""
    lists = conf_files(directory, (".conflist",))
    for path in lists:
        conf = NetworkConfigList.from_file(path)
        if conf.name == name:
            return conf
    singles = conf_files(directory, (".conf", ".json"))
    for path in singles:
        raw = jsonfmt.loads_object(_read(path), f"configuration {path}")
        if raw.get("name") == name:
            return NetworkConfigList.from_single_conf(_read(path), source=path)
    if not lists and not singles:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"no net configurations found in {directory}")
    raise CNIError(Code.INVALID_NETWORK_CONFIG, f'no net configuration with name "{name}" in {directory}')
