"""The catalogue: DeepFlow's tables, tags, metrics and functions for flowscope's schema, as data.

One row per tag or metric; the translator (tags.py, metrics.py) reads these rows and never
special-cases a name. SQL in the rows is ClickHouse with ``{s}`` standing for the side suffix
(``_0`` client, ``_1`` server on the peer tables, empty on single-side tables). A row is offered on
a table only when every column it needs is stored there (schema.py reads ``sql/``), so
``show tags`` / ``show metrics`` and the translator agree by construction.

Sources: reference/deepflow-querier.md §2–§5 (DeepFlow's db_descriptions and translators) and
deepflow-datamodel.md §1–§4, §6 (columns, enums, dictionaries).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from datasource.dialect.schema import columns

# ---------------------------------------------------------------------------------------------------
# Tables

FLOW_LOG, FLOW_METRICS, FLOW_TAG = "flow_log", "flow_metrics", "flow_tag"
PRECISIONS = {"1s": 1, "1m": 60}
DEFAULT_PRECISION = "1m"


@dataclass(frozen=True)
class Table:
    db: str
    name: str                       # DeepFlow's name: l4_flow_log, network_map, …
    peer: bool                      # tags come as X_0 (client) / X_1 (server)
    legacy: str = ""                # the vtap_* name DeepFlow still accepts
    precisions: tuple[str, ...] = ()

    def physical(self, precision: str | None) -> str:
        return f"{self.name}.{precision}" if self.precisions else self.name

    def interval(self, precision: str | None) -> int:
        """The datasource interval ``ds`` (seconds per stored row) DeepFlow's Avg/PerSecond use."""
        return PRECISIONS[precision] if self.precisions and precision else 1

    @property
    def layered(self) -> bool:
        """Pre-aggregated tables get DeepFlow's two-layer SQL when a function needs it."""
        return self.db == FLOW_METRICS

    @property
    def sample_physical(self) -> str:
        return f"{self.db}.{self.physical(self.precisions[-1] if self.precisions else None)}"


TABLES: dict[tuple[str, str], Table] = {(t.db, t.name): t for t in (
    Table(FLOW_LOG, "l4_flow_log", peer=True),
    Table(FLOW_LOG, "l7_flow_log", peer=True),
    Table(FLOW_METRICS, "network", peer=False, legacy="vtap_flow_port", precisions=("1s", "1m")),
    Table(FLOW_METRICS, "network_map", peer=True, legacy="vtap_flow_edge_port", precisions=("1s", "1m")),
    Table(FLOW_METRICS, "application", peer=False, legacy="vtap_app_port", precisions=("1s", "1m")),
    Table(FLOW_METRICS, "application_map", peer=True, legacy="vtap_app_edge_port", precisions=("1s", "1m")),
)}
LEGACY_TABLES = {t.legacy: t.name for t in TABLES.values() if t.legacy}
DATABASES = (FLOW_LOG, FLOW_METRICS, FLOW_TAG)

# ---------------------------------------------------------------------------------------------------
# Tags

OPERATORS = {
    "string": ["=", "!=", "IN", "NOT IN", "LIKE", "NOT LIKE", "REGEXP", "NOT REGEXP"],
    "int": ["=", "!=", "IN", "NOT IN", ">=", "<=", ">", "<"],
    "time": ["=", "!=", ">=", "<="],
    "id": ["=", "!=", "IN", "NOT IN"],
}
OPERATORS_OF_TYPE = {"resource": "string", "string": "string", "string_enum": "string", "map_item": "string",
                     "tokenize_string": "string", "int": "int", "int_enum": "int", "ip": "int", "bit_enum": "int",
                     "time": "time"}


@dataclass(frozen=True)
class Tag:
    """One DeepFlow tag. ``kind`` picks the translator (tags.py):

    * ``column``   a stored column (``expr`` may compute it), compared as is;
    * ``resource`` a name from a dictionary keyed by an id (``id``): SELECT dictGet, GROUP BY the id,
      WHERE an id-set subquery on the dictionary's names;
    * ``auto``     auto_instance / auto_service: a device name, or the IP for IP/Internet ends;
    * ``ip``       the address of an end (IPv4 or IPv6);
    * ``dict``     an attribute of a dictionary looked up by a key (agent name, NIC name, …);
    * ``alias``    a legacy name for ``target``.
    """

    name: str
    kind: str
    type: str
    category: str
    display: str
    description: str = ""
    expr: str = ""                # column or SQL expression ({s} = side suffix)
    id: str = ""                  # resource: id expression; dict: the dictionary key
    map: str = ""                 # resource/dict: dictionary under flow_tag
    attr: str = "name"            # dict: the attribute looked up
    devicetype: int = 0           # resource: device_map type when the dictionary is device_map
    enum: str = ""                # Enum(): tag_name in int_enum_map / string_enum_map
    string_enum: bool = False
    bit_enum: bool = False
    node_type: str = ""           # node_type(): constant for this resource
    icon: str = ""                # icon_id(): SQL ({id} = the id expression)
    target: str = ""              # alias: the tag this name stands for
    owner: str = ""               # <resource>_id tags: the resource (exist() is the resource's)
    exist: str = ""               # exist(): the not-null filter, when not the default one
    needs: tuple[str, ...] = ()   # stored columns ({s} = suffix); default: the identifiers of expr/id
    deprecated: bool = False

    @property
    def sided(self) -> bool:
        return any("{s}" in c for c in self.required)

    @property
    def required(self) -> tuple[str, ...]:
        if self.needs:
            return self.needs
        return tuple(_identifiers(self.expr or self.id))

    @property
    def operators(self) -> list[str]:
        return OPERATORS[OPERATORS_OF_TYPE.get(self.type, "id")]


_SQL_WORDS = {"IN", "AND", "OR", "NOT", "NULL", "IS"}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\{s\})?(?!\w|\s*\()")


def _identifiers(sql: str) -> list[str]:
    """The column names an SQL template reads (words that are not function names or keywords)."""
    sql = re.sub(r"'[^']*'", "", sql)
    return [w for w in _WORD.findall(sql) if w.upper() not in _SQL_WORDS]


def _col(name: str, type_: str, category: str, display: str, description: str = "", *, enum: str = "",
         sided: bool = False, string_enum: bool = False, bit_enum: bool = False, column: str = "") -> Tag:
    col = (column or name) + ("{s}" if sided else "")
    return Tag(name, "column", type_, category, display, description, expr=col, enum=enum,
               string_enum=string_enum, bit_enum=bit_enum)


def _resource(name: str, map_: str, id_: str, display: str, node_type: str, *, devicetype: int = 0,
              icon_type: int = 0, icon_map: bool = False, category: str = "Resource", exist: str = "") -> list[Tag]:
    """A resource tag and its ``<name>_id`` tag (``pod`` and ``pod_id``)."""
    if icon_map:
        icon = f"dictGetOrDefault('flow_tag.{map_}', 'icon_id', toUInt64({{id}}), toInt64(0))"
    elif devicetype or icon_type:
        icon = f"dictGetOrDefault('flow_tag.device_map', 'icon_id', (toUInt64({devicetype or icon_type}), " \
               "toUInt64({id})), toInt64(0))"
    else:
        icon = "toInt64(0)"
    exist = exist or f"{id_} != 0"
    return [Tag(name, "resource", "resource", category, display, f"{display} of the end", id=id_, map=map_,
                devicetype=devicetype, node_type=node_type, icon=icon, exist=exist),
            Tag(f"{name}_id", "column", "id", category, f"{display} ID", expr=id_, owner=name, exist=exist)]


def _device(name: str, devicetype: int, display: str, node_type: str) -> list[Tag]:
    """Cloud resources that own an IP (l3_device_type/id): chost, router, LB, …"""
    id_ = f"if(l3_device_type{{s}} = {devicetype}, l3_device_id{{s}}, 0)"
    return _resource(name, "device_map", id_, display, node_type, devicetype=devicetype)


def _auto(name: str, display: str, exist: str) -> list[Tag]:
    """auto_instance / auto_service (datamodel §6.3); exist() as DeepFlow defines it."""
    return [
        Tag(name, "auto", "resource", "Resource", display,
            "The most specific resource of the end: pod, service, workload, host… or its IP",
            id=f"{name}_id{{s}}", needs=(f"{name}_id{{s}}", f"{name}_type{{s}}", "ip4{s}", "ip6{s}", "subnet_id{s}"),
            exist=exist),
        Tag(f"{name}_id", "column", "id", "Resource", f"{display} ID",
            expr=f"if({name}_type{{s}} IN (0, 255), subnet_id{{s}}, {name}_id{{s}})", owner=name, exist=exist),
        _col(f"{name}_type", "int_enum", "Resource", f"{display} Type", enum=f"{name}_type", sided=True),
    ]


def _alias(name: str, target: str) -> Tag:
    return Tag(name, "alias", "", "", "", target=target, deprecated=True)


TAGS: tuple[Tag, ...] = (
    # resources (datamodel §1c, §6.4)
    *_resource("region", "region_map", "region_id{s}", "Region", "region", icon_map=True),
    *_resource("az", "az_map", "az_id{s}", "Availability Zone", "az", icon_map=True),
    *_resource("host", "device_map", "host_id{s}", "Host", "host", devicetype=6),
    *_device("chost", 1, "Cloud Host", "chost"),
    *_device("router", 5, "Router", "router"),
    *_device("dhcpgw", 9, "DHCP Gateway", "dhcp_port"),
    *_device("redis", 12, "Redis", "redis"),
    *_device("rds", 13, "RDS", "rds"),
    *_device("lb", 15, "Load Balancer", "lb"),
    *_device("natgw", 16, "NAT Gateway", "nat_gateway"),
    *_resource("vpc", "l3_epc_map", "l3_epc_id{s}", "VPC", "vpc", exist="l3_epc_id{s} != -2"),
    *_resource("l2_vpc", "l3_epc_map", "epc_id{s}", "L2 VPC", "l2_vpc", exist="epc_id{s} != -2"),
    *_resource("subnet", "subnet_map", "subnet_id{s}", "Subnet", "subnet"),
    *_resource("pod_cluster", "pod_cluster_map", "pod_cluster_id{s}", "K8s Cluster", "pod_cluster", icon_map=True),
    *_resource("pod_node", "pod_node_map", "pod_node_id{s}", "K8s Node", "pod_node", icon_type=14),
    *_resource("pod_ns", "pod_ns_map", "pod_ns_id{s}", "K8s Namespace", "pod_ns"),
    *_resource("pod_group", "pod_group_map", "pod_group_id{s}", "K8s Workload", "pod_group"),
    *_resource("pod_service", "pod_service_map", "service_id{s}", "K8s Service", "pod_service", icon_type=11),
    *_resource("pod", "pod_map", "pod_id{s}", "K8s Pod", "pod", icon_type=10),
    *_resource("gprocess", "gprocess_map", "gprocess_id{s}", "Process", "gprocess", icon_type=120),
    Tag("pod_group_type", "dict", "int_enum", "Resource", "K8s Workload Type", id="toUInt64(pod_group_id{s})",
        map="pod_group_map", attr="pod_group_type", enum="auto_service_type"),
    *_auto("auto_instance", "Auto Instance", "auto_instance_type{s} NOT IN (101, 102)"),
    *_auto("auto_service", "Auto Service", "auto_service_type{s} NOT IN (10)"),
    Tag("ip", "ip", "ip", "Network", "IP Address", needs=("ip4{s}", "ip6{s}", "is_ipv4")),
    Tag("is_internet", "column", "int", "Network", "Internet IP", "1 when the end is on the Internet",
        expr="if(l3_epc_id{s} = -2, 1, 0)"),
    _col("province", "string", "Network", "Province", sided=True),
    _col("mac", "mac", "Network", "MAC Address", sided=True),
    _col("tag_source", "int", "Resource", "Tag Source", "How the resources of the end were found", sided=True),
    _col("l2_end", "int", "Capture", "L2 End", sided=True),
    _col("l3_end", "int", "Capture", "L3 End", sided=True),
    # the flow and its capture point
    _col("time", "time", "Time", "Time"),
    _col("start_time", "time", "Time", "Start Time"),
    _col("end_time", "time", "Time", "End Time"),
    _col("_id", "id", "Flow", "Row ID"),
    _col("flow_id", "id", "Flow", "Flow ID"),
    _col("is_ipv4", "int_enum", "Network", "IPv4 Flag", enum="is_ipv4"),
    _col("eth_type", "int_enum", "Network", "Ethernet Type", enum="eth_type"),
    _col("vlan", "int", "Network", "VLAN"),
    _col("protocol", "int_enum", "Network", "Network Protocol", enum="protocol"),
    _col("client_port", "int", "Network", "Client Port"),
    _col("server_port", "int_enum", "Network", "Server Port", enum="server_port"),
    _col("tcp_flags_bit", "bit_enum", "Network", "TCP Flags", enum="tcp_flags_bit", sided=True, bit_enum=True),
    _col("syn_seq", "int", "Network", "SYN Seq"),
    _col("syn_ack_seq", "int", "Network", "SYN-ACK Seq"),
    _col("nat_source", "int_enum", "Network", "NAT Source", enum="nat_source"),
    _col("tunnel_tier", "int", "Tunnel", "Tunnel Tier"),
    _col("tunnel_type", "int_enum", "Tunnel", "Tunnel Type", enum="tunnel_type"),
    _col("tunnel_tx_id", "int", "Tunnel", "Req Tunnel ID"),
    _col("tunnel_rx_id", "int", "Tunnel", "Resp Tunnel ID"),
    _col("close_type", "int_enum", "Flow", "Close Type", enum="close_type"),
    _col("status", "int_enum", "Flow", "Status", enum="status"),
    _col("is_new_flow", "int", "Flow", "New Flow"),
    _col("signal_source", "int_enum", "Capture", "Signal Source", enum="signal_source"),
    _col("observation_point", "string_enum", "Capture", "Observation Point", enum="observation_point",
         string_enum=True),
    _col("capture_nic", "int", "Capture", "Capture NIC"),
    Tag("capture_nic_name", "dict", "string", "Capture", "Capture NIC Name",
        id="(toUInt64(agent_id), toUInt64(capture_nic))", map="vtap_port_map"),
    _col("capture_nic_type", "int_enum", "Capture", "Capture NIC Type", enum="capture_nic_type"),
    _col("capture_network_type_id", "int", "Capture", "Capture Network Type"),
    _col("agent_id", "id", "Capture", "Agent ID"),
    Tag("agent", "dict", "resource", "Capture", "Agent", id="toUInt64(agent_id)", map="vtap_map"),
    _col("role", "int_enum", "Network", "Role", "Client, server, local or rest end", enum="role"),
    _col("is_key_service", "int", "Network", "Key Service"),
    # application
    _col("l7_protocol", "int_enum", "Application", "Application Protocol", enum="l7_protocol"),
    Tag("l7_protocol_str", "column", "string", "Application", "Application Protocol Name",
        expr="if(biz_protocol != '', toString(biz_protocol), dictGetOrDefault('flow_tag.int_enum_map', "
             "'name_en', ('l7_protocol', toUInt64(l7_protocol)), toString(l7_protocol)))"),
    _col("biz_protocol", "string", "Application", "Business Protocol"),
    _col("version", "string", "Application", "Protocol Version"),
    _col("type", "int_enum", "Application", "Log Type", "Request, response or session", enum="l7_type"),
    _col("is_tls", "int", "Application", "TLS"),
    _col("is_async", "int", "Application", "Async"),
    _col("is_reversed", "int", "Application", "Reversed"),
    _col("request_type", "string", "Application", "Request Type"),
    _col("request_domain", "string", "Application", "Request Domain"),
    _col("request_resource", "string", "Application", "Request Resource"),
    _col("endpoint", "string", "Application", "Endpoint"),
    _col("request_id", "int", "Application", "Request ID"),
    _col("response_status", "int_enum", "Application", "Response Status", enum="response_status"),
    _col("response_code", "int", "Application", "Response Code"),
    _col("response_exception", "string", "Application", "Response Exception"),
    _col("response_result", "string", "Application", "Response Result"),
    _col("app_service", "string", "Application", "Application Service"),
    _col("app_instance", "string", "Application", "Application Instance"),
    _col("biz_type", "int", "Application", "Business Type"),
    _col("http_proxy_client", "string", "Application", "HTTP Proxy Client"),
    _col("trace_id", "string", "Tracing", "TraceID"),
    _col("span_id", "string", "Tracing", "SpanID"),
    _col("parent_span_id", "string", "Tracing", "ParentSpanID"),
    _col("span_kind", "int", "Tracing", "Span Kind"),
    _col("x_request_id", "string", "Tracing", "X-Request-ID", sided=True),
    _col("req_tcp_seq", "int", "Tracing", "Req TCP Seq"),
    _col("resp_tcp_seq", "int", "Tracing", "Resp TCP Seq"),
    _col("syscall_trace_id_request", "int", "Tracing", "Req Syscall TraceID"),
    _col("syscall_trace_id_response", "int", "Tracing", "Resp Syscall TraceID"),
    _col("syscall_thread", "int", "Tracing", "Syscall Thread", sided=True),
    _col("syscall_coroutine", "int", "Tracing", "Syscall Coroutine", sided=True),
    _col("syscall_cap_seq", "int", "Tracing", "Syscall Seq", sided=True),
    _col("process_id", "int", "Process", "Process ID", sided=True),
    _col("process_kname", "string", "Process", "Process Name", sided=True),
    # DeepFlow's legacy names (datamodel "Renamed columns")
    _alias("tap_side", "observation_point"),
    _alias("tap_port", "capture_nic"),
    _alias("tap_port_name", "capture_nic_name"),
    _alias("tap_port_type", "capture_nic_type"),
    _alias("tap_type", "capture_network_type_id"),
    _alias("vtap_id", "agent_id"),
    _alias("vtap", "agent"),
)
TAG_BY_NAME = {t.name: t for t in TAGS}

# Dynamic tags: a prefix, then a key chosen by the user.
K8S_LABEL = "k8s.label."
ATTRIBUTE = "attribute."
METRICS_PREFIX = "metrics."

NODE_TYPES_BY_AUTO_TYPE = {
    0: "internet_ip", 1: "chost", 5: "router", 6: "host", 9: "dhcp_port", 10: "pod", 11: "pod_service",
    12: "redis", 13: "rds", 14: "pod_node", 15: "lb", 16: "nat_gateway", 101: "pod_group", 102: "service",
    103: "pod_cluster", 104: "biz_service", 105: "custom_biz_service", 120: "process", 130: "pod_group",
    131: "pod_group", 132: "pod_group", 133: "pod_group", 134: "pod_group", 135: "pod_group", 255: "ip",
}

# ---------------------------------------------------------------------------------------------------
# Metrics

COUNTER, GAUGE, DELAY, PERCENTAGE, QUOTIENT, TAG_TYPE, ARRAY, OTHER, BOUNDED_GAUGE = range(1, 10)
METRIC_TYPE_NAMES = {COUNTER: "counter", GAUGE: "gauge", DELAY: "delay", PERCENTAGE: "percentage",
                     QUOTIENT: "quotient", TAG_TYPE: "tag", OTHER: "other", BOUNDED_GAUGE: "bounded_gauge"}


@dataclass(frozen=True)
class Metric:
    """One metric: ``value`` is its per-row SQL and ``cond`` the rows it is defined on (DeepFlow's
    DBField and Condition). Ratios (quotient, percentage, and delays stored as sum/count) also
    keep ``num``/``den`` so Avg can be the ratio of the sums."""

    name: str
    kind: int
    unit: str
    category: str
    display: str
    value: str
    cond: str = ""
    num: str = ""
    den: str = ""
    one_minus: bool = False       # success_ratio = 1 - error/response
    description: str = ""

    @property
    def is_ratio(self) -> bool:
        return bool(self.den)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(_identifiers(" ".join((self.value, self.num, self.den))))


def counter(name: str, expr: str, unit: str, category: str, display: str, description: str = "",
            kind: int = COUNTER) -> Metric:
    return Metric(name, kind, unit, category, display, expr, description=description)


def delay(name: str, expr: str, display: str, category: str = "Delay", unit: str = "us") -> Metric:
    """A latency sample; 0 means no sample, so aggregates skip it."""
    return Metric(name, DELAY, unit, category, display, expr, cond=f"{expr} > 0")


def mean_delay(name: str, total: str, count: str, display: str) -> Metric:
    """A latency kept as sum and count (srt_sum/srt_count): Avg is Σsum/Σcount."""
    return Metric(name, DELAY, "us", "Delay", display, f"{total} / {count}", cond=f"{count} > 0",
                  num=total, den=count)


def ratio(name: str, num: str, den: str, display: str, category: str, *, percent: bool = True,
          one_minus: bool = False, unit: str = "%") -> Metric:
    if percent:
        v = f"least(({num}) / ({den}), 1)"
        value = f"(1 - {v}) * 100" if one_minus else f"{v} * 100"
    else:
        value = f"({num}) / ({den})"
    return Metric(name, PERCENTAGE if percent else QUOTIENT, unit, category, display,
                  value, cond=f"({den}) > 0", num=num, den=den, one_minus=one_minus)


def _txrx(name: str, unit: str, category: str, display: str, *, stored_sum: bool = False) -> list[Metric]:
    """x (= x_tx + x_rx, or a stored column), x_tx, x_rx."""
    total = name if stored_sum else f"{name}_tx + {name}_rx"
    return [counter(name, total, unit, category, display),
            counter(f"{name}_tx", f"{name}_tx", unit, category, f"{display} (client → server)"),
            counter(f"{name}_rx", f"{name}_rx", unit, category, f"{display} (server → client)")]


# close_type sets of l4_flow_log (datamodel §1, querier metrics/l4_flow_log.go)
CLOSE_COUNTERS = {"client_rst_flow": (9,), "server_rst_flow": (2,), "server_syn_miss": (7,),
                  "client_ack_miss": (10,), "client_half_close_flow": (11,), "server_half_close_flow": (8,),
                  "client_source_port_reuse": (13,), "server_reset": (15,), "server_queue_lack": (17,),
                  "client_establish_other_rst": (18,), "server_establish_other_rst": (19,), "tcp_timeout": (3,)}
FAIL_SETS = {"tcp_establish_fail": (13, 7, 10, 15, 18, 19), "client_establish_fail": (13, 10, 18),
             "server_establish_fail": (7, 15, 19), "tcp_transfer_fail": (2, 9, 17, 3),
             "tcp_rst_fail": (18, 19, 15, 2, 9)}
FAIL_DISPLAY = {"tcp_establish_fail": "TCP Establish Fail", "client_establish_fail": "Client Establish Fail",
                "server_establish_fail": "Server Establish Fail", "tcp_transfer_fail": "TCP Transfer Fail",
                "tcp_rst_fail": "TCP RST Fail"}
DELAYS = {"rtt": "TCP Establish Delay", "rtt_client": "Client RTT", "rtt_server": "Server RTT",
          "srt": "TCP/ICMP System Delay", "art": "Application Delay", "rrt": "Application Response Delay",
          "cit": "Client Idle Time"}


def _network_metrics(flow_log: bool) -> list[Metric]:
    """network / network_map (flow_log=False) and l4_flow_log (True): the same names, with per-flow
    expressions on the flow log and stored sums on the metrics tables."""
    m: list[Metric] = [
        *_txrx("byte", "Byte", "Throughput", "Bytes"),
        *_txrx("packet", "Packet", "Throughput", "Packets"),
        *_txrx("l3_byte", "Byte", "Throughput", "L3 Payload"),
        *_txrx("l4_byte", "Byte", "Throughput", "L4 Payload"),
        ratio("bpp", "byte_tx + byte_rx", "packet_tx + packet_rx", "Bytes per Packet", "Throughput",
              percent=False, unit="Byte"),
        ratio("bpp_tx", "byte_tx", "packet_tx", "Bytes per Packet (client → server)", "Throughput",
              percent=False, unit="Byte"),
        ratio("bpp_rx", "byte_rx", "packet_rx", "Bytes per Packet (server → client)", "Throughput",
              percent=False, unit="Byte"),
        *_txrx("retrans", "Packet", "TCP Slow", "TCP Retransmissions"),
        *_txrx("zero_win", "Packet", "TCP Slow", "TCP Zero Windows"),
        *_txrx("ooo", "Packet", "TCP Slow", "TCP Out of Order"),
        counter("syn_count", "syn_count", "Packet", "TCP Slow", "SYN Packets"),
        counter("synack_count", "synack_count", "Packet", "TCP Slow", "SYN-ACK Packets"),
        counter("retrans_syn", "retrans_syn", "Packet", "TCP Slow", "SYN Retransmissions"),
        counter("retrans_synack", "retrans_synack", "Packet", "TCP Slow", "SYN-ACK Retransmissions"),
        ratio("retrans_ratio", "retrans_tx + retrans_rx", "packet_tx + packet_rx", "TCP Retransmission Ratio",
              "TCP Slow"),
        ratio("zero_win_ratio", "zero_win_tx + zero_win_rx", "packet_tx + packet_rx", "TCP Zero Window Ratio",
              "TCP Slow"),
        ratio("retrans_syn_ratio", "retrans_syn", "syn_count", "SYN Retransmission Ratio", "TCP Slow"),
        ratio("retrans_synack_ratio", "retrans_synack", "synack_count", "SYN-ACK Retransmission Ratio",
              "TCP Slow"),
        counter("l7_request", "l7_request", "Request", "Application", "Requests"),
        counter("l7_response", "l7_response", "Response", "Application", "Responses"),
        counter("l7_client_error", "l7_client_error", "Response", "Application", "Client Errors"),
        counter("l7_server_error", "l7_server_error", "Response", "Application", "Server Errors"),
        counter("l7_error", "l7_error", "Response", "Application", "Errors"),
        ratio("l7_error_ratio", "l7_error", "l7_response", "Error Ratio", "Application"),
        ratio("l7_client_error_ratio", "l7_client_error", "l7_response", "Client Error Ratio", "Application"),
        ratio("l7_server_error_ratio", "l7_server_error", "l7_response", "Server Error Ratio", "Application"),
        counter("direction_score", "direction_score", "", "Flow", "Direction Score", kind=BOUNDED_GAUGE),
    ]
    for name, display in DELAYS.items():
        if flow_log and name.startswith("rtt"):
            m.append(delay(name, name, display))
        else:
            m.append(mean_delay(name, f"{name}_sum", f"{name}_count", display))
        m.append(delay(f"{name}_max", f"{name}_max", f"Max {display}"))
    if flow_log:
        m += [
            counter("log_count", "1", "Log", "Flow", "Log Count"),
            counter("new_flow", "if(is_new_flow = 1, 1, 0)", "Flow", "Flow", "New Flows"),
            counter("closed_flow", "if(close_type != 5, 1, 0)", "Flow", "Flow", "Closed Flows"),
            *_txrx("total_byte", "Byte", "Throughput", "Total Bytes"),
            *_txrx("total_packet", "Packet", "Throughput", "Total Packets"),
            counter("fin_count", "fin_count", "Packet", "TCP Slow", "FIN Packets"),
            counter("l7_server_timeout", "l7_server_timeout", "Response", "Application", "Timeouts"),
            counter("l7_parse_failed", "l7_parse_failed", "Response", "Application", "Parse Failures"),
            delay("duration", "duration", "Flow Duration", "Flow"),
            delay("tls_rtt", "tls_rtt", "TLS Handshake Delay"),
        ]
        for name, types in (CLOSE_COUNTERS | FAIL_SETS).items():
            cond = f"close_type = {types[0]}" if len(types) == 1 else f"close_type IN ({', '.join(map(str, types))})"
            m.append(counter(name, f"if({cond}, 1, 0)", "Flow", "TCP Error", FAIL_DISPLAY.get(name, name)))
        closed = "if(close_type != 5, 1, 0)"
        m += [ratio(f"{n}_ratio", f"if(close_type IN ({', '.join(map(str, t))}), 1, 0)", closed,
                    f"{FAIL_DISPLAY[n]} Ratio", "TCP Error") for n, t in FAIL_SETS.items()]
    else:
        m += [
            counter("new_flow", "new_flow", "Flow", "Flow", "New Flows"),
            counter("closed_flow", "closed_flow", "Flow", "Flow", "Closed Flows"),
            counter("flow_load", "flow_load", "Flow", "Flow", "Concurrent Flows", kind=GAUGE),
            counter("l7_timeout", "l7_timeout", "Response", "Application", "Timeouts"),
            ratio("l7_timeout_ratio", "l7_timeout", "l7_request", "Timeout Ratio", "Application"),
        ]
        m += [counter(n, n, "Flow", "TCP Error", FAIL_DISPLAY.get(n, n)) for n in (*CLOSE_COUNTERS, *FAIL_SETS)]
        m += [ratio(f"{n}_ratio", n, "closed_flow", f"{FAIL_DISPLAY[n]} Ratio", "TCP Error") for n in FAIL_SETS]
    return m


def _l7_flow_log_metrics() -> list[Metric]:
    request, response = "if(type IN (0, 2), 1, 0)", "if(type IN (1, 2), 1, 0)"
    error = "if(response_status IN (3, 4), 1, 0)"
    client, server, timeout = ("if(response_status = 4, 1, 0)", "if(response_status = 3, 1, 0)",
                               "if(response_status = 2, 1, 0)")
    return [
        counter("log_count", "1", "Log", "Request", "Log Count"),
        counter("request", request, "Request", "Request", "Requests"),
        counter("response", response, "Response", "Request", "Responses"),
        counter("error", error, "Response", "Error", "Errors"),
        counter("client_error", client, "Response", "Error", "Client Errors"),
        counter("server_error", server, "Response", "Error", "Server Errors"),
        counter("timeout", timeout, "Request", "Error", "Timeouts"),
        ratio("error_ratio", error, response, "Error Ratio", "Error"),
        ratio("client_error_ratio", client, response, "Client Error Ratio", "Error"),
        ratio("server_error_ratio", server, response, "Server Error Ratio", "Error"),
        ratio("timeout_ratio", timeout, request, "Timeout Ratio", "Error"),
        ratio("success_ratio", error, response, "Success Ratio", "Error", one_minus=True),
        ratio("response_ratio", response, request, "Response Ratio", "Request"),
        delay("response_duration", "response_duration", "Response Delay"),
        counter("request_length", "ifNull(request_length, 0)", "Byte", "Throughput", "Request Length"),
        counter("response_length", "ifNull(response_length, 0)", "Byte", "Throughput", "Response Length"),
        counter("session_length", "ifNull(request_length, 0) + ifNull(response_length, 0)", "Byte", "Throughput",
                "Session Length"),
        counter("sql_affected_rows", "ifNull(sql_affected_rows, 0)", "Row", "Throughput", "SQL Affected Rows"),
        counter("captured_request_byte", "captured_request_byte", "Byte", "Throughput", "Captured Request Bytes"),
        counter("captured_response_byte", "captured_response_byte", "Byte", "Throughput",
                "Captured Response Bytes"),
        counter("direction_score", "direction_score", "", "Request", "Direction Score", kind=BOUNDED_GAUGE),
    ]


def _application_metrics() -> list[Metric]:
    return [
        counter("request", "request", "Request", "Request", "Requests"),
        counter("response", "response", "Response", "Request", "Responses"),
        counter("error", "error", "Response", "Error", "Errors"),
        counter("client_error", "client_error", "Response", "Error", "Client Errors"),
        counter("server_error", "server_error", "Response", "Error", "Server Errors"),
        counter("timeout", "timeout", "Request", "Error", "Timeouts"),
        ratio("error_ratio", "error", "response", "Error Ratio", "Error"),
        ratio("client_error_ratio", "client_error", "response", "Client Error Ratio", "Error"),
        ratio("server_error_ratio", "server_error", "response", "Server Error Ratio", "Error"),
        ratio("timeout_ratio", "timeout", "request", "Timeout Ratio", "Error"),
        ratio("success_ratio", "error", "response", "Success Ratio", "Error", one_minus=True),
        ratio("response_ratio", "response", "request", "Response Ratio", "Request"),
        mean_delay("rrt", "rrt_sum", "rrt_count", "Application Response Delay"),
        delay("rrt_max", "rrt_max", "Max Application Response Delay"),
        counter("direction_score", "direction_score", "", "Request", "Direction Score", kind=BOUNDED_GAUGE),
    ]


ROW = Metric("row", OTHER, "", "Other", "Rows", "1")

_METRICS_BY_TABLE = {
    "l4_flow_log": lambda: _network_metrics(True),
    "l7_flow_log": _l7_flow_log_metrics,
    "network": lambda: _network_metrics(False),
    "network_map": lambda: _network_metrics(False),
    "application": _application_metrics,
    "application_map": _application_metrics,
}

# ---------------------------------------------------------------------------------------------------
# Functions (querier metrics/function.go; `show metrics functions`)

AGG, MATH = 1, 3


@dataclass(frozen=True)
class Function:
    name: str
    type: int
    metric_types: tuple[int, ...]
    unit: str = "$unit"
    params: int = 0
    other_operators: bool = True
    value_type: str = "Float64"
    # the metric types this function can be computed on in one layer (METRICS_TYPE_UNLAY_FUNCTIONS)
    one_layer: frozenset[int] = field(default_factory=frozenset)


_NUMERIC = (COUNTER, GAUGE, DELAY, PERCENTAGE, QUOTIENT, BOUNDED_GAUGE)
FUNCTIONS: dict[str, Function] = {f.name: f for f in (
    Function("Sum", AGG, (COUNTER, GAUGE, DELAY), one_layer=frozenset({COUNTER})),
    Function("Avg", AGG, _NUMERIC, one_layer=frozenset({COUNTER, GAUGE, DELAY, BOUNDED_GAUGE, PERCENTAGE,
                                                         QUOTIENT})),
    Function("AAvg", AGG, _NUMERIC, one_layer=frozenset({DELAY, BOUNDED_GAUGE})),
    Function("Max", AGG, _NUMERIC, one_layer=frozenset({DELAY, BOUNDED_GAUGE})),
    Function("Min", AGG, _NUMERIC, one_layer=frozenset({DELAY, BOUNDED_GAUGE})),
    Function("Last", AGG, _NUMERIC, one_layer=frozenset({DELAY, BOUNDED_GAUGE})),
    Function("Percentile", AGG, _NUMERIC, params=1, one_layer=frozenset({DELAY, BOUNDED_GAUGE})),
    Function("PercentileExact", AGG, _NUMERIC, params=1, one_layer=frozenset({DELAY, BOUNDED_GAUGE})),
    Function("Spread", AGG, _NUMERIC),
    Function("Rspread", AGG, _NUMERIC, unit=""),
    Function("Stddev", AGG, _NUMERIC),
    Function("Apdex", AGG, (DELAY,), unit="%", params=1),
    Function("Uniq", AGG, (TAG_TYPE,), unit="", value_type="UInt64", one_layer=frozenset({TAG_TYPE})),
    Function("UniqExact", AGG, (TAG_TYPE,), unit="", value_type="UInt64", one_layer=frozenset({TAG_TYPE})),
    Function("Count", AGG, (OTHER,), unit="", value_type="UInt64", one_layer=frozenset({OTHER})),
    Function("TopK", AGG, (TAG_TYPE,), unit="", params=1, other_operators=False, value_type="String",
             one_layer=frozenset({TAG_TYPE})),
    Function("Any", AGG, (TAG_TYPE,), unit="", other_operators=False, value_type="String",
             one_layer=frozenset({TAG_TYPE})),
    Function("PerSecond", MATH, _NUMERIC, unit="$unit/s"),
    Function("Percentage", MATH, _NUMERIC, unit="%", params=1),
    Function("Histogram", MATH, _NUMERIC, unit="", params=1, other_operators=False, value_type="Array"),
)}
AGGREGATES = frozenset(n for n, f in FUNCTIONS.items() if f.type == AGG)

# ---------------------------------------------------------------------------------------------------
# Per-table views


@dataclass(frozen=True)
class TableCatalog:
    table: Table
    tags: dict[str, Tag]          # base name → tag, only those whose columns are stored
    metrics: dict[str, Metric]
    stored: dict[str, str]        # physical columns → ClickHouse type

    def metric(self, name: str) -> Metric | None:
        """A catalogue metric, or ``metrics.<key>``: a value of the row's own metrics_names/values
        (OTel span metrics on l7_flow_log), NULL where the row lacks it."""
        m = self.metrics.get(name)
        if m is None and name.startswith(METRICS_PREFIX) and "metrics_names" in self.stored:
            key = "'" + name[len(METRICS_PREFIX):].replace("\\", "\\\\").replace("'", "\\'") + "'"
            idx = f"indexOf(metrics_names, {key})"
            m = Metric(name, COUNTER, "", "Metrics", name, f"if({idx} = 0, NULL, metrics_values[{idx}])")
        return m

    def side_names(self, tag: Tag) -> list[tuple[str, str]]:
        """(name as written in SQL, suffix): ``pod_0``/``pod_1`` on peer tables, else ``pod``."""
        if self.table.peer and tag.sided:
            return [(f"{tag.name}_0", "_0"), (f"{tag.name}_1", "_1")]
        return [(tag.name, "")]


@functools.cache
def catalog(db: str, name: str) -> TableCatalog:
    table = TABLES[(db, name)]
    stored = columns(table.sample_physical)
    suffix = "_0" if table.peer else ""

    def available(required: tuple[str, ...]) -> bool:
        return all(c.replace("{s}", suffix) in stored for c in required)

    tags = {t.name: t for t in TAGS if t.kind == "alias" or available(t.required)}
    tags = {n: t for n, t in tags.items() if t.kind != "alias" or t.target in tags}
    metrics = {m.name: m for m in _METRICS_BY_TABLE[name]() if available(m.required)}
    return TableCatalog(table, tags, metrics, stored)


def resolve_table(db: str | None, name: str, precision: str | None) -> tuple[Table, str | None]:
    """DeepFlow's table naming (legacy vtap_* names, ``.1s``/``.1m`` suffix or data_precision, default
    1m) → (table, precision); KeyError for a table that is not stored."""
    base, _, suffix = name.partition(".")
    base = LEGACY_TABLES.get(base, base)
    if (db, base) not in TABLES:
        raise KeyError(base)
    table = TABLES[(db, base)]
    if not table.precisions:
        if suffix:
            raise KeyError(name)
        return table, None
    precision = suffix or precision or DEFAULT_PRECISION
    return table, precision
