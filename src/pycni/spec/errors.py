"""The CNI error object and its well-known codes."""

from __future__ import annotations

import enum
from typing import Any


class Code(enum.IntEnum):
    """Error codes 0-99 are reserved by the spec; 100+ are plugin specific."""

    INCOMPATIBLE_CNI_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT_VARIABLES = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    TRY_AGAIN_LATER = 11
    PLUGIN_NOT_AVAILABLE = 50
    PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY = 51
    # pycni's own codes (100+), shared by every plugin.
    KERNEL = 100  # the kernel refused a netlink, nftables, tc or sysctl operation
    KERNEL_UNSUPPORTED = 101  # this kernel lacks a feature (a link type, a classifier, ...)
    CONFLICT = 102  # a resource is already in use (interface, address, host port, route)
    EXHAUSTED = 103  # nothing left to allocate (addresses, blocks)
    INTERNAL = 999  # an unexpected exception: libcni's ErrInternal


class CNIError(Exception):
    """A failure that is reported to the runtime as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        # libcni's types.Error.Error(): "msg; details" when details exist.
        if self.details:
            return f"{self.msg}; {self.details}"
        return self.msg

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CNIError:
        if not isinstance(data, dict):
            raise ValueError("not a CNI error object")
        code = data.get("code")
        msg = data.get("msg")
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(msg, str):
            raise ValueError("not a CNI error object")
        details = data.get("details", "")
        return cls(code, msg, details if isinstance(details, str) else str(details))


def invalid_config(msg: str, details: str = "") -> CNIError:
    return CNIError(Code.INVALID_NETWORK_CONFIG, msg, details)


def missing_key(key: str, where: str = "network configuration") -> CNIError:
    return CNIError(Code.INVALID_NETWORK_CONFIG, f'missing required key "{key}" in {where}')
