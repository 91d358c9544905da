"""Calico's label selector language (the subset pools' nodeSelector uses).

    all()   has(k)   !has(k)   k == "v"   k != "v"   k in {"a", "b"}   k not in {...}
    k contains "s"   k starts with "s"   k ends with "s"   !expr   a && b   a || b   ( ... )

An empty selector selects everything, as in Calico.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Labels = Mapping[str, str]
Predicate = Callable[[Labels], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>&&|\|\||==|!=|!|\(|\)|\{|\}|,)
      | (?P<str>"[^"]*"|'[^']*')
      | (?P<word>[A-Za-z0-9_./\-]+(?:\(\))?)
    )""",
    re.VERBOSE,
)


class SelectorError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise SelectorError(f"invalid selector {text!r} at {text[pos:]!r}")
        out.append(match.group(match.lastgroup or "word"))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.pos = 0

    def peek(self, ahead: int = 0) -> str:
        i = self.pos + ahead
        return self.toks[i] if i < len(self.toks) else ""

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok == "" or (expected is not None and tok != expected):
            raise SelectorError(f"invalid selector {self.text!r}: expected {expected or 'more'}, got {tok or 'the end'}")
        self.pos += 1
        return tok

    def parse(self) -> Predicate:
        if not self.toks:
            return lambda labels: True
        pred = self.or_expr()
        if self.pos != len(self.toks):
            raise SelectorError(f"invalid selector {self.text!r}: unexpected {self.peek()!r}")
        return pred

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.peek() == "||":
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda labels: any(p(labels) for p in parts))

    def and_expr(self) -> Predicate:
        parts = [self.unary()]
        while self.peek() == "&&":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda labels: all(p(labels) for p in parts))

    def unary(self) -> Predicate:
        tok = self.peek()
        if tok == "!":
            self.take()
            inner = self.unary()
            return lambda labels: not inner(labels)
        if tok == "(":
            self.take()
            inner = self.or_expr()
            self.take(")")
            return inner
        if tok == "all()":
            self.take()
            return lambda labels: True
        if tok == "has":
            self.take()
            self.take("(")
            key = self.take()
            self.take(")")
            return lambda labels: key in labels
        if tok.endswith("()"):
            raise SelectorError(f"invalid selector {self.text!r}: unknown function {tok}")
        return self.comparison()

    def string(self) -> str:
        tok = self.take()
        if len(tok) < 2 or tok[0] not in "\"'" or tok[-1] != tok[0]:
            raise SelectorError(f"invalid selector {self.text!r}: expected a quoted string, got {tok!r}")
        return tok[1:-1]

    def string_set(self) -> set[str]:
        self.take("{")
        values: set[str] = set()
        while self.peek() != "}":
            values.add(self.string())
            if self.peek() == ",":
                self.take()
        self.take("}")
        return values

    def comparison(self) -> Predicate:
        key = self.take()
        op = self.take()
        if op == "==":
            value = self.string()
            return lambda labels: labels.get(key) == value
        if op == "!=":
            value = self.string()
            return lambda labels: labels.get(key) != value
        if op == "in":
            values = self.string_set()
            return lambda labels: labels.get(key) in values
        if op == "not" and self.peek() == "in":
            self.take()
            values = self.string_set()
            return lambda labels: labels.get(key) not in values
        if op == "contains":
            value = self.string()
            return lambda labels: key in labels and value in labels[key]
        if op in ("starts", "ends") and self.peek() == "with":
            self.take()
            value = self.string()
            if op == "starts":
                return lambda labels: key in labels and labels[key].startswith(value)
            return lambda labels: key in labels and labels[key].endswith(value)
        raise SelectorError(f"invalid selector {self.text!r}: unknown operator {op!r}")


def parse(text: str) -> Predicate:
    """A predicate over labels; SelectorError naming the selector when it does not parse."""
    return _Parser(text).parse()


def matches(text: str, labels: Labels) -> bool:
    return parse(text)(labels)
