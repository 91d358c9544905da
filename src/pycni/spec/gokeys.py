"""Object keys read as Go's encoding/json reads them into a struct.

The reference plugins, libcni and Calico decode their configuration (and results,
``runtimeConfig``, ``args``, IPAM sections) into Go structs. encoding/json matches each
key of a JSON object to a struct field by its name, an exact match first and otherwise
case-insensitively (``bytes.EqualFold``), and unknown keys are ignored. Clients rely
on it: containerd 1.6 passes ``{"portMappings": [{"HostPort": 8080, ...}]}`` and
``{"bandwidth": {"IngressRate": ...}}``, the reference's test data
``"runtimeConfig": {"bandWidth": ...}``. Every configuration reader of pycni goes
through this module (`pycni.spec.config.Fields`, the result parsers), so they all read
keys the same way; a map-typed section (``capabilities``, tuning's ``sysctl``) keeps
its keys verbatim, since Go keeps a map's keys as they are.

When several keys of one object match the same field, the last one in the document wins,
as in Go; a ``null`` does not replace a value already read (Go leaves a non-pointer field
unchanged on ``null``). The parsers (`pycni.spec.jsonfmt.loads_object`) keep the document
order of repeated keys for this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# The only non-ASCII characters that bytes.EqualFold folds onto ASCII letters: the long s
# (U+017F, onto s/S) and the Kelvin sign (U+212A, onto k/K). Any other non-ASCII character
# can never match a field name, which are all ASCII.
_SPECIAL_FOLDS = {"\u017f": "S", "\u212a": "K"}


def fold(name: str) -> str:
    """The key's fold: two names match case-insensitively in Go when their folds are equal."""
    if name.isascii():
        return name.upper()
    return "".join(_SPECIAL_FOLDS.get(ch, ch.upper() if ch.isascii() else ch) for ch in name)


def find_key(data: Mapping[str, Any], field: str) -> str | None:
    """The key of `data` Go decodes into the struct field named `field` (the last matching
    key with a value that is not null), or None when there is none."""
    wanted = fold(field)
    found = None
    for key, value in data.items():
        if value is not None and (key == field or fold(key) == wanted):
            found = key
    return found


def get(data: Mapping[str, Any], field: str, default: Any = None) -> Any:
    """The value Go decodes into the struct field `field` (`default` when absent or null)."""
    key = find_key(data, field)
    return default if key is None else data[key]


def has(data: Mapping[str, Any], field: str) -> bool:
    """Whether some key of `data` sets the struct field `field` (not absent, not null)."""
    return find_key(data, field) is not None


def mentions(data: Mapping[str, Any], field: str) -> bool:
    """Whether some key of `data` names the struct field `field`, even with a null value (Go
    allocates an embedded pointer struct for any key of it it meets)."""
    wanted = fold(field)
    return any(key == field or fold(key) == wanted for key in data)


def normalise(data: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """`data` with each key that matches one of a struct's `fields` renamed to that field
    (an exact match first, as Go chooses between fields); other keys are kept as they are.

    With the whole struct known this is Go's rule exactly, also for structs with two field
    names that differ only in case."""
    names = list(fields)
    exact = set(names)
    by_fold: dict[str, str] = {}
    for name in names:
        by_fold.setdefault(fold(name), name)  # Go takes the first field in declaration order
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key if key in exact else by_fold.get(fold(key), key)
        if value is None and out.get(name) is not None:
            continue
        out.pop(name, None)
        out[name] = value
    return out
