"""DeepFlow's SHOW statements (reference/deepflow-querier.md §5, grafana-integration.md §1.3).

Answered from the catalogue wherever it knows the answer (databases, tables, tags, metrics,
functions, enums, language), so Grafana's query editor works without touching ClickHouse; only
what lives in the data is queried: tag values (dictionary names, enum names, values seen in a
table) and the Kubernetes label keys that ``show tags`` lists as ``k8s.label.<key>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp

from datasource.dialect import tags as tg
from datasource.dialect.catalog import (
    DATABASES,
    FLOW_TAG,
    FUNCTIONS,
    K8S_LABEL,
    OPERATORS,
    TABLES,
    TAG_BY_NAME,
    TAG_TYPE,
    TableCatalog,
    Tag,
    catalog,
    resolve_table,
)
from datasource.dialect.errors import DialectError
from datasource.dialect.parse import DeepFlowShow, text, where
from datasource.dialect.schema import columns as stored
from datasource.dialect.schema import dictionaries
from datasource.dialect.tags import literal
from flowscope.enums import INT_ENUMS, STRING_ENUMS

DEFAULT_LIMIT = 10000

TAG_COLUMNS = ["name", "client_name", "server_name", "display_name", "display_name_zh", "display_name_en", "type",
               "category", "operators", "permissions", "description", "description_zh", "description_en",
               "related_tag", "deprecated", "not_supported_operators", "table"]
METRIC_COLUMNS = ["name", "is_agg", "display_name", "display_name_zh", "display_name_en", "unit", "unit_zh",
                  "unit_en", "type", "category", "operators", "permissions", "table", "description",
                  "description_zh", "description_en"]
FUNCTION_COLUMNS = ["name", "type", "support_metric_types", "unit_overwrite", "additional_param_count",
                    "is_support_other_operators", "value_type"]
PERMISSIONS = [1, 1, 1]
# The resource types each auto tag can hold (datamodel §6.3); IP and Internet ends have no name.
_DEVICES = (1, 5, 6, 9, 12, 13, 15, 16)
AUTO_DEVICE_TYPES = {"auto_instance": (*_DEVICES, 10, 14, 120),
                     "auto_service": (*_DEVICES, 11, 101, 102, 103, 104, 105, 120, 130, 131, 132, 133, 134, 135)}
METRIC_OPERATORS = [">=", "<=", ">", "<", "="]


@dataclass(frozen=True)
class ShowAnswer:
    """Static rows (or None), and ClickHouse queries whose rows follow them in the same layout."""

    columns: list[str]
    values: list[list] | None
    queries: list[str]


def answer(show: DeepFlowShow, db: str | None, precision: str | None, language: str) -> ShowAnswer:
    kind = show.name
    if kind == "databases":
        return _static(["name"], [[d] for d in DATABASES], show)
    if kind == "language":
        return ShowAnswer(["language"], [[language]], [])
    if kind == "tables":
        return _tables(show, db)
    if kind == "enum":
        return _enum_values(show)
    if kind == "all_enum_tags":
        rows = [[n, "int_enum", n] for n in INT_ENUMS] + [[n, "string_enum", n] for n in STRING_ENUMS]
        return _static(["name", "type", "enum_file"], rows, show)
    if kind == "metrics" and show.args.get("functions"):
        return _static(FUNCTION_COLUMNS, _function_rows(), show)
    cat = _catalog(show, db, precision)
    if kind == "tags":
        return _tags(show, cat)
    if kind == "metrics":
        return _static(METRIC_COLUMNS, _metric_rows(cat), show)
    return _tag_values(show, cat, precision, language)


# -- static answers ------------------------------------------------------------------------------------------

def _static(columns: list[str], rows: list[list], show: DeepFlowShow) -> ShowAnswer:
    rows = [r for r in rows if _matches(show, dict(zip(columns, r, strict=True)))]
    offset, limit = _paging(show, default=None)
    rows = rows[offset:offset + limit if limit is not None else None]
    return ShowAnswer(columns, rows, [])


def _matches(show: DeepFlowShow, row: dict) -> bool:
    w = show.args.get("where")
    return w is None or bool(_evaluate(w.this, row))


def _evaluate(node: exp.Expression, row: dict):
    """A WHERE of a SHOW over one catalogue row (``name not regexp 'x'``, ``type = 'resource'``…)."""
    if isinstance(node, exp.And):
        return _evaluate(node.this, row) and _evaluate(node.expression, row)
    if isinstance(node, exp.Or):
        return _evaluate(node.this, row) or _evaluate(node.expression, row)
    if isinstance(node, exp.Not):
        return not _evaluate(node.this, row)
    if isinstance(node, exp.Paren):
        return _evaluate(node.this, row)
    if isinstance(node, exp.Column):
        if node.name not in row:
            raise DialectError(f"unknown column in SHOW … WHERE: {node.name}{where(node)}")
        return row[node.name]
    if isinstance(node, exp.Literal):
        return node.this if node.is_string else float(node.this)
    if isinstance(node, exp.Tuple):
        return [_evaluate(e, row) for e in node.expressions]
    left = _evaluate(node.this, row) if "this" in node.args else None
    if isinstance(node, exp.In):
        return str(left) in {str(_evaluate(e, row)) for e in node.expressions}
    right = _evaluate(node.expression, row) if node.args.get("expression") is not None else None
    if isinstance(node, exp.Like | exp.ILike):
        pattern = "^" + re.escape(str(right)).replace(r"\*", ".*").replace("%", ".*") + "$"
        return re.match(pattern, str(left), re.I) is not None
    if isinstance(node, exp.RegexpLike):
        return re.search(str(right), str(left)) is not None
    ops = {exp.EQ: lambda a, b: a == b, exp.NEQ: lambda a, b: a != b}
    if type(node) in ops:
        if isinstance(right, float) and not isinstance(left, str):
            left = float(left)
        return ops[type(node)](str(left) if isinstance(right, str) else left, right)
    raise DialectError(f"not support sql: {text(node)}{where(node)}")


def _paging(show: DeepFlowShow, default: int | None) -> tuple[int, int | None]:
    limit = show.args.get("limit")
    offset = show.args.get("offset")
    n = int(limit.expression.this) if limit is not None else default
    return (int(offset.this) if offset is not None else 0), n


def _catalog(show: DeepFlowShow, db: str | None, precision: str | None) -> TableCatalog:
    table = show.args.get("table")
    if table is None:
        raise DialectError(f"show {show.name}: FROM <table> is required", status=400)
    name, tdb = table.name, table.db or db
    if not tdb:
        raise DialectError(f"table {name!r} has no database: pass db (flow_log, flow_metrics)", status=400)
    try:
        t, _ = resolve_table(tdb, name, precision)
    except KeyError:
        raise DialectError(f"table {name!r} does not exist in {tdb}", status=400) from None
    return catalog(t.db, t.name)


def _tables(show: DeepFlowShow, db: str | None) -> ShowAnswer:
    if db == FLOW_TAG:
        rows = [[d, None] for d in dictionaries()]
    elif db in DATABASES:
        rows = [[t.name, list(t.precisions) or None] for (d, _), t in TABLES.items() if d == db]
    else:
        raise DialectError("show tables: pass db (flow_log, flow_metrics, flow_tag)", status=400)
    return _static(["name", "datasources"], rows, show)


def _names(cat: TableCatalog, tag: Tag) -> tuple[str, str, str]:
    sides = cat.side_names(tag)
    if len(sides) == 2:
        return tag.name, sides[0][0], sides[1][0]
    return tag.name, tag.name, tag.name


def _tag_row(cat: TableCatalog, tag: Tag) -> list:
    if tag.kind == "alias":
        target = cat.tags[tag.target]
        name, client, server = _names(cat, target)
        client, server = (client.replace(target.name, tag.name, 1), server.replace(target.name, tag.name, 1))
        return [tag.name, client if client != target.name else tag.name, server if server != target.name else tag.name,
                target.display, target.display, target.display, target.type, target.category, target.operators,
                PERMISSIONS, f"Deprecated: use {target.name}", f"Deprecated: use {target.name}",
                f"Deprecated: use {target.name}", target.name, True, [], cat.table.name]
    name, client, server = _names(cat, tag)
    description = tag.description or tag.display
    return [name, client, server, tag.display, tag.display, tag.display, tag.type, tag.category, tag.operators,
            PERMISSIONS, description, description, description, "", False, [], cat.table.name]


def _tags(show: DeepFlowShow, cat: TableCatalog) -> ShowAnswer:
    """The catalogue's tags of the table, then the k8s.label.<key> (and attribute.<key>) tags the data
    holds; LIMIT/OFFSET page over both."""
    static = [r for r in (_tag_row(cat, t) for t in cat.tags.values())
              if _matches(show, dict(zip(TAG_COLUMNS, r, strict=True)))]
    queries = [_label_keys_query(show, cat)]
    if "attribute_names" in cat.stored:
        queries.append(_attribute_keys_query(show, cat))
    offset, limit = _paging(show, default=None)
    if not offset and limit is None:
        return ShowAnswer(TAG_COLUMNS, static, queries)
    page = static[offset:offset + limit if limit is not None else None]
    rest = None if limit is None else limit - len(page)
    if rest == 0:
        return ShowAnswer(TAG_COLUMNS, page, [])
    union = " UNION ALL ".join(f"SELECT * FROM ({q})" for q in queries)
    skip = max(0, offset - len(static))
    dynamic = f"SELECT * FROM ({union}) ORDER BY name LIMIT {rest if rest is not None else DEFAULT_LIMIT} OFFSET {skip}"
    return ShowAnswer(TAG_COLUMNS, page, [dynamic])


def _dynamic_tag_select(cat: TableCatalog, prefix: str, key: str, type_: str, category: str,
                        sided: bool) -> str:
    peer = cat.table.peer and sided
    ops = "[" + ", ".join(literal(o) for o in OPERATORS["string"]) + "]"
    name = f"concat({literal(prefix)}, {key})"
    client = f"concat({literal(prefix)}, {key}, '_0')" if peer else name
    server = f"concat({literal(prefix)}, {key}, '_1')" if peer else name
    return (f"SELECT {name} AS name, {client} AS client_name, {server} AS server_name, {key} AS display_name, "
            f"{key} AS display_name_zh, {key} AS display_name_en, {literal(type_)} AS type, "
            f"{literal(category)} AS category, {ops} AS operators, [1, 1, 1] AS permissions, "
            f"'' AS description, '' AS description_zh, '' AS description_en, '' AS related_tag, false AS deprecated, "
            f"CAST([], 'Array(String)') AS not_supported_operators, {literal(cat.table.name)} AS `table`")


def _label_keys_query(show: DeepFlowShow, cat: TableCatalog) -> str:
    """``k8s.label.<key>`` for every label key of a pod or Service (one row per key)."""
    keys = ("SELECT key FROM (SELECT key FROM flow_tag.pod_service_k8s_label_map UNION ALL "
            "SELECT key FROM flow_tag.pod_k8s_label_map) GROUP BY key")
    sql = f"{_dynamic_tag_select(cat, K8S_LABEL, 'key', 'map_item', 'Kubernetes Label', sided=True)} FROM ({keys})"
    return _filtered(sql, show)


def _attribute_keys_query(show: DeepFlowShow, cat: TableCatalog) -> str:
    """``attribute.<key>`` for every attribute name seen in the requests."""
    keys = f"SELECT DISTINCT arrayJoin(attribute_names) AS key FROM {cat.table.db}.{cat.table.name}"
    sql = f"{_dynamic_tag_select(cat, 'attribute.', 'toString(key)', 'map_item', 'Attribute', sided=False)} " \
          f"FROM ({keys})"
    return _filtered(sql, show)


def _filtered(sql: str, show: DeepFlowShow) -> str:
    w = show.args.get("where")
    sql = f"SELECT * FROM ({sql})"
    if w is not None:
        sql += f" WHERE {_where_sql(w.this)}"
    return sql + " ORDER BY name"


def _where_sql(node: exp.Expression) -> str:
    """A SHOW's WHERE over the columns of a dynamic row (names quoted, LIKE globs, REGEXP)."""
    if isinstance(node, exp.And | exp.Or):
        return f"({_where_sql(node.this)} {'AND' if isinstance(node, exp.And) else 'OR'} {_where_sql(node.expression)})"
    if isinstance(node, exp.Not):
        return f"NOT ({_where_sql(node.this)})"
    if isinstance(node, exp.Paren):
        return f"({_where_sql(node.this)})"
    ops = {exp.EQ: "=", exp.NEQ: "!=", exp.Like: "like", exp.ILike: "like", exp.RegexpLike: "regexp", exp.In: "in"}
    if type(node) in ops and isinstance(node.this, exp.Column):
        col = f"`{node.this.name}`"
        items = node.expressions if isinstance(node, exp.In) else [node.expression]
        values = [i.this for i in items if isinstance(i, exp.Literal)]
        if len(values) != len(items):
            raise DialectError(f"not support sql: {text(node)}{where(node)}")
        return tg.compare(col, ops[type(node)], values)
    raise DialectError(f"not support sql: {text(node)}{where(node)}")


def _metric_rows(cat: TableCatalog) -> list[list]:
    is_agg = cat.table.layered
    rows = []
    for m in cat.metrics.values():
        description = m.description or m.display
        rows.append([m.name, is_agg, m.display, m.display, m.display, m.unit, m.unit, m.unit, m.kind, m.category,
                     METRIC_OPERATORS, PERMISSIONS, cat.table.name, description, description, description])
    rows.append(["row", is_agg, "Rows", "Rows", "Rows", "", "", "", 8, "Other", METRIC_OPERATORS, PERMISSIONS,
                 cat.table.name, "Count(row): the number of rows", "Count(row): the number of rows",
                 "Count(row): the number of rows"])
    for t in cat.tags.values():                     # DeepFlow re-lists tags as metrics for Uniq/TopK/Any
        if t.kind == "alias":
            continue
        for name, _ in cat.side_names(t):
            rows.append([name, False, t.display, t.display, t.display, "", "", "", TAG_TYPE, "Tag", METRIC_OPERATORS,
                         PERMISSIONS, cat.table.name, t.display, t.display, t.display])
    return rows


def _function_rows() -> list[list]:
    return [[f.name, f.type, list(f.metric_types), f.unit, f.params, f.other_operators, f.value_type]
            for f in FUNCTIONS.values()]


# -- enums and tag values ------------------------------------------------------------------------------------

def _enum_values(show: DeepFlowShow) -> ShowAnswer:
    """``show enum X values``: X is an enum (close_type) or a tag that has one (tap_side)."""
    name = show.args["name"].name
    tag = TAG_BY_NAME.get(name)
    if tag is not None and tag.kind == "alias":
        tag = TAG_BY_NAME.get(tag.target)
    if name in INT_ENUMS or name in STRING_ENUMS:
        enum, string = name, name in STRING_ENUMS
    elif tag is not None and tag.enum:
        enum, string = tag.enum, tag.string_enum
    else:
        raise DialectError(f"unknown enum: {name}{where(show.args['name'])}", status=400)
    values = (STRING_ENUMS if string else INT_ENUMS).get(enum, {})
    rows = [[v, n, d] for v, (n, d) in values.items()]
    return _static(["value", "display_name", "description"], rows, show)


def _tag_values(show: DeepFlowShow, cat: TableCatalog, precision: str | None, language: str) -> ShowAnswer:
    """``show tag X values from T``: (value, display_name, uid) rows from the dictionaries or the table."""
    written = show.args["name"].name
    ref = tg.resolve(cat, written) or tg.resolve(cat, written + "_0")
    if ref is None:
        raise DialectError(f"unknown tag: {written}{where(show.args['name'])} (not a tag of {cat.table.name})",
                           status=400)
    tag = ref.tag
    offset, limit = _paging(show, DEFAULT_LIMIT)
    w = show.args.get("where")
    if ref.dynamic == "k8s_label":
        key = literal(ref.label)
        source = (f"SELECT value FROM flow_tag.pod_k8s_label_map WHERE key = {key} UNION ALL "
                  f"SELECT value FROM flow_tag.pod_service_k8s_label_map WHERE key = {key}")
        select = "SELECT value AS value, value AS display_name, '' AS uid FROM (" + source + ")"
        return _values_query(select, w, {"display_name": "value", "value": "value"}, "value, display_name, uid",
                             "value", offset, limit)
    if ref.dynamic == "attribute":
        idx = f"indexOf(attribute_names, {literal(ref.label)})"
        select = (f"SELECT attribute_values[{idx}] AS value, attribute_values[{idx}] AS display_name, '' AS uid "
                  f"FROM {cat.table.db}.`{cat.table.physical(precision)}` WHERE {idx} != 0")
        return _values_query(select, w, {"display_name": f"attribute_values[{idx}]", "value": f"attribute_values[{idx}]"},
                             "value, display_name, uid", "count() DESC, value", offset, limit, where_joined=True)
    if (tag.enum in INT_ENUMS or tag.enum in STRING_ENUMS) and tag.kind in ("column", "dict") and not tag.bit_enum:
        table = "string_enum_map" if tag.string_enum else "int_enum_map"
        name, desc = f"name_{language}", f"description_{language}"
        select = (f"SELECT value AS value, {name} AS display_name, {desc} AS description FROM flow_tag.{table} "
                  f"WHERE tag_name = {literal(tag.enum)}")
        return _values_query(select, w, {"display_name": name, "value": "value", tag.name: name},
                             "value, display_name, description", "value", offset, limit, where_joined=True,
                             out=("value", "display_name", "description"))
    if tag.kind == "resource":
        return _resource_values(tag, w, offset, limit)
    if tag.kind == "auto":
        types = ", ".join(map(str, AUTO_DEVICE_TYPES[tag.name]))
        select = ("SELECT deviceid AS value, name AS display_name, devicetype AS device_type, uid, icon_id "
                  f"FROM flow_tag.device_map WHERE devicetype IN ({types})")
        return _values_query(select, w, {"display_name": "name", "value": "deviceid", f"{tag.name}_type": "devicetype",
                                         "device_type": "devicetype"},
                             "value, display_name, device_type, uid, icon_id", "value", offset, limit,
                             where_joined=True, out=("value", "display_name", "device_type", "uid", "icon_id"))
    if tag.kind == "dict" and tag.map in ("vtap_map", "vtap_port_map"):
        key = "id" if tag.map == "vtap_map" else "tap_port"
        select = f"SELECT {key} AS value, name AS display_name, '' AS uid FROM flow_tag.{tag.map}"
        return _values_query(select, w, {"display_name": "name", "value": key}, "value, display_name, uid",
                             "value", offset, limit)
    # any other tag: the values the table holds, most frequent first
    value = tg.select(ref)
    physical = f"{cat.table.db}.`{cat.table.physical(precision)}`"
    select = (f"SELECT {value} AS value, toString({value}) AS display_name, '' AS uid FROM {physical} "
              f"WHERE toString({value}) != ''")
    return _values_query(select, w, {"display_name": f"toString({value})", "value": value, written: value},
                         "value, display_name, uid", "count() DESC, value", offset, limit, where_joined=True)


def _resource_values(tag: Tag, w: exp.Where | None, offset: int, limit: int | None) -> ShowAnswer:
    if tag.devicetype == 1:       # cloud hosts: chost_map also knows their subnet and VPC (related filters)
        tag = Tag(tag.name, tag.kind, tag.type, tag.category, tag.display, map="chost_map")
    if tag.map == "device_map":
        select = (f"SELECT deviceid AS value, name AS display_name, uid FROM flow_tag.device_map "
                  f"WHERE devicetype = {tag.devicetype}")
        columns = {"display_name": "name", "value": "deviceid", "uid": "uid"}
        joined = True
    else:
        uid = "uid" if tag.map == "l3_epc_map" else "''"
        select = f"SELECT id AS value, name AS display_name, {uid} AS uid FROM flow_tag.{tag.map}"
        columns = {"display_name": "name", "value": "id"}
        joined = False
    columns |= {tag.name: columns["display_name"], f"{tag.name}_id": columns["value"]}
    return _values_query(select, w, columns, "value, display_name, uid", "value", offset, limit,
                         where_joined=joined, map_=tag.map)


def _values_query(select: str, w: exp.Where | None, columns: dict[str, str], group: str, order: str,
                  offset: int, limit: int | None, *, where_joined: bool = False, map_: str = "",
                  out: tuple[str, ...] = ("value", "display_name", "uid")) -> ShowAnswer:
    """SELECT … [WHERE <the SHOW's filters on display_name/value/the tag>] GROUP BY … ORDER BY … LIMIT."""
    sql = select
    like = False
    if w is not None:
        cond, like = _tag_values_where(w.this, columns, map_)
        sql += (" AND " if where_joined else " WHERE ") + f"({cond})"
    sql += f" GROUP BY {group}"
    sql += f" ORDER BY {'length(display_name) ASC, ' if like else ''}{order}"
    sql += f" LIMIT {limit if limit is not None else DEFAULT_LIMIT}"
    if offset:
        sql += f" OFFSET {offset}"
    return ShowAnswer(list(out), None, [sql])


def _tag_values_where(node: exp.Expression, columns: dict[str, str], map_: str) -> tuple[str, bool]:
    """The WHERE of ``show tag X values`` on the dictionary: display_name/value/X/X_id, the map's own
    columns (pod_cluster_id…), LIKE globs (then ordered by name length, as DeepFlow does)."""
    if isinstance(node, exp.And | exp.Or):
        a, la = _tag_values_where(node.this, columns, map_)
        b, lb = _tag_values_where(node.expression, columns, map_)
        return f"({a} {'AND' if isinstance(node, exp.And) else 'OR'} {b})", la or lb
    if isinstance(node, exp.Not):
        a, la = _tag_values_where(node.this, columns, map_)
        return f"NOT ({a})", la
    if isinstance(node, exp.Paren):
        a, la = _tag_values_where(node.this, columns, map_)
        return f"({a})", la
    folded = _constant_test(node)
    if folded is not None:
        return folded, False
    ops = {exp.EQ: "=", exp.NEQ: "!=", exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<=", exp.Like: "like",
           exp.ILike: "like", exp.RegexpLike: "regexp", exp.In: "in"}
    if type(node) not in ops or not isinstance(node.this, exp.Column):
        raise DialectError(f"not support sql: {text(node)}{where(node)}")
    name = node.this.name
    col = columns.get(name)
    if col is None and map_:
        if name in stored(f"flow_tag.{map_}"):
            col = name
        elif name + "_id" in stored(f"flow_tag.{map_}"):       # a related resource by name: pod_cluster = 'x'
            col = f"dictGet('flow_tag.{name}_map', 'name', toUInt64({name}_id))"
    if col is None:
        raise DialectError(f"show tag … values: cannot filter on {name}{where(node.this)}")
    items = node.expressions if isinstance(node, exp.In) else [node.expression]
    values = []
    for i in items:
        if not isinstance(i, exp.Literal):
            raise DialectError(f"not support sql: {text(node)}{where(node)}")
        values.append(i.this if i.is_string else (int(i.this) if i.this.isdigit() else float(i.this)))
    op = ops[type(node)]
    return tg.compare(col, op, values), op == "like"



def _constant_test(node: exp.Expression) -> str | None:
    """``'__any' IN ('__any')`` and the like, folded to ``1``/``0``: dashboards chain variables with
    DeepFlow's "Any" guard, a comparison of literals only (a literal's text and kind compare)."""
    if not isinstance(node, exp.In | exp.EQ | exp.NEQ) or not isinstance(node.this, exp.Literal):
        return None
    items = node.expressions if isinstance(node, exp.In) else [node.expression]
    if not items or not all(isinstance(i, exp.Literal) for i in items):
        return None
    left = (node.this.is_string, node.this.this)
    hit = any((i.is_string, i.this) == left for i in items)
    return "1" if hit != isinstance(node, exp.NEQ) else "0"
