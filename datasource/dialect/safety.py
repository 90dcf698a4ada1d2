"""The last step of every SELECT translation: the generated ClickHouse SQL is checked before it may
run — one SELECT over flowscope's own tables and dictionaries (dictGet names included), no table
functions, comma joins, SETTINGS, FORMAT, INTO OUTFILE, comments or file/network functions: the
refusals of ``datasource.guard``.

The translator writes its SQL as text: the catalogue's expressions, quoted names (``ident``) and
quoted literals (``tags.literal``). The check reads that text as ClickHouse's lexer does: it blanks
out the quoted strings and names (backslash escapes and '' included), refuses anything outside them
that the translator never writes (`;`, comments, `#`, `$`, `?`, braces, stray quotes, non-ASCII
characters…), then looks at what follows every FROM, IN and function name in what is left. That
costs a few regular-expression scans; re-parsing the SQL with sqlglot (the guard) cost several times
the translation itself. Tests still run the guard over translated queries. SHOW statements build
free-form SQL from the catalogue, are not on Grafana's refresh path and keep the guard (``finalize``).

``qualify`` fixes one ClickHouse scoping rule: a SELECT alias shadows a column of the same name in
the whole query, so ``Sum(request) AS request`` next to ``Avg(timeout_ratio)`` (timeout / request)
would nest aggregates. When an output name equals a stored column, the column references of that
query level are qualified with the table (``flow_metrics."application.1m".request``).
"""

from __future__ import annotations

import re
import string

from datasource.dialect.errors import DialectError
from datasource.guard import (
    DICT_FUNCTION_PREFIXES,
    FORBIDDEN_FUNCTIONS,
    IN_FUNCTIONS,
    KNOWN_TABLES,
    QueryRejected,
    QuerySyntaxError,
    check_and_resolve,
    flow_tag_objects,
)

# ClickHouse's default max_query_size: a longer translation is refused here, in words, not there.
MAX_TRANSLATED_BYTES = 256 << 10
# Quoted text as ClickHouse's lexer reads it, and the markers of template parameters (tags.Param).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'|`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"|\x00\d+\x00", re.S)
_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_")
# Outside quotes the translator writes words, numbers, spaces and these operators (~ and @ stand for
# the quoted text in ``_code``): ``str.translate`` deletes them, whatever is left is refused.
_CODE_CHARS = str.maketrans("", "", "".join(_WORD_CHARS) + " \t\n\r+-*/%=<>(),.[]!|~@")
# Clauses a translated SELECT never has; each could change what runs or where its rows go.
REFUSED_WORDS = ("SETTINGS", "FORMAT", "INTO", "OUTFILE", "INFILE", "JOIN", "UNION", "INTERSECT", "EXCEPT", "WITH")
# (``in`` is also the operator, whose right side is checked on its own)
_REFUSED_CALLS = frozenset(f.upper() for f in (FORBIDDEN_FUNCTIONS | IN_FUNCTIONS) - {"in"})
_DICT_FUNCTIONS = tuple(p.upper() for p in DICT_FUNCTION_PREFIXES)
# Function calls, read backwards: `(` then the name, or a quoted name (@) called as a function.
_CALL_REVERSED = re.compile(r"\(\s*(\w+|@)")
_CALLED = re.compile(r"\w*\s*\(\s*")
# `x IN t`, `x IN (db.t)`, `in(x, t)` read a table: the translator's IN takes literals or a subquery.
_ITEM = r"-?(?:~+|\d[\d.]*(?:E[-+]?\d+)?)"
_IN_RIGHT = re.compile(rf"\s*\(\s*(?:SELECT(?!\w)|(?:{_ITEM}\s*,\s*)*{_ITEM}\s*\))")
_TABLE = re.compile(r"\s*(\w+)\s*\.\s*(\w+|@+)(?![\w@])(?!\s*[(.])")
_SUBQUERY = re.compile(r"\s*\(\s*SELECT(?!\w)")
_NEXT_CLAUSE = re.compile(r"\s*(?:$|\)|(?:WHERE|PREWHERE|GROUP|HAVING|ORDER|LIMIT)(?!\w))")
_PARENS = re.compile(r"[()]")
_AS = re.compile(r"(?<!\w)AS\s+(\w+|@+)")
_AS_BEFORE = re.compile(r"(?<!\w)AS\s*$")


def finalize(sql: str) -> str:
    """A SHOW statement's query: checked by the guard, returned as the guard generates it."""
    try:
        return check_and_resolve(sql, None)
    except QuerySyntaxError as e:
        raise DialectError(f"internal error: the translated SQL does not parse ({e}): {sql}") from None
    except QueryRejected as e:
        raise DialectError(f"{e} (in the translated SQL)", status=400) from None


def _code(sql: str) -> str:
    """``sql`` with each string or marker as a run of ~ and each quoted name as a run of @ (same
    offsets): the code, which no quoted text can disguise. A ~ or @ of the SQL itself is refused."""
    quoted = 0

    def blank(m: re.Match) -> str:
        nonlocal quoted
        quoted += len(m[0])
        return ("@" if m[0][0] in '`"' else "~") * len(m[0])

    code = _QUOTED.sub(blank, sql)
    if code.count("~") + code.count("@") != quoted:
        raise _refused("~ or @ outside quotes")
    return code


# What ``tags.literal`` writes for a template's parameter: one number or one quoted string.
_ONE_LITERAL = re.compile(r"-?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|inf|nan)|'(?:[^'\\]|\\.)*'")


def check_size(sql: str) -> None:
    if len(sql) > MAX_TRANSLATED_BYTES // 4 and len(sql.encode()) > MAX_TRANSLATED_BYTES:
        raise _refused(f"it is {len(sql.encode())} bytes, the limit is {MAX_TRANSLATED_BYTES}")


def check_literal(text: str) -> str:
    """A template's parameter as rendered: it must be a single literal token, so the rendered SQL
    reads as the template did (which ``check`` passed, its markers read as strings). This replaces
    a whole ``check`` of every Grafana refresh (0.3–0.6 ms a request)."""
    if _ONE_LITERAL.fullmatch(text) is None:
        raise _refused(f"a parameter is not one literal: {text[:40]!r}")
    return text


# The words of a WITH statement's outer query (join.py writes it; names are quoted, values literals).
_JOIN_WORDS = frozenset({"SELECT", "FROM", "AS", "INNER", "LEFT", "RIGHT", "FULL", "JOIN", "ON", "WHERE", "AND",
                         "OR", "NOT", "IN", "IS", "NULL", "ORDER", "BY", "ASC", "DESC", "LIMIT", "OFFSET", "INF",
                         "NAN"})
_WORD = re.compile(r"(?<![\w.])[A-Z_][A-Z0-9_]*")


def check_join(sql: str, parts: list[str]) -> None:
    """A WITH statement as join.py assembles it: ``parts`` (each passed ``check``) as subqueries,
    joined by an outer query of quoted names, literals, operators and the words of a join only."""
    check_size(sql)
    skeleton = sql
    for part in parts:
        if f"({part})" not in skeleton:
            raise _refused("a joined query is missing")
        skeleton = skeleton.replace(f"({part})", "(\x000\x00)", 1)
    up = _code(skeleton).upper()
    stray = up.translate(_CODE_CHARS)
    if stray or "--" in up or "/*" in up:
        raise _refused(f"unexpected text in the join: {stray[:12] or '--'!r}")
    unknown = set(_WORD.findall(up)) - _JOIN_WORDS
    if unknown:
        raise _refused(f"unexpected words in the join: {', '.join(sorted(unknown))}")


def check(sql: str) -> None:
    """Refuse translated SQL that is not one SELECT over flowscope's tables and dictionaries."""
    check_size(sql)
    code = _code(sql)
    up = code.upper()                    # keywords and function names are case-insensitive
    stray = up.translate(_CODE_CHARS)
    if stray or "--" in up or "/*" in up:
        at = up.find(stray[0]) if stray else min(i for i in (up.find("--"), up.find("/*")) if i >= 0)
        raise _refused(f"unexpected text at offset {at}: {sql[at:at + 12]!r}")
    if up.lstrip()[:6] != "SELECT" or up.lstrip()[6:7] in _WORD_CHARS:
        raise _refused("it is not a SELECT")
    for word in REFUSED_WORDS:
        for _ in _words(up, word):
            raise _refused(f"{word} is not allowed in queries")
    for name in {m[::-1] for m in _CALL_REVERSED.findall(up[::-1])}:
        if name == "@":
            raise _refused("a quoted name is called as a function")
        if name in _REFUSED_CALLS:
            raise _refused(f"function {name.lower()}() is not allowed")
    for prefix in _DICT_FUNCTIONS:
        for at in _words(up, prefix, whole=False):
            _check_dictionary(sql, up, at)
    for at in _words(up, "IN"):
        if not _IN_RIGHT.match(up, at + 2):
            raise _refused(f"IN must take literals or a subquery: {sql[at:at + 40]!r}")
    for at in _words(up, "FROM"):
        _check_source(sql, up, at + 4)


def _words(up: str, word: str, start: int = 0, stop: int | None = None, *, whole: bool = True):
    """Offsets of ``word`` in ``up[start:stop]`` as a word of its own (``whole=False``: as the start
    of one)."""
    stop = len(up) if stop is None else stop
    at = up.find(word, start, stop)
    while at >= 0:
        end = at + len(word)
        if (at == 0 or up[at - 1] not in _WORD_CHARS) and (not whole or end == len(up) or up[end] not in _WORD_CHARS):
            yield at
        at = up.find(word, at + 1, stop)


def _check_dictionary(sql: str, up: str, at: int) -> None:
    """dictGet*('flow_tag.<dictionary>', …): a literal naming one of flowscope's dictionaries."""
    m = _CALLED.match(up, at)
    if m is None:                          # a longer name, not called
        return
    arg = re.match(r"~+", up[m.end():])
    text = sql[m.end():m.end() + arg.end()] if arg else ""
    name = text[1:-1] if text[:1] == "'" and "\\" not in text and "''" not in text else ""
    db, _, table = name.partition(".")
    if db != "flow_tag" or table not in flow_tag_objects():
        what = text or sql[m.end():m.end() + 30]
        raise _refused(f"{sql[at:m.end()].strip()} reads {what}, not one of flowscope's dictionaries")


def _check_source(sql: str, up: str, pos: int) -> None:
    """FROM (SELECT …) or FROM db.table of flowscope's, then the next clause: no table functions, no
    comma joins."""
    if _SUBQUERY.match(up, pos):
        end = _closing(up, up.index("(", pos)) + 1
    else:
        m = _TABLE.match(up, pos)
        db, table = (sql[m.start(1):m.end(1)], _unquote(sql[m.start(2):m.end(2)])) if m else ("", "")
        if table not in (flow_tag_objects() if db == "flow_tag" else KNOWN_TABLES.get(db, ())):
            raise _refused(f"FROM {sql[pos:pos + 40].strip()!r} is not one of flowscope's tables")
        end = m.end()
    if not _NEXT_CLAUSE.match(up, end):
        raise _refused(f"the source is followed by {sql[end:end + 30].strip()!r}, not by a clause (no joins)")


def _closing(code: str, pos: int) -> int:
    """Offset of the parenthesis closing the one at ``pos``."""
    depth = 0
    for m in _PARENS.finditer(code, pos):
        depth += 1 if m[0] == "(" else -1
        if depth == 0:
            return m.start()
    raise _refused("unbalanced parentheses")


def _unquote(name: str) -> str:
    return re.sub(r"\\(.)", r"\1", name[1:-1]) if name[:1] in '`"' else name


def _refused(why: str) -> DialectError:
    return DialectError(f"{why} (in the translated SQL)", status=400)


# -- shadowed columns ----------------------------------------------------------------------------------

def qualify(sql: str, shadowed: set[str], physical: str) -> str:
    """Qualify the references to ``shadowed`` columns in the query levels reading ``physical``
    (``db."table"``) whose SELECT list defines one of those names; subqueries are levels of their own."""
    code = _code(sql)
    up = code.upper()
    edits: list[tuple[int, str]] = []
    for segments in _levels(up):
        source = next((at for a, b in segments for at in _words(up, "FROM", a, b)), None)
        table = _TABLE.match(up, source + 4) if source is not None else None
        if table is None or sql[table.start(1):table.end()] != physical:
            continue
        aliases = {_unquote(sql[m.start(1):m.end(1)]) for a, b in segments
                   for m in _AS.finditer(up, a, min(b, source))}
        if not aliases & shadowed:
            continue
        for name in shadowed:
            for a, b in segments:
                for at in _words(code, name, a, b):
                    after = code[at + len(name):at + len(name) + 40].lstrip()[:1]
                    if code[at - 1] != "." and after not in ("(", ".") and not _AS_BEFORE.search(up, max(0, at - 8), at):
                        edits.append((at, name))
    out, pos = [], 0
    for at, name in sorted(edits):
        out += [sql[pos:at], physical, ".", name]
        pos = at + len(name)
    out.append(sql[pos:])
    return "".join(out)


def _levels(code: str) -> list[list[tuple[int, int]]]:
    """Each query level (the statement, every ``(SELECT …)``) as the segments of ``code`` that are its
    own, not its subqueries'."""
    spans = [[0, len(code)]]             # start, end of each level
    children: list[list[tuple[int, int]]] = [[]]
    opened: list[tuple[int | None, int]] = []     # per open parenthesis: (level it opened, enclosing level)
    current = 0
    for m in _PARENS.finditer(code):
        if m[0] == "(":
            if _SUBQUERY.match(code, m.start()):
                spans.append([m.start() + 1, len(code)])
                children.append([])
                opened.append((len(spans) - 1, current))
                current = len(spans) - 1
            else:
                opened.append((None, current))
        elif opened:
            level, parent = opened.pop()
            if level is not None:
                spans[level][1] = m.start()
                children[parent].append((spans[level][0], m.start()))
                current = parent
    levels = []
    for (start, end), inner in zip(spans, children, strict=True):
        segments, pos = [], start
        for a, b in inner:
            segments.append((pos, a))
            pos = b
        segments.append((pos, end))
        levels.append(segments)
    return levels
