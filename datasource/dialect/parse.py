"""DeepFlow SQL as a sqlglot dialect: MySQL's tokens, no function knowledge, plus SHOW and SLIMIT.

DeepFlow's querier parses with a MySQL grammar but keeps function names as written (``Sum`` is an
aggregate, ``sum`` is not), so this parser has an empty function table: every call is an
``exp.Anonymous`` that keeps its name and source position. DeepFlow additions:

* ``SLIMIT n`` and ``SORDER BY m`` are query modifiers (top-n series). They borrow the token types
  of Hive's ``DISTRIBUTE BY`` and ``SORT BY``, which this dialect does not otherwise accept.
* ``SHOW …`` is a small grammar of its own (``DeepFlowShow``): ``databases``, ``tables``,
  ``language``, ``tags``, ``metrics``, ``metrics functions``, ``tag X values``, ``enum X values``,
  ``all_enum_tags``, each with optional ``FROM t``, ``WHERE``, ``ORDER BY``, ``LIMIT`` and ``OFFSET``.

Errors come back as ``DialectError`` naming the position (1-based character offset) and the
token, the way DeepFlow's ``syntax error at position 38 near 'show'`` does.
"""

from __future__ import annotations

from typing import ClassVar

import sqlglot
from sqlglot import exp, generator, parser
from sqlglot.dialects.dialect import Dialect, NormalizationStrategy
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from datasource.dialect.errors import DialectError

SHOW_KINDS = ("databases", "tables", "language", "tags", "metrics", "tag", "enum", "all_enum_tags")


class DeepFlowShow(exp.Expression):
    """``SHOW <kind> [name VALUES] [FROM table] [WHERE …] [ORDER BY …] [LIMIT …] [OFFSET …]``."""

    arg_types: ClassVar[dict] = {"this": True, "name": False, "functions": False, "table": False, "where": False,
                 "order": False, "limit": False, "offset": False}


def _parse_show(self: DeepFlowParser) -> DeepFlowShow:
    start = self._curr
    kind = self._curr.text.lower() if self._curr else ""
    if kind not in SHOW_KINDS:
        self.raise_error(f"not support sql: show {kind}, please check", start)
    self._advance()
    show = DeepFlowShow(this=kind)
    if kind == "metrics" and self._match_text_seq("FUNCTIONS"):
        show.set("functions", True)
    if kind in ("tag", "enum"):
        token = self._curr
        name = self._parse_id_var(any_token=True)
        if name is None or not self._match_text_seq("VALUES"):
            self.raise_error(f"expected: show {kind} <name> values", self._curr or start)
        show.set("name", exp.to_identifier(name.name).update_positions(token))
    if self._match(TokenType.FROM):
        table = self._parse_table_parts()
        show.set("table", table)
    show.set("where", self._parse_where())
    show.set("order", self._parse_order())
    limit = self._parse_limit()
    if limit is not None:
        if limit.args.get("offset") is not None:     # LIMIT m, n
            show.set("offset", limit.args["offset"])
            limit.set("offset", None)
        show.set("limit", limit)
    offset = self._parse_offset()
    if offset is not None:
        show.set("offset", offset.expression)
    return show


class DeepFlowTokenizer(MySQL.Tokenizer):
    KEYWORDS: ClassVar[dict] = {k: v for k, v in MySQL.Tokenizer.KEYWORDS.items()
                if k not in ("SORT BY", "DISTRIBUTE BY", "CLUSTER BY", "SETTINGS", "FORMAT")}
    KEYWORDS["SLIMIT"] = TokenType.DISTRIBUTE_BY
    KEYWORDS["SORDER BY"] = TokenType.SORT_BY
    COMMANDS = MySQL.Tokenizer.COMMANDS - {TokenType.SHOW}


class DeepFlowParser(parser.Parser):
    # Every function call stays an Anonymous node with the name as written.
    FUNCTIONS: ClassVar[dict] = {}
    FUNCTION_PARSERS: ClassVar[dict] = {}
    NO_PAREN_FUNCTION_PARSERS: ClassVar[dict] = {}
    STATEMENT_PARSERS: ClassVar[dict] = {**parser.Parser.STATEMENT_PARSERS, TokenType.SHOW: _parse_show}
    QUERY_MODIFIER_PARSERS: ClassVar[dict] = {
        **{k: v for k, v in parser.Parser.QUERY_MODIFIER_PARSERS.items()
           if k not in (TokenType.CLUSTER_BY, TokenType.CONNECT_BY, TokenType.MATCH_RECOGNIZE)},
        TokenType.DISTRIBUTE_BY: lambda self: ("slimit", self._parse_slimit()),
        TokenType.SORT_BY: lambda self: ("sorder", self._parse_sort(exp.Order, TokenType.SORT_BY)),
    }
    QUERY_MODIFIER_TOKENS: ClassVar[set] = set(QUERY_MODIFIER_PARSERS)

    def _parse_slimit(self) -> exp.Expression | None:
        self._match(TokenType.DISTRIBUTE_BY)
        number = self._parse_number()
        if number is None:
            self.raise_error("expected a number after SLIMIT")
        return number


class DeepFlowGenerator(generator.Generator):
    """Renders DeepFlow SQL back as text: the default column name of an expression."""

    TRANSFORMS: ClassVar[dict] = {
        **generator.Generator.TRANSFORMS,
        exp.If: lambda self, e: self.func("if", e.this, e.args.get("true"), e.args.get("false")),
    }


class DeepFlow(Dialect):
    NORMALIZATION_STRATEGY = NormalizationStrategy.CASE_SENSITIVE
    Tokenizer = DeepFlowTokenizer
    Parser = DeepFlowParser
    Generator = DeepFlowGenerator


class _NamesUnquoted(DeepFlowGenerator):
    def identifier_sql(self, expression: exp.Identifier) -> str:
        if expression.quoted:
            expression = exp.Identifier(this=expression.this)
        return super().identifier_sql(expression)


class DeepFlowText(DeepFlow):
    """DeepFlow SQL as DeepFlow names a column after it: identifiers without their quotes."""

    Generator = _NamesUnquoted


def text(node: exp.Expression) -> str:
    """DeepFlow's text of an expression (its default column name): names as written, identifiers
    without their quotes (`` Sum(`byte`) `` is named ``Sum(byte)``)."""
    if isinstance(node, exp.Column) and not node.table:
        return node.name
    return node.sql(dialect=DeepFlowText, normalize_functions=False)


def parse(sql: str) -> exp.Expression:
    """One DeepFlow statement (SELECT or SHOW) → its tree; DialectError names the position."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=DeepFlow) if s is not None]
    except ParseError as e:
        raise _syntax_error(sql, e) from None
    except TokenError as e:
        raise DialectError(f"syntax error: {e}") from None
    if not statements:
        raise DialectError("empty sql", status=400)
    if len(statements) != 1:
        raise DialectError(f"one statement per request, got {len(statements)}", status=400)
    return _normalize(statements[0])


def _normalize(tree: exp.Expression) -> exp.Expression:
    """``a NOT LIKE b`` parses as Like(negate=True); the translator only knows NOT(…)."""
    for node in list(tree.find_all(exp.Like, exp.ILike)):
        if node.args.get("negate"):
            node.set("negate", None)
            node.replace(exp.Not(this=node.copy()))
    return tree


def _syntax_error(sql: str, e: ParseError) -> DialectError:
    err = e.errors[0] if e.errors else {}
    line, col, near = err.get("line"), err.get("col"), err.get("highlight") or ""
    if not line or not col:
        return DialectError(f"syntax error: {err.get('description') or e}")
    lines = sql.split("\n")
    offset = sum(len(x) + 1 for x in lines[: line - 1]) + col - len(near) + 1
    description = (err.get("description") or "invalid syntax").split(" but got <Token")[0]
    return DialectError(f"syntax error at position {max(offset, 1)} near '{near}': {description}")


def position(node: exp.Expression) -> int | None:
    """1-based character offset of a node in the request's SQL, when the parser recorded one."""
    for n in (node, *node.find_all(exp.Identifier, exp.Anonymous, exp.Literal)):
        start = n.meta.get("start") if n._meta else None
        if start is not None:
            return start + 1
    return None


def where(node: exp.Expression) -> str:
    """`` at position N`` for error messages (empty when the position is unknown)."""
    pos = position(node)
    return f" at position {pos}" if pos is not None else ""


