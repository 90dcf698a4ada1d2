"""Translation by shape. Grafana sends the same statement on every refresh with new time literals, so
a cache keyed by the exact text never hits; this one is keyed by the text with its varying literals
replaced by markers.

* ``lex``: a request's plain literals — strings without quotes, backslashes or control characters,
  unsigned decimal numbers — and its skeleton, the text with each of them as a marker of its kind.
  None when the text has comments, escapes, stray quotes or NUL (only the exact text is cached then).
* ``Lifter``: handed to the translator. A literal becomes a parameter (``tags.Param``) when it is one
  of the lexed literals (same span, kind and value in the parsed tree), it lies in WHERE or HAVING,
  and the translator renders it where it only copies it: a comparison of ``time``, of a metric or
  stored column, or of a tag compared as is (translate.LIFTABLE_OPS). Everything else — resource
  names (id-set subqueries on the name), IPs, Enum names, LIKE patterns, ``time()`` and function
  arguments, LIMIT, k8s label keys, output names — stays in the key with its exact text.
* ``Template``: the translated SQL with a marker per parameter; ``render`` writes a request's values
  as ClickHouse literals (``tags.literal``), never as raw text. When the WHERE time range sized an
  aggregate (Avg of a counter, PerSecond, Time_interval), the template keeps that range's recipe and
  fits only the requests whose range gives the same number of seconds.

Why one template serves every request of its key: two requests with the same skeleton and the same
fixed literals differ only inside the lifted literals, which were whole tokens of the parsed tree and
hold no quote or escape, so sqlglot reads both requests as the same tokens; and the translator never
looks at a lifted value: it reaches the SQL only as ``literal(convert(value))``, which ``render``
repeats with the new value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from sqlglot import exp

from datasource.dialect.safety import check_literal
from datasource.dialect.tags import Param, literal
from datasource.dialect.translate import _evaluate, fold_range, range_seconds

# Every branch starts with a known character (the number's lookbehind comes after its first digit),
# so the regex engine skips the text between tokens quickly: ~20% less time than a leading lookbehind.
_LEX = re.compile(r"""
    (?P<name>`[^`\\\x00]*`)                                     # quoted names: part of the skeleton
  | (?P<string>(?:'[^'"\\\x00-\x1f\x7f]*'|"[^'"\\\x00-\x1f\x7f]*")(?!['"]))
  | (?P<number>\d(?<![\w.$]\d)\d*(?:\.\d+)?(?![\w.$]))           # not inside a name: 1m, x1, $1, t.1
  | (?P<stop>['"`\\\#\x00]|--|/\*)                             # anything the lexer does not read exactly
""", re.X)
_MARKERS = {"string": "\x00s", "number": "\x00n"}
_SLOT = re.compile(r"\x00(\d+)\x00")


class Literal(NamedTuple):
    """A lexed literal (a tuple: ~4x cheaper to make than a frozen dataclass, and a dashboard query
    has a dozen of them on every refresh)."""

    start: int
    end: int                      # exclusive
    string: bool
    text: str                     # as written, quotes included

    def value(self):
        """The literal's value as the translator reads it from the parsed tree (translate._literal of
        the Literal node sqlglot makes of it; computed here without building the node)."""
        if self.string:
            return self.text[1:-1]
        return int(self.text) if self.text.isdigit() else float(self.text)

    def evaluated(self):
        """translate._evaluate of the same node, likewise."""
        try:
            v = float(self.text[1:-1] if self.string else self.text)
        except ValueError:
            return None
        return int(v) if v == int(v) else v


@dataclass(frozen=True)
class Shape:
    skeleton: str
    literals: tuple[Literal, ...]

    def fixed(self, lifted: tuple[int, ...]) -> tuple[str, ...]:
        """The text of every literal a template keeps as written."""
        return tuple(lit.text for i, lit in enumerate(self.literals) if i not in lifted)


def lex(sql: str) -> Shape | None:
    parts, literals, pos = [], [], 0
    for m in _LEX.finditer(sql):
        kind = m.lastgroup
        if kind == "stop":
            return None
        if kind == "name":
            continue
        parts += [sql[pos:m.start()], _MARKERS[kind]]
        literals.append(Literal(m.start(), m.end(), kind == "string", m.group()))
        pos = m.end()
    parts.append(sql[pos:])
    return Shape("".join(parts), tuple(literals))


def _convert(lit: Literal, convert: tuple):
    fn, *args = convert
    return fn(lit.value(), *args)


@dataclass(frozen=True)
class Template:
    """Translated SQL with markers (``\\x00<slot>\\x00``) where the lifted literals go."""

    text: str
    lifted: tuple[int, ...]               # indices of the shape's literals that are parameters
    slots: tuple[tuple[int, tuple], ...]  # per marker: (literal index, converter (function, *args))
    # the time range's bounds (lower?, strict?, literal index or None, value when fixed), the datasource
    # interval and the seconds they gave — when the range sized an aggregate
    window: tuple[tuple[tuple[bool, bool, int | None, object], ...], int, float] | None
    schemas: list[dict]
    # time(…, fill): (bucket column, interval, offset, fill value, the time range's bounds as above)
    fill: tuple[str, int, int, str, tuple[tuple[bool, bool, int | None, object], ...]] | None = None

    def fits(self, literals: tuple[Literal, ...]) -> bool:
        if self.window is None:
            return True
        terms, ds, seconds = self.window
        return range_seconds(_range(terms, literals), ds) == seconds

    def fill_for(self, literals: tuple[Literal, ...]) -> tuple | None:
        """The request's time fill: (column, interval, offset, value, start, end)."""
        if self.fill is None:
            return None
        name, interval, offset, value, terms = self.fill
        return (name, interval, offset, value, *_range(terms, literals))

    def render(self, literals: tuple[Literal, ...]) -> str:
        """The SQL for a request's literals; each value is checked to be one literal token."""
        values = [check_literal(literal(_convert(literals[i], convert))) for i, convert in self.slots]
        return _SLOT.sub(lambda m: values[int(m[1])], self.text)


class Lifter:
    """Decides, for one translation, which literals become parameters (see the module's docstring)."""

    def __init__(self, tree: exp.Expression, shape: Shape) -> None:
        self.shape = shape
        self.candidates: dict[int, int] = {}      # id(literal node) → index in shape.literals
        by_start = {lit.start: i for i, lit in enumerate(shape.literals)}
        for clause in ("where", "having"):
            node = tree.args.get(clause)
            if node is None:
                continue
            for lit in node.find_all(exp.Literal):
                i = by_start.get(lit.meta.get("start"))
                if i is None:
                    continue
                mine = shape.literals[i]
                value = mine.text[1:-1] if mine.string else mine.text
                if lit.meta.get("end") == mine.end - 1 and lit.is_string == mine.string and lit.this == value:
                    self.candidates[id(lit)] = i
        self.slots: list[tuple[int, tuple]] = []
        self.params: list[Param] = []

    def lift(self, node: exp.Expression, value, convert: tuple):
        """``value`` (``convert`` applied to the literal's value), or a Param standing for it."""
        i = self.candidates.get(id(node))
        if i is None:
            return value
        param = Param(len(self.slots), value)
        self.slots.append((i, convert))
        self.params.append(param)
        return param

    def render(self, text: str) -> str:
        """The SQL of this request: its own values in the markers."""
        return _SLOT.sub(lambda m: literal(self.params[int(m[1])].value), text) if self.params else text

    def template(self, text: str, window, schemas: list[dict], fill=None) -> Template | None:
        """The template of this translation, or None when nothing was lifted or the time range that
        sized an aggregate (or bounds a time fill) cannot be recomputed from the literals."""
        if not self.slots:
            return None
        lifted = tuple(sorted({i for i, _ in self.slots}))
        recipe = fill_recipe = None
        if window is not None:
            terms = self._bounds(window[0], lifted)
            if terms is None:
                return None
            recipe = (terms, window[1], window[2])
        if fill is not None:
            terms = self._bounds(fill[4], lifted)
            if terms is None:
                return None
            fill_recipe = (*fill[:4], terms)
        return Template(text, lifted, tuple(self.slots), recipe, schemas, fill_recipe)

    def _bounds(self, nodes, lifted: tuple[int, ...]) -> tuple | None:
        """Time-range comparisons → (lower?, strict?, literal index or None, value when fixed), or None
        when a bound mixes a lifted literal into an expression."""
        terms = []
        for lower, strict, node in nodes:
            bound = node
            while isinstance(bound, exp.Paren):
                bound = bound.this
            i = self.candidates.get(id(bound))
            if i is not None and i in lifted:
                terms.append((lower, strict, i, None))
            elif any(self.candidates.get(id(n)) in lifted for n in node.find_all(exp.Literal)):
                return None
            else:
                terms.append((lower, strict, None, _evaluate(node)))
        return tuple(terms)


def _range(terms, literals: tuple[Literal, ...]) -> tuple[float | None, float | None]:
    """A template's time range for a request's literals."""
    return fold_range([(lower, strict, literals[i].evaluated() if i is not None else v)
                       for lower, strict, i, v in terms])
