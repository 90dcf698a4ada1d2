"""DeepFlow's enums, shared by the collector (writer) and the datasource (reader).

Values and names follow ../shared/reference/deepflow-datamodel.md §4 verbatim; the same tables
fill ``flow_tag.int_enum_map`` / ``string_enum_map`` so ``Enum(x)`` resolves at query time.
Each enum is data: ``{value: (name_en, description_en)}``.
"""

from __future__ import annotations

from enum import IntEnum


class CloseType(IntEnum):
    """Why a flow row was written (agent flow_state.rs names)."""

    UNKNOWN = 0
    FINISH = 1
    TCP_SERVER_RST = 2
    TIMEOUT = 3
    FORCED_REPORT = 5
    CLIENT_SYN_REPEAT = 7
    SERVER_HALF_CLOSE = 8
    TCP_CLIENT_RST = 9
    SERVER_SYN_ACK_REPEAT = 10
    CLIENT_HALF_CLOSE = 11
    CLIENT_SOURCE_PORT_REUSE = 13
    SERVER_RESET = 15
    SERVER_QUEUE_LACK = 17
    CLIENT_ESTABLISH_RESET = 18
    SERVER_ESTABLISH_RESET = 19
    TCP_FIN_CLIENT_RST = 20


class Status(IntEnum):
    """l4 ``status`` (ingester getStatus)."""

    OK = 0
    UNKNOWN = 2
    SERVER_ERROR = 3
    CLIENT_ERROR = 4


class TunnelType(IntEnum):
    NONE = 0
    VXLAN = 1
    IPIP = 2
    GRE = 3
    GENEVE = 4
    VXLAN_NSH = 5


class SignalSource(IntEnum):
    PACKET = 0
    XFLOW = 1
    EBPF = 3
    OTEL = 4


class CaptureNicType(IntEnum):
    LOCAL = 0
    NFV = 1
    ERSPAN_V4 = 2
    ERSPAN_V6 = 3
    MIRROR = 4
    NETFLOW = 5
    SFLOW = 6
    EBPF = 7
    OTEL = 8


class Role(IntEnum):
    """``role`` of a single-side metrics row."""

    CLIENT = 0
    SERVER = 1
    LOCAL = 2
    REST = 3


class L7Type(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    SESSION = 2


class ResponseStatus(IntEnum):
    OK = 0
    TIMEOUT = 2
    SERVER_ERROR = 3
    CLIENT_ERROR = 4
    UNKNOWN = 5
    PARSE_FAILED = 6


# close_type -> (l4 status, name of the per-close_type counter in flow_metrics.network*)
CLOSE_TYPE_STATUS: dict[int, tuple[int, str | None]] = {
    CloseType.UNKNOWN: (Status.UNKNOWN, None),
    CloseType.FINISH: (Status.OK, None),
    CloseType.TCP_SERVER_RST: (Status.SERVER_ERROR, "server_rst_flow"),
    CloseType.TIMEOUT: (Status.SERVER_ERROR, "tcp_timeout"),
    CloseType.FORCED_REPORT: (Status.OK, None),
    CloseType.CLIENT_SYN_REPEAT: (Status.SERVER_ERROR, "server_syn_miss"),
    CloseType.SERVER_HALF_CLOSE: (Status.OK, "server_half_close_flow"),
    CloseType.TCP_CLIENT_RST: (Status.CLIENT_ERROR, "client_rst_flow"),
    CloseType.SERVER_SYN_ACK_REPEAT: (Status.CLIENT_ERROR, "client_ack_miss"),
    CloseType.CLIENT_HALF_CLOSE: (Status.OK, "client_half_close_flow"),
    CloseType.CLIENT_SOURCE_PORT_REUSE: (Status.CLIENT_ERROR, "client_source_port_reuse"),
    CloseType.SERVER_RESET: (Status.SERVER_ERROR, "server_reset"),
    CloseType.SERVER_QUEUE_LACK: (Status.SERVER_ERROR, "server_queue_lack"),
    CloseType.CLIENT_ESTABLISH_RESET: (Status.CLIENT_ERROR, "client_establish_other_rst"),
    CloseType.SERVER_ESTABLISH_RESET: (Status.SERVER_ERROR, "server_establish_other_rst"),
    CloseType.TCP_FIN_CLIENT_RST: (Status.OK, None),
}

# Stored failure sums in flow_metrics.network* (datamodel §3b "stored sums").
FAIL_SUMS: dict[str, tuple[str, ...]] = {
    "client_establish_fail": ("client_ack_miss", "client_source_port_reuse", "client_establish_other_rst"),
    "server_establish_fail": ("server_syn_miss", "server_reset", "server_queue_lack",
                              "server_establish_other_rst"),
    "tcp_establish_fail": ("client_ack_miss", "client_source_port_reuse", "client_establish_other_rst",
                           "server_syn_miss", "server_reset", "server_queue_lack",
                           "server_establish_other_rst"),
    "tcp_transfer_fail": ("client_rst_flow", "server_rst_flow", "server_queue_lack", "tcp_timeout"),
    "tcp_rst_fail": ("client_rst_flow", "server_rst_flow", "server_reset", "client_establish_other_rst",
                     "server_establish_other_rst"),
}
CLOSE_COUNTERS: tuple[str, ...] = tuple(sorted({c for _, c in CLOSE_TYPE_STATUS.values() if c}))

# observation_point strings (stored as strings) and the agent's u8 encoding.
OBSERVATION_POINTS: dict[str, tuple[int, str]] = {
    "rest": (0, "Other NIC: direction unknown (BUM traffic or both ends ambiguous)"),
    "c": (1, "Client NIC: the client's own NIC (pod veth, vNIC, host NIC)"),
    "s": (2, "Server NIC: the server's own NIC (pod veth, vNIC, host NIC)"),
    "local": (4, "Local NIC: both ends on this host / loopback"),
    "c-nd": (9, "Client K8s Node: the client's node NIC (routed, SNATed or encapsulated)"),
    "s-nd": (10, "Server K8s Node: the server's node NIC (routed, SNATed or encapsulated)"),
    "c-hv": (17, "Client Hypervisor"),
    "s-hv": (18, "Server Hypervisor"),
    "c-gw-hv": (25, "Client Gateway Hypervisor"),
    "s-gw-hv": (26, "Server Gateway Hypervisor"),
    "c-gw": (33, "Client Gateway"),
    "s-gw": (34, "Server Gateway"),
    "c-p": (41, "Client Process: syscalls of the client process"),
    "s-p": (42, "Server Process: syscalls of the server process"),
    "app": (48, "App: OTel span (internal)"),
    "c-app": (49, "Client App: OTel span of kind CLIENT/PRODUCER"),
    "s-app": (50, "Server App: OTel span of kind SERVER/CONSUMER"),
}

L7_PROTOCOLS: dict[int, str] = {
    0: "N/A", 20: "HTTP", 21: "HTTP2", 40: "Dubbo", 41: "gRPC", 43: "SofaRPC", 44: "FastCGI", 45: "bRPC",
    46: "Tars", 47: "SOME/IP", 48: "ISO-8583", 49: "Triple", 50: "NetSign", 60: "MySQL", 61: "PostgreSQL",
    62: "Oracle", 63: "Dameng", 80: "Redis", 81: "MongoDB", 82: "Memcached", 100: "Kafka", 101: "MQTT",
    102: "AMQP", 103: "OpenWire", 104: "NATS", 105: "Pulsar", 106: "ZMTP", 107: "RocketMQ",
    108: "WebSphereMQ", 120: "DNS", 121: "TLS", 122: "Ping", 127: "Custom",
}

IP_PROTOCOLS: dict[int, str] = {0: "HOPOPT", 1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 17: "UDP",
                                41: "IPv6", 47: "GRE", 50: "ESP", 51: "AH", 58: "ICMPv6", 132: "SCTP"}

AUTO_TYPES: dict[int, str] = {
    0: "Internet IP", 1: "Cloud Host", 5: "vRouter", 6: "Host", 9: "DHCP Gateway", 10: "K8s Pod",
    11: "K8s Service", 12: "Redis", 13: "RDS", 14: "K8s Node", 15: "LB", 16: "NAT Gateway",
    101: "K8s Workload", 102: "Service", 103: "K8s Cluster", 104: "Biz Service", 105: "Custom Biz Service",
    120: "Process", 130: "K8s Deployment", 131: "K8s StatefulSet", 132: "K8s ReplicationController",
    133: "K8s DaemonSet", 134: "K8s ReplicaSet Controller", 135: "K8s CloneSet", 255: "IP",
}

TCP_FLAG_BITS: dict[int, str] = {1: "FIN", 2: "SYN", 4: "RST", 8: "PSH", 16: "ACK", 32: "URG", 64: "ECE",
                                 128: "CWR", 256: "NS"}



# Integer enums by tag name (the "enum file" name DeepFlow's Enum(x) looks up).
INT_ENUMS: dict[str, dict[int, tuple[str, str]]] = {
    "close_type": {
        0: ("Unknown", "Impossible flag combination"),
        1: ("Normal – Finish", "Closed by FIN, or a non-TCP flow that ended"),
        2: ("Transfer – Server RST", "RST from the server during the transfer"),
        3: ("Transfer – Timeout", "Established and idle until the timeout"),
        5: ("Forced Report", "The flow is still alive: periodic row"),
        7: ("Est. – Server SYN Miss", "Only client SYNs, never answered"),
        8: ("Normal – Server Half Close", "The client sent FIN, the server never did"),
        9: ("Transfer – Client RST", "RST from the client with no prior successful response"),
        10: ("Est. – Client ACK Miss", "SYN-ACK sent, the final ACK never came"),
        11: ("Normal – Client Half Close", "The server sent FIN, the client never did"),
        13: ("Est. – Client Port Reuse", "SYN answered by a bare ACK, then client RST"),
        15: ("Est. – Server RST", "SYN answered by RST"),
        17: ("Transfer – Server Queue Lack", "The server keeps retransmitting SYN-ACK"),
        18: ("Est. – Client Other RST", "RST from the client during the handshake"),
        19: ("Est. – Server Other RST", "RST from the server during the handshake"),
        20: ("Normal – Client RST", "Client RST after a successful exchange"),
    },
    "status": {0: ("Success", ""), 2: ("Unknown", ""), 3: ("Server Error", ""), 4: ("Client Error", "")},
    "response_status": {0: ("Success", ""), 2: ("Timeout", "No response within the timeout"),
                        3: ("Server Error", ""), 4: ("Client Error", ""),
                        5: ("Unknown", "Evicted from the session cache"),
                        6: ("Parse Failed", "Payload truncated or unparsable")},
    "tunnel_type": {0: ("None", ""), 1: ("VXLAN", ""), 2: ("IPIP", ""), 3: ("GRE", ""), 4: ("Geneve", ""),
                    5: ("VXLAN-NSH", "")},
    "signal_source": {0: ("Packet", "cBPF packet capture"), 1: ("xFlow", ""), 3: ("eBPF", ""),
                      4: ("OTel", "")},
    "capture_nic_type": {m.value: (m.name.replace("_", " ").title(), "") for m in CaptureNicType},
    "role": {0: ("Client", ""), 1: ("Server", ""), 2: ("Local", ""), 3: ("Rest", "")},
    "l7_type": {0: ("Request", "Unpaired request"), 1: ("Response", "Orphan response"),
                2: ("Session", "Request and response")},
    "l7_protocol": {k: (v, "") for k, v in L7_PROTOCOLS.items()},
    "protocol": {k: (v, "") for k, v in IP_PROTOCOLS.items()},
    "auto_instance_type": {k: (v, "") for k, v in AUTO_TYPES.items() if k < 100 or k in (120, 255)},
    "auto_service_type": {k: (v, "") for k, v in AUTO_TYPES.items()},
    "tcp_flags_bit": {k: (v, "") for k, v in TCP_FLAG_BITS.items()},
    "nat_source": {0: ("None", ""), 2: ("VIP", ""), 4: ("RTOA", ""), 6: ("TOA", "")},
    "is_ipv4": {0: ("IPv6", ""), 1: ("IPv4", "")},
    "eth_type": {0x0800: ("IPv4", ""), 0x86DD: ("IPv6", ""), 0x0806: ("ARP", ""), 0x8100: ("802.1Q", "")},
}

# String enums by tag name.
STRING_ENUMS: dict[str, dict[str, tuple[str, str]]] = {
    "observation_point": {k: (v[1].split(":")[0], v[1]) for k, v in OBSERVATION_POINTS.items()},
}
