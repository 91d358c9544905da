"""Validation of the names the spec constrains: networks, container IDs, interfaces.

Each of these ends up in a file name (result cache, IPAM store), an interface name
or a firewall rule, so anything that could escape a directory or is not a valid
Linux name is refused before anything is touched.
"""

from __future__ import annotations

import re

from pycni.spec.errors import CNIError, Code

# The spec: an alphanumeric, then alphanumerics, underscore, dot or hyphen.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")
MAX_IFNAME = 15  # IFNAMSIZ - 1
# Longer names do not fit a file name on common filesystems once prefixed.
MAX_NAME = 200


def validate_network_name(name: object) -> str:
    if not isinstance(name, str) or name == "":
        raise CNIError(Code.INVALID_NETWORK_CONFIG, 'missing network name: "name" is required')
    if not _NAME.match(name) or len(name) > MAX_NAME:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            "invalid characters found in network name",
            f"{name!r}: must start with a letter or digit, then letters, digits, '_', '.' or '-'",
        )
    return name


def validate_container_id(container_id: str) -> str:
    if container_id == "":
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, "missing containerID: CNI_CONTAINERID is empty")
    if not _NAME.match(container_id) or len(container_id) > MAX_NAME:
        raise CNIError(
            Code.INVALID_ENVIRONMENT_VARIABLES,
            "invalid characters in containerID",
            f"CNI_CONTAINERID {container_id!r}: must start with a letter or digit, then letters, digits, '_', '.' or '-'",
        )
    return container_id


def interface_name_problem(ifname: str) -> str | None:
    """Why `ifname` is not a valid Linux interface name, or None."""
    if ifname == "":
        return "interface name is empty"
    if not ifname.isprintable():  # first: text that was not UTF-8 (lone surrogates) cannot even be measured
        return f"interface name {ifname!r} contains unprintable characters"
    if len(ifname.encode()) > MAX_IFNAME:
        return f"interface name {ifname!r} is too long: at most {MAX_IFNAME} characters"
    if ifname in (".", ".."):
        return "interface name is . or .."
    if any(c in "/:" or c.isspace() for c in ifname):
        return f"interface name {ifname!r} contains '/', ':' or whitespace"
    return None


def validate_interface_name(ifname: str, what: str = "CNI_IFNAME") -> str:
    problem = interface_name_problem(ifname)
    if problem is not None:
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"{what}: {problem}")
    return ifname


def validate_plugin_type(plugin_type: object, what: str = "type") -> str:
    """A plugin type names an executable in CNI_PATH: never a path."""
    if not isinstance(plugin_type, str) or plugin_type == "":
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f'missing required key "{what}"')
    if "/" in plugin_type or "\\" in plugin_type or plugin_type in (".", "..") or "\0" in plugin_type:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f"invalid plugin {what} {plugin_type!r}: must be an executable name, not a path",
        )
    return plugin_type
