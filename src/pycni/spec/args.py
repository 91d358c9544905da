"""CNI_ARGS: ``K=V;K2=V2`` pairs passed to every plugin of a chain.

libcni's LoadArgs fails on a key the plugin does not know unless the pairs include
``IgnoreUnknown=1`` (or ``true``); we keep that rule for the keys a plugin declares.
"""

from __future__ import annotations

from collections.abc import Iterable

from pycni.spec.errors import CNIError, Code


def parse(cni_args: str) -> list[tuple[str, str]]:
    """Split CNI_ARGS into ordered pairs; code 4 naming the bad pair."""
    if cni_args == "":
        return []
    pairs: list[tuple[str, str]] = []
    for item in cni_args.split(";"):
        if item == "":
            continue
        key, sep, value = item.partition("=")
        if not sep or key == "" or "=" in value:
            raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"CNI_ARGS: invalid pair {item!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return pairs


def ignore_unknown(pairs: Iterable[tuple[str, str]]) -> bool:
    for key, value in pairs:
        if key == "IgnoreUnknown":
            return value.lower() in ("1", "true")
    return False


def load(cni_args: str, known: Iterable[str]) -> dict[str, str]:
    """The pairs as a dict, refusing keys outside `known` unless IgnoreUnknown is set."""
    pairs = parse(cni_args)
    allowed = set(known) | {"IgnoreUnknown"}
    if not ignore_unknown(pairs):
        unknown = [k for k, _ in pairs if k not in allowed]
        if unknown:
            raise CNIError(
                Code.INVALID_ENVIRONMENT_VARIABLES,
                f"CNI_ARGS: unknown key {unknown[0]!r}",
                "known keys: " + ", ".join(sorted(allowed)) + "; add IgnoreUnknown=1 to skip unknown keys",
            )
    return dict(pairs)


def format_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs)
