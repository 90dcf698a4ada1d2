"""Tags → ClickHouse: what a tag is in SELECT, GROUP BY, WHERE, Uniq, exist(), Enum(), node_type()
and icon_id() (reference/deepflow-querier.md §3, "Translator table").

Names are never stored: rows hold ids, and names come from the ``flow_tag`` dictionaries at query
time. So a resource tag is ``dictGet(…)`` in SELECT, its id column in GROUP BY (cheap, and names
stay consistent with renames), and in WHERE an id-set filter ``id IN (SELECT id FROM
flow_tag.<x>_map WHERE name …)`` that ClickHouse evaluates once. Negative operators become
``NOT (<positive form>)``, so ``pod_0 != 'a'`` keeps the rows that have no pod, as DeepFlow does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from datasource.dialect.catalog import ATTRIBUTE, K8S_LABEL, NODE_TYPES_BY_AUTO_TYPE, TableCatalog, Tag

NEGATIONS = {"!=": "=", "not in": "in", "not like": "like", "not regexp": "regexp", "is not null": "is null"}


@dataclass(frozen=True)
class TagRef:
    """A tag as written in a query, resolved for one table."""

    written: str                  # pod_0, `k8s.label.app_1`, observation_point
    tag: Tag | None               # None for the dynamic k8s.label.* / attribute.* tags
    suffix: str = ""              # _0, _1 or ""
    label: str = ""               # the key of k8s.label.<key> / attribute.<key>
    dynamic: str = ""             # "k8s_label" | "attribute"

    def sql(self, template: str) -> str:
        return template.replace("{s}", self.suffix)

    @property
    def type(self) -> str:
        return self.tag.type if self.tag else "map_item"


def resolve(cat: TableCatalog, name: str) -> TagRef | None:
    """The tag a name refers to on this table (sides, legacy aliases, dynamic prefixes), or None."""
    suffix, base = "", name
    if cat.table.peer and name[-2:] in ("_0", "_1"):
        suffix, base = name[-2:], name[:-2]
    if base.startswith(K8S_LABEL) and "pod_id" + (suffix or "") in cat.stored:
        key = base[len(K8S_LABEL):]
        if key and (suffix or not cat.table.peer):
            return TagRef(name, None, suffix, key, "k8s_label")
    if base.startswith(ATTRIBUTE) and "attribute_names" in cat.stored and not suffix:
        return TagRef(name, None, "", base[len(ATTRIBUTE):], "attribute")
    for b, s in ((base, suffix), (name, "")):
        tag = cat.tags.get(b)
        if tag is not None and tag.kind == "alias":
            tag = cat.tags.get(tag.target)
        if tag is not None and (bool(s) == (cat.table.peer and tag.sided)):
            return TagRef(name, tag, s)
    return None


# -- SQL pieces ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """A literal of the request that the translation only copies into the SQL (see shape.py): a shape's
    template holds its marker, and every request's own value is rendered there by ``literal``."""

    index: int                    # its slot: the number in its marker
    value: object                 # this request's value, already converted as the SQL compares it

    @property
    def marker(self) -> str:
        # NUL never reaches the translator in a request (guard.check_input refuses it; shape.py too)
        return f"\x00{self.index}\x00"


def literal(v: object) -> str:
    """A Python value as a ClickHouse literal (strings quoted and escaped); a Param as its marker."""
    if isinstance(v, Param):
        return v.marker
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def glob(pattern: str) -> str:
    """DeepFlow's LIKE patterns use ``*`` for any run of characters."""
    return pattern.replace("*", "%")


def ip_string(ref: TagRef) -> str:
    return ref.sql("if(is_ipv4 = 1, IPv4NumToString(ip4{s}), IPv6NumToString(ip6{s}))")


def _auto_parts(ref: TagRef) -> tuple[str, str, str]:
    """(type, id, IP key): the IP key is the address for IP/Internet ends and '' otherwise."""
    name = ref.tag.name
    typ, id_ = ref.sql(f"{name}_type{{s}}"), ref.sql(f"{name}_id{{s}}")
    return typ, id_, f"if({typ} IN (0, 255), {ip_string(ref)}, '')"


def _k8s_label(ref: TagRef) -> tuple[str, str]:
    key = literal(ref.label)
    service = f"dictGet('flow_tag.pod_service_k8s_label_map', 'value', (toUInt64(service_id{ref.suffix}), {key}))"
    pod = f"dictGet('flow_tag.pod_k8s_label_map', 'value', (toUInt64(pod_id{ref.suffix}), {key}))"
    return service, pod


def select(ref: TagRef) -> str:
    """The tag's value as shown: a name for resources, the column otherwise."""
    tag = ref.tag
    if ref.dynamic == "k8s_label":
        service, pod = _k8s_label(ref)
        return f"if({service} != '', {service}, {pod})"
    if ref.dynamic == "attribute":
        idx = f"indexOf(attribute_names, {literal(ref.label)})"
        return f"if({idx} != 0, attribute_values[{idx}], NULL)"
    if tag.kind == "resource":
        return f"dictGet('flow_tag.{tag.map}', 'name', {_dict_key(ref)})"
    if tag.kind == "auto":
        typ, id_, ip_key = _auto_parts(ref)
        return (f"if({ip_key} != '', {ip_key}, "
                f"dictGet('flow_tag.device_map', 'name', (toUInt64({typ}), toUInt64({id_}))))")
    if tag.kind == "ip":
        return ip_string(ref)
    if tag.kind == "dict":
        return f"dictGet('flow_tag.{tag.map}', '{tag.attr}', {ref.sql(tag.id)})"
    if tag.type == "mac":
        return f"MACNumToString({ref.sql(tag.expr)})"
    return ref.sql(tag.expr)


def _dict_key(ref: TagRef) -> str:
    tag = ref.tag
    id_ = ref.sql(tag.id)
    if tag.map == "device_map":
        return f"(toUInt64({tag.devicetype}), toUInt64({id_}))"
    return f"toUInt64({id_})"


def group_keys(ref: TagRef) -> list[str]:
    """What GROUP BY uses for the tag: ids for resources, the value itself otherwise."""
    tag = ref.tag
    if tag is not None and tag.kind == "resource":
        return [ref.sql(tag.id)]
    if tag is not None and tag.kind == "auto":
        return list(_auto_parts(ref))
    return [select(ref)]


def uniq_key(ref: TagRef) -> str:
    """The identity Uniq()/UniqExact() count: ids, not names (two pods may share a name)."""
    tag = ref.tag
    if tag is not None and tag.kind == "ip":
        return ref.sql("(is_ipv4, ip4{s}, ip6{s})")
    keys = group_keys(ref)
    return keys[0] if len(keys) == 1 else f"({', '.join(keys)})"


def exist(ref: TagRef) -> str:
    """``exist(tag)``: the end has this resource, the label/attribute is set, the text is not empty.
    Numbers, times and IPs always exist (DeepFlow has no not-null filter for them)."""
    tag = ref.tag
    if ref.dynamic == "attribute":
        return f"indexOf(attribute_names, {literal(ref.label)}) != 0"
    if ref.dynamic == "k8s_label" or (tag.type in ("string", "string_enum", "resource") and tag.kind != "auto"
                                      and not tag.exist):
        return f"{select(ref)} != ''"
    if tag.exist:
        return ref.sql(tag.exist)
    return "1 = 1"


def exist_nullable(ref: TagRef, stored_type: str) -> str | None:
    """Nullable columns exist when not NULL (response_code, request_id…)."""
    return f"isNotNull({select(ref)})" if stored_type.startswith("Nullable") else None


def node_type(ref: TagRef) -> str | None:
    tag = ref.tag
    if tag is None:
        return None
    if tag.kind == "auto":
        types = sorted(NODE_TYPES_BY_AUTO_TYPE)
        names = ", ".join(literal(NODE_TYPES_BY_AUTO_TYPE[t]) for t in types)
        return f"transform(toUInt64({ref.sql(tag.name + '_type{s}')}), [{', '.join(map(str, types))}], [{names}], 'ip')"
    if tag.kind == "ip":
        return "'ip'"
    if tag.kind == "resource":
        return literal(tag.node_type)
    return None


def icon_id(ref: TagRef) -> str | None:
    tag = ref.tag
    if tag is None:
        return None
    if tag.kind == "auto":
        typ, id_, _ = _auto_parts(ref)
        return f"dictGetOrDefault('flow_tag.device_map', 'icon_id', (toUInt64({typ}), toUInt64({id_})), toInt64(0))"
    if tag.kind == "resource":
        return tag.icon.replace("{id}", ref.sql(tag.id))
    if tag.kind == "ip":
        return "toInt64(0)"
    return None


# -- Enum(tag) -----------------------------------------------------------------------------------------

def enum_select(ref: TagRef, language: str) -> str | None:
    """``Enum(x)``: the display name of x's value, or the value itself when the enum has no name for it."""
    tag = ref.tag
    if tag is None or not tag.enum:
        return None
    col = f"name_{language}"
    value = select(ref)
    if tag.string_enum:
        return (f"dictGetOrDefault('flow_tag.string_enum_map', '{col}', ('{tag.enum}', toString({value})), "
                f"toString({value}))")
    name = f"dictGetOrDefault('flow_tag.int_enum_map', '{col}', ('{tag.enum}', toUInt64({{v}})), toString({{v}}))"
    if tag.bit_enum:
        return f"arrayStringConcat(arrayMap(b -> {name.format(v='b')}, bitmaskToArray({value})), ',')"
    return name.format(v=value)


def enum_filter(ref: TagRef, op: str, values: list, language: str) -> str | None:
    """``Enum(x) <op> 'Name'``: x among the values whose display name matches, or (for = / IN) x equal
    to the value as written, as DeepFlow does."""
    tag = ref.tag
    if tag is None or not tag.enum:
        return None
    if op in NEGATIONS:
        return f"NOT ({enum_filter(ref, NEGATIONS[op], values, language)})"
    if tag.bit_enum or op not in ("=", "in", "like", "regexp"):
        return compare(enum_select(ref, language), op, values)
    table = "string_enum_map" if tag.string_enum else "int_enum_map"
    value = select(ref)
    names = compare(f"name_{language}", op, [str(v) for v in values])
    parts = [f"{value} GLOBAL IN (SELECT value FROM flow_tag.{table} WHERE {names} AND tag_name = '{tag.enum}')"]
    if op in ("=", "in"):
        raw = [v for v in values if tag.string_enum or _is_int(v)]
        if raw:
            parts.append(compare(value, "in", [v if tag.string_enum else int(v) for v in raw]))
    return " OR ".join(parts) if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def _is_int(v: object) -> bool:
    return isinstance(v, int) or (isinstance(v, str) and v.lstrip("-").isdigit())


# -- WHERE ---------------------------------------------------------------------------------------------

def compare(expr: str, op: str, values: list) -> str:
    """``expr <op> values`` in ClickHouse: LIKE with ``*`` globs → ILIKE, REGEXP → match()."""
    if op in ("in", "not in"):
        return f"{expr} {op.upper()} ({', '.join(literal(v) for v in values)})"
    if op in ("is null", "is not null"):
        return f"{expr} {op.upper()}"
    v = values[0]
    if op == "like":
        return f"{expr} ILIKE {literal(glob(str(v)))}"
    if op == "not like":
        return f"NOT ({expr} ILIKE {literal(glob(str(v)))})"
    if op == "regexp":
        return f"match({expr}, {literal(str(v))})"
    if op == "not regexp":
        return f"NOT match({expr}, {literal(str(v))})"
    return f"{expr} {op} {literal(v)}"


def compared_as_is(ref: TagRef) -> bool:
    """Whether ``filter_`` compares the tag's value with the (coerced) literals themselves — no id
    sets, address ranges or label lookups of its own: a literal then only reaches the SQL through
    ``literal`` (and may be a shape's parameter)."""
    return not ref.dynamic and ref.tag is not None and ref.tag.kind not in ("resource", "auto", "ip")


def filter_(ref: TagRef, op: str, values: list, stored_type: str = "") -> str:
    """The WHERE predicate for ``tag <op> values``; ``values`` are Python literals."""
    if compared_as_is(ref):
        return compare(select(ref), op, coerce(values, stored_type))
    tag = ref.tag
    if op in NEGATIONS and (ref.dynamic == "k8s_label" or (tag is not None and tag.kind in ("resource", "auto", "ip"))):
        return f"NOT ({filter_(ref, NEGATIONS[op], values, stored_type)})"
    if ref.dynamic == "k8s_label":
        cond = compare("value", op, values)
        key = literal(ref.label)
        return (f"(toUInt64(service_id{ref.suffix}) GLOBAL IN (SELECT id FROM flow_tag.pod_service_k8s_label_map "
                f"WHERE {cond} AND key = {key}) OR toUInt64(pod_id{ref.suffix}) GLOBAL IN "
                f"(SELECT id FROM flow_tag.pod_k8s_label_map WHERE {cond} AND key = {key}))")
    if ref.dynamic == "attribute":
        return compare(f"attribute_values[indexOf(attribute_names, {literal(ref.label)})]", op,
                       [str(v) for v in values])
    if tag.kind == "resource":
        names = compare("name", op, values)
        id_ = ref.sql(tag.id)
        if tag.map == "device_map":
            sql = (f"toUInt64({id_}) GLOBAL IN (SELECT deviceid FROM flow_tag.device_map WHERE {names} "
                   f"AND devicetype = {tag.devicetype})")
        else:
            sql = f"toUInt64({id_}) GLOBAL IN (SELECT id FROM flow_tag.{tag.map} WHERE {names})"
        if op in ("=", "in") and "" in values:
            # an end without the resource shows '' in SELECT, so '' matches it here too
            sql = f"({sql} OR {id_} = 0)"
        return sql
    if tag.kind == "auto":
        typ, id_, _ = _auto_parts(ref)
        return (f"if({typ} IN (0, 255), {compare(ip_string(ref), op, values)}, (toUInt64({id_}), toUInt64({typ})) "
                f"GLOBAL IN (SELECT deviceid, devicetype FROM flow_tag.device_map WHERE {compare('name', op, values)}))")
    return ip_filter(ref, op, values)


def coerce(values: list, stored_type: str) -> list:
    """Literals as the column's type: ``signal_source IN ('3')`` compares numbers, ``endpoint = 5`` text."""
    numeric = any(stored_type.replace("Nullable(", "").startswith(p) for p in ("Int", "UInt", "Float"))
    out = []
    for v in values:
        if isinstance(v, Param):          # converted before it was lifted (translate.py)
            pass
        elif numeric and isinstance(v, str):
            v = number(v)
        elif stored_type and not numeric and isinstance(v, int | float) and not stored_type.startswith("Date"):
            v = str(v)
        out.append(v)
    return out


def number(v: str) -> object:
    """A numeric string as its number, else the string."""
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def ip_filter(ref: TagRef, op: str, values: list) -> str:
    """``ip = '10.0.0.1'``, ``ip IN ('10.0.0.0/8', 'fd00::1')``, ``ip >= …``: exact address compares on the
    IPv4/IPv6 columns (CIDRs as ranges); LIKE and REGEXP on the address text."""
    if op in ("like", "regexp"):
        return compare(ip_string(ref), op, values)
    if op in ("is null",):
        return "0 = 1"
    ors = []
    for v in values:
        try:
            net = ipaddress.ip_network(str(v).strip(), strict=False)
        except ValueError:
            raise ValueError(f"invalid IP address or CIDR {str(v)!r}") from None
        v4 = net.version == 4
        col, fn = ref.sql("ip4{s}" if v4 else "ip6{s}"), "toIPv4" if v4 else "toIPv6"
        family = f"is_ipv4 = {1 if v4 else 0}"
        lo, hi = f"{fn}('{net.network_address}')", f"{fn}('{net.broadcast_address}')"
        if op in ("=", "in"):
            cond = f"{col} = {lo}" if net.num_addresses == 1 else f"{col} >= {lo} AND {col} <= {hi}"
        elif op in (">", ">="):
            cond = f"{col} {op} {lo}"
        else:
            cond = f"{col} {op} {hi}"
        ors.append(f"({family} AND {cond})")
    return ors[0] if len(ors) == 1 else "(" + " OR ".join(ors) + ")"


def mask(ref: TagRef, bits: int) -> str:
    """``mask(ip, n)``: the address with its host bits cleared (n capped at 32 for IPv4)."""
    v4 = min(bits, 32)
    return ref.sql(f"if(is_ipv4 = 1, IPv4NumToString(tupleElement(IPv4CIDRToRange(ip4{{s}}, {v4}), 1)), "
                   f"IPv6NumToString(tupleElement(IPv6CIDRToRange(ip6{{s}}, {min(bits, 128)}), 1)))")
