"""Calico's label selector language, as libcalico-go's tokenizer and parser read it.

    all()   global()   has(k)   !has(k)   k == "v"   k != "v"   k in {"a", "b"}   k not in {...}
    k contains "s"   k starts with "s"   k ends with "s"   !expr   a && b   a || b   ( ... )

Strings take single or double quotes; a label is letters, digits and `_ . / -`; `!` binds
to one term; `&&` binds tighter than `||`. An empty selector selects everything. `k != "v"`
and `k not in {...}` are true when `k` is absent; `contains`, `starts with`, `ends with`
need `k` present. `global()` is true of everything: it only has a meaning where libcalico-go
rewrites it (a rule's namespaceSelector, see `Selector.prefixed`).

A parsed `Selector` is callable on a label mapping, and `str()` gives libcalico-go's canonical
form (`String()`), which is what two selectors are compared by: calico-node keeps one set per
canonical selector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

Labels = Mapping[str, str]
Predicate = Callable[[Labels], bool]

MAX_LABEL_LENGTH = 512


class SelectorError(ValueError):
    pass


def _ident_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "_./-")


# -- tokens --------------------------------------------------------------------------------

_LABEL, _STRING, _OP, _HAS, _ALL, _GLOBAL, _EOF = "label", "string", "op", "has", "all", "global", "eof"


@dataclass(frozen=True)
class _Tok:
    kind: str
    value: str = ""


def _word(text: str, pos: int, *words: str) -> int:
    """The end of `words` (separated by blanks) at `pos` followed by a word boundary, or -1."""
    for word in words:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if not text.startswith(word, pos):
            return -1
        pos += len(word)
    if pos < len(text) and _ident_char(text[pos]):
        return -1
    return pos


def _identifier(text: str, pos: int) -> tuple[str, int]:
    end = pos
    while end < len(text) and _ident_char(text[end]):
        end += 1
    ident = text[pos:end]
    if not ident:
        raise SelectorError("expected identifier")
    if len(ident) > MAX_LABEL_LENGTH:
        raise SelectorError(f"label too long: {ident[:40]}...")
    return ident, end


def _call(text: str, pos: int, name: str) -> int:
    """`name(` then optional blanks and `)`: the end, or -1 when `name(` is not there."""
    if not text.startswith(name + "(", pos):
        return -1
    pos += len(name) + 1
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if not text.startswith(")", pos):
        raise SelectorError(f"no closing ')' after {name}(")
    return pos + 1


def tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text):
            toks.append(_Tok(_EOF))
            return toks
        c = text[pos]
        last = toks[-1].kind if toks else ""
        if c in "(){},":
            toks.append(_Tok(_OP, c))
            pos += 1
        elif c in "\"'":
            end = text.find(c, pos + 1)
            if end < 0:
                raise SelectorError("unterminated string")
            toks.append(_Tok(_STRING, text[pos + 1 : end]))
            pos = end + 1
        elif text.startswith("==", pos) or text.startswith("!=", pos) or text.startswith("&&", pos) or text.startswith("||", pos):
            toks.append(_Tok(_OP, text[pos : pos + 2]))
            pos += 2
        elif c == "!":
            toks.append(_Tok(_OP, "!"))
            pos += 1
        elif c in "=&|":
            raise SelectorError(f"expected {c * 2}")
        elif last == _LABEL:
            for words, op in ((("contains",), "contains"), (("starts", "with"), "starts with"),
                              (("ends", "with"), "ends with"), (("not", "in"), "not in"), (("in",), "in")):  # fmt: skip
                end = _word(text, pos, *words)
                if end >= 0:
                    toks.append(_Tok(_OP, op))
                    pos = end
                    break
            else:
                raise SelectorError(f"expected operator after label {toks[-1].value!r}")
        elif text.startswith("has(", pos):
            pos += 4
            while pos < len(text) and text[pos] in " \t":
                pos += 1
            ident, pos = _identifier(text, pos)
            while pos < len(text) and text[pos] in " \t":
                pos += 1
            if not text.startswith(")", pos):
                raise SelectorError("no closing ')' after has(")
            toks.append(_Tok(_HAS, ident))
            pos += 1
        elif (end := _call(text, pos, "all")) >= 0:
            toks.append(_Tok(_ALL))
            pos = end
        elif (end := _call(text, pos, "global")) >= 0:
            toks.append(_Tok(_GLOBAL))
            pos = end
        else:
            ident, pos = _identifier(text, pos)
            toks.append(_Tok(_LABEL, ident))


# -- the tree ------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


class Node:
    def evaluate(self, labels: Labels) -> bool:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def prefixed(self, prefix: str) -> Node:
        return self


@dataclass(frozen=True)
class All(Node):
    def evaluate(self, labels: Labels) -> bool:
        return True

    def text(self) -> str:
        return "all()"


@dataclass(frozen=True)
class Global(Node):
    def evaluate(self, labels: Labels) -> bool:
        return True

    def text(self) -> str:
        return "global()"


@dataclass(frozen=True)
class Has(Node):
    key: str

    def evaluate(self, labels: Labels) -> bool:
        return self.key in labels

    def text(self) -> str:
        return f"has({self.key})"

    def prefixed(self, prefix: str) -> Node:
        return Has(prefix + self.key)


@dataclass(frozen=True)
class Compare(Node):
    """`key op value`: op is ==, !=, contains, starts with, ends with."""

    key: str
    op: str
    value: str

    def evaluate(self, labels: Labels) -> bool:
        found = labels.get(self.key)
        if self.op == "!=":
            return found != self.value
        if found is None:
            return False
        if self.op == "==":
            return found == self.value
        if self.op == "contains":
            return self.value in found
        if self.op == "starts with":
            return found.startswith(self.value)
        return found.endswith(self.value)

    def text(self) -> str:
        return f"{self.key} {self.op} {_quote(self.value)}"

    def prefixed(self, prefix: str) -> Node:
        return Compare(prefix + self.key, self.op, self.value)


@dataclass(frozen=True)
class InSet(Node):
    key: str
    values: frozenset[str]
    negated: bool = False

    def evaluate(self, labels: Labels) -> bool:
        found = labels.get(self.key)
        if found is None:
            return self.negated
        return (found in self.values) != self.negated

    def text(self) -> str:
        # Calico's canonical form: values sorted, each quoted, `key in {"a", "b"}`.
        return f"{self.key} {'not in' if self.negated else 'in'} {{{', '.join(_quote(v) for v in sorted(self.values))}}}"

    def prefixed(self, prefix: str) -> Node:
        return InSet(prefix + self.key, self.values, self.negated)


@dataclass(frozen=True)
class Not(Node):
    operand: Node

    def evaluate(self, labels: Labels) -> bool:
        return not self.operand.evaluate(labels)

    def text(self) -> str:
        return "!" + self.operand.text()

    def prefixed(self, prefix: str) -> Node:
        return Not(self.operand.prefixed(prefix))


@dataclass(frozen=True)
class And(Node):
    operands: tuple[Node, ...]

    def evaluate(self, labels: Labels) -> bool:
        return all(op.evaluate(labels) for op in self.operands)

    def text(self) -> str:
        return "(" + " && ".join(op.text() for op in self.operands) + ")"

    def prefixed(self, prefix: str) -> Node:
        return And(tuple(op.prefixed(prefix) for op in self.operands))


@dataclass(frozen=True)
class Or(Node):
    operands: tuple[Node, ...]

    def evaluate(self, labels: Labels) -> bool:
        return any(op.evaluate(labels) for op in self.operands)

    def text(self) -> str:
        return "(" + " || ".join(op.text() for op in self.operands) + ")"

    def prefixed(self, prefix: str) -> Node:
        return Or(tuple(op.prefixed(prefix) for op in self.operands))


# -- the parser ----------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.pos = 0

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def next(self) -> _Tok:
        tok = self.toks[self.pos]
        if tok.kind != _EOF:
            self.pos += 1
        return tok

    def parse(self) -> Node:
        if self.peek().kind == _EOF:
            return All()
        node = self.or_expr()
        if self.peek().kind != _EOF:
            raise SelectorError(f"unexpected content at end of selector: {self.peek().value or self.peek().kind!r}")
        return node

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self.peek() == _Tok(_OP, "||"):
            self.next()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self) -> Node:
        parts = [self.operation()]
        while self.peek() == _Tok(_OP, "&&"):
            self.next()
            parts.append(self.operation())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def operation(self) -> Node:
        negated = False
        while self.peek() == _Tok(_OP, "!"):
            self.next()
            negated = not negated
        tok = self.next()
        node: Node
        if tok.kind == _HAS:
            node = Has(tok.value)
        elif tok.kind == _ALL:
            node = All()
        elif tok.kind == _GLOBAL:
            node = Global()
        elif tok == _Tok(_OP, "("):
            node = self.or_expr()
            if self.next() != _Tok(_OP, ")"):
                raise SelectorError("expected )")
        elif tok.kind == _LABEL:
            node = self.comparison(tok.value)
        elif tok.kind == _EOF:
            raise SelectorError("unexpected end of string looking for op")
        else:
            raise SelectorError(f"unexpected token: {tok.value or tok.kind!r}")
        return Not(node) if negated else node

    def comparison(self, key: str) -> Node:
        op = self.next()
        if op.kind != _OP or op.value not in ("==", "!=", "contains", "starts with", "ends with", "in", "not in"):
            raise SelectorError(f"expected == or != not: {op.value or op.kind!r}")
        if op.value in ("in", "not in"):
            if self.next() != _Tok(_OP, "{"):
                raise SelectorError("expected set literal")
            values: set[str] = set()
            while self.peek().kind == _STRING:
                values.add(self.next().value)
                if self.peek() != _Tok(_OP, ","):
                    break
                self.next()
            if self.next() != _Tok(_OP, "}"):
                raise SelectorError("expected }")
            return InSet(key, frozenset(values), op.value == "not in")
        value = self.next()
        if value.kind != _STRING:
            raise SelectorError("expected string")
        return Compare(key, op.value, value.value)


class Selector:
    """A parsed selector: callable on labels; `str()` is the canonical form."""

    __slots__ = ("__weakref__", "_text", "root")

    def __init__(self, root: Node) -> None:
        self.root = root
        self._text = root.text()

    def __call__(self, labels: Labels) -> bool:
        return self.root.evaluate(labels)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Selector({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)

    def prefixed(self, prefix: str) -> Selector:
        """Every label name with `prefix` (libcalico-go's PrefixVisitor: `pcns.` for namespaceSelector)."""
        return Selector(self.root.prefixed(prefix))

    def uses_global(self) -> bool:
        return "global()" in self._text


def parse(text: str) -> Selector:
    """The selector; SelectorError naming what is wrong when it does not parse."""
    try:
        return Selector(_Parser(text).parse())
    except SelectorError as exc:
        raise SelectorError(f"invalid selector {text!r}: {exc}") from None


def matches(text: str, labels: Labels) -> bool:
    return parse(text)(labels)


ALL = Selector(All())
