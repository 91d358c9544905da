"""JSON encoded as Go's encoding/json does, so printed results match the reference byte for byte.

Go escapes <, > and & (HTML safety) and U+2028/U+2029, writes other non-ASCII as is,
and ``MarshalIndent(v, "", "    ")`` indents with four spaces and no trailing newline.
Text that was not UTF-8 (an environment variable's undecodable bytes, which Python keeps
as lone surrogates) becomes U+FFFD, as Go writes invalid UTF-8: the output always encodes.
"""

from __future__ import annotations

import json
import re
from typing import Any

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _go_escape(text: str) -> str:
    text = _SURROGATE.sub("\ufffd", text)
    if not any(ch in text for ch in _GO_ESCAPES):
        return text
    return "".join(_GO_ESCAPES.get(ch, ch) for ch in text)


def dumps(obj: Any) -> str:
    """Compact, as json.Marshal."""
    return _go_escape(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def dumps_indent(obj: Any) -> str:
    """Indented, as json.MarshalIndent(v, "", "    ") (what plugins and cnitool print)."""
    return _go_escape(json.dumps(obj, ensure_ascii=False, indent=4))


def _pairs_in_order(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose repeated key sits where it last appeared (json.loads keeps the first
    place and the last value), so a later case variant of a key still comes after it, as
    Go reads the document (`pycni.spec.gokeys`)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.pop(key, None)
        out[key] = value
    return out


def loads_object(data: bytes | str, what: str) -> dict[str, Any]:
    """Parse a JSON object; code 6 naming `what` when it is not one."""
    from pycni.spec.errors import CNIError, Code

    try:
        value = json.loads(data, object_pairs_hook=_pairs_in_order)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(Code.DECODING_FAILURE, f"error parsing {what}: {exc}") from None
    except RecursionError:
        raise CNIError(Code.DECODING_FAILURE, f"error parsing {what}: nested too deeply") from None
    if not isinstance(value, dict):
        raise CNIError(Code.DECODING_FAILURE, f"error parsing {what}: expected a JSON object, got {type(value).__name__}")
    return value
