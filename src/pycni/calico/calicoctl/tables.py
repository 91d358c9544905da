"""The two table styles calicoctl prints.

- `ps_table`: `calicoctl get` output, Go's text/tabwriter with calicoctl's settings
  (minwidth 5, padding 3, every cell tab-terminated, so every column is padded and
  lines end in spaces), followed by a blank line;
- `boxed_table`: `calicoctl ipam show`, olekukonko/tablewriter's default style
  (borders, centred upper-case headers, numbers aligned right).
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"^-?(?:\d{1,3}(?:,\d{3})*|\d+)(?:\.\d+)?$")
_PERCENT = re.compile(r"^-?\d+\.?\d*%$")


def ps_table(headings: list[str], rows: list[list[str]], minwidth: int = 5, padding: int = 3) -> str:
    lines = [headings, *rows]
    widths = [max(minwidth, max(len(line[i]) for line in lines) + padding) for i in range(len(headings))]
    out = ["".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) for line in lines]
    return "\n".join(out) + "\n\n"


def _align(cell: str, width: int) -> str:
    if _NUMBER.match(cell) or _PERCENT.match(cell):
        return cell.rjust(width)
    return cell.ljust(width)


def _center(cell: str, width: int) -> str:
    gap = width - len(cell)
    left = gap // 2
    return " " * left + cell + " " * (gap - left)


def boxed_table(headings: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headings)]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [border, "| " + " | ".join(_center(h.upper(), w) for h, w in zip(headings, widths, strict=True)) + " |", border]
    lines += ["| " + " | ".join(_align(c, w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.append(border)
    return "\n".join(lines) + "\n"
