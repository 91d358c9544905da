"""CNI specification versions: parsing, comparison and selection."""

from __future__ import annotations

import re

from pycni.spec.errors import CNIError, Code

# Every version of the spec pycni speaks, oldest first.
ALL_VERSIONS: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"

# libcni treats a configuration without cniVersion as 0.1.0.
IMPLICIT_VERSION = "0.1.0"

_SEMVER = re.compile(r"^([0-9]+)\.([0-9]+)\.([0-9]+)\Z")


def parse(version: str) -> tuple[int, int, int]:
    """Return (major, minor, patch); code 6 for anything that is not X.Y.Z."""
    m = _SEMVER.match(version) if isinstance(version, str) else None
    if m is None:
        raise CNIError(Code.DECODING_FAILURE, f"invalid version {version!r}: expected MAJOR.MINOR.PATCH")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def greater(a: str, b: str) -> bool:
    return parse(a) > parse(b)


def is_supported(version: str, supported: tuple[str, ...] = ALL_VERSIONS) -> bool:
    return version in supported


def require_supported(version: str, supported: tuple[str, ...] = ALL_VERSIONS) -> None:
    """Code 1 with the supported list when `version` is not one we speak."""
    if version not in supported:
        listed = ", ".join(supported)
        raise CNIError(
            Code.INCOMPATIBLE_CNI_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports [{listed}]',
        )


def select(cni_version: str, cni_versions: list[str] | None) -> str:
    """The version a runtime uses for a list: the highest of `cniVersion` and
    `cniVersions`, ignoring versions newer than this implementation (as libcni does)."""
    if cni_versions is None:
        return cni_version
    candidates = [v for v in cni_versions if not greater(v, CURRENT)]
    if cni_version and not greater(cni_version, CURRENT):
        candidates.append(cni_version)
    if not candidates:
        return cni_version
    return max(candidates, key=parse)
