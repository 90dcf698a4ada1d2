-- flow_metrics: pre-aggregated 1 s and 1 m tables (reference/deepflow-datamodel.md §3).
--   network / application:         one end (keyed by its IP, with role 0 client, 1 server, 2 local, 3 rest);
--   network_map / application_map: both ends (_0 client, _1 server) per observation point.
-- Meters follow the sum/count/max convention: *_sum Float64, *_count UInt64, *_max UInt32; averages
-- are computed at query time. Counters are UInt64 except l7_*_error/l7_timeout (UInt32) and
-- direction_score (UInt8, max).
-- Column defaults as in 0002 (type zero; team_id 1, capture_network_type_id 3, is_ipv4 from ip6).
-- Tags follow the sort key and compress with plain ZSTD; UInt64 meters use T64 + ZSTD.
-- Each .1s table has the columns of its .1m table (CREATE … AS) with 4 h partitions instead of 12 h.

CREATE TABLE IF NOT EXISTS flow_metrics.`network.1m`
(
    -- tags (§3a): one end, keyed by its IP with its role (0 client, 1 server, 2 local, 3 rest)
    time                        DateTime  DEFAULT now()  CODEC(DoubleDelta, ZSTD(1)),
    _ingest_time                DateTime  DEFAULT now()  CODEC(DoubleDelta, ZSTD(1)),
    region_id                   UInt16    CODEC(ZSTD(1)),
    az_id                       UInt16    CODEC(ZSTD(1)),
    host_id                     UInt16    CODEC(ZSTD(1)),
    l3_device_type              UInt8     CODEC(ZSTD(1)),
    l3_device_id                UInt32    CODEC(ZSTD(1)),
    pod_node_id                 UInt32    CODEC(ZSTD(1)),
    pod_ns_id                   UInt16    CODEC(ZSTD(1)),
    pod_group_id                UInt32    CODEC(ZSTD(1)),
    pod_id                      UInt32    CODEC(ZSTD(1)),
    pod_cluster_id              UInt16    CODEC(ZSTD(1)),
    l3_epc_id                   Int32     CODEC(ZSTD(1)),
    subnet_id                   UInt16    CODEC(ZSTD(1)),
    service_id                  UInt32    CODEC(ZSTD(1)),
    auto_instance_id            UInt32    CODEC(ZSTD(1)),
    auto_instance_type          UInt8     CODEC(ZSTD(1)),
    auto_service_id             UInt32    CODEC(ZSTD(1)),
    auto_service_type           UInt8     CODEC(ZSTD(1)),
    gprocess_id                 UInt32    CODEC(ZSTD(1)),
    tag_source                  UInt8     CODEC(ZSTD(1)),
    ip4                         IPv4      CODEC(ZSTD(1)),
    ip6                         IPv6      CODEC(ZSTD(1)),
    is_ipv4                     UInt8     DEFAULT (ip6 = toIPv6('::'))  CODEC(ZSTD(1)),
    role                        UInt8     CODEC(ZSTD(1)),
    protocol                    UInt8     CODEC(ZSTD(1)),
    server_port                 UInt16    CODEC(ZSTD(1)),
    signal_source               UInt16    CODEC(ZSTD(1)),
    capture_network_type_id     UInt8     DEFAULT 3  CODEC(ZSTD(1)),
    agent_id                    UInt16    CODEC(ZSTD(1)),
    team_id                     UInt16    DEFAULT 1  CODEC(ZSTD(1)),
    is_key_service              UInt8     CODEC(ZSTD(1)),
    -- traffic meters (§3b)
    packet_tx                   UInt64    CODEC(T64, ZSTD(1)),
    packet_rx                   UInt64    CODEC(T64, ZSTD(1)),
    byte_tx                     UInt64    CODEC(T64, ZSTD(1)),
    byte_rx                     UInt64    CODEC(T64, ZSTD(1)),
    l3_byte_tx                  UInt64    CODEC(T64, ZSTD(1)),
    l3_byte_rx                  UInt64    CODEC(T64, ZSTD(1)),
    l4_byte_tx                  UInt64    CODEC(T64, ZSTD(1)),
    l4_byte_rx                  UInt64    CODEC(T64, ZSTD(1)),
    new_flow                    UInt64    CODEC(T64, ZSTD(1)),
    closed_flow                 UInt64    CODEC(T64, ZSTD(1)),
    flow_load                   UInt64    CODEC(T64, ZSTD(1)),
    l7_request                  UInt64    CODEC(T64, ZSTD(1)),
    l7_response                 UInt64    CODEC(T64, ZSTD(1)),
    syn_count                   UInt64    CODEC(T64, ZSTD(1)),
    synack_count                UInt64    CODEC(T64, ZSTD(1)),
    direction_score             UInt8     CODEC(ZSTD(1)),
    -- latency: _sum / _count / _max, averages are computed at query time
    rtt_sum                     Float64   CODEC(ZSTD(1)),
    rtt_count                   UInt64    CODEC(T64, ZSTD(1)),
    rtt_max                     UInt32    CODEC(ZSTD(1)),
    rtt_client_sum              Float64   CODEC(ZSTD(1)),
    rtt_client_count            UInt64    CODEC(T64, ZSTD(1)),
    rtt_client_max              UInt32    CODEC(ZSTD(1)),
    rtt_server_sum              Float64   CODEC(ZSTD(1)),
    rtt_server_count            UInt64    CODEC(T64, ZSTD(1)),
    rtt_server_max              UInt32    CODEC(ZSTD(1)),
    srt_sum                     Float64   CODEC(ZSTD(1)),
    srt_count                   UInt64    CODEC(T64, ZSTD(1)),
    srt_max                     UInt32    CODEC(ZSTD(1)),
    art_sum                     Float64   CODEC(ZSTD(1)),
    art_count                   UInt64    CODEC(T64, ZSTD(1)),
    art_max                     UInt32    CODEC(ZSTD(1)),
    rrt_sum                     Float64   CODEC(ZSTD(1)),
    rrt_count                   UInt64    CODEC(T64, ZSTD(1)),
    rrt_max                     UInt32    CODEC(ZSTD(1)),
    cit_sum                     Float64   CODEC(ZSTD(1)),
    cit_count                   UInt64    CODEC(T64, ZSTD(1)),
    cit_max                     UInt32    CODEC(ZSTD(1)),
    -- performance
    retrans_tx                  UInt64    CODEC(T64, ZSTD(1)),
    retrans_rx                  UInt64    CODEC(T64, ZSTD(1)),
    zero_win_tx                 UInt64    CODEC(T64, ZSTD(1)),
    zero_win_rx                 UInt64    CODEC(T64, ZSTD(1)),
    retrans_syn                 UInt64    CODEC(T64, ZSTD(1)),
    retrans_synack              UInt64    CODEC(T64, ZSTD(1)),
    -- anomaly: one counter per close_type (§4), then the stored sums of flowscope.enums.FAIL_SUMS
    client_rst_flow             UInt64    CODEC(T64, ZSTD(1)),
    server_rst_flow             UInt64    CODEC(T64, ZSTD(1)),
    server_syn_miss             UInt64    CODEC(T64, ZSTD(1)),
    client_ack_miss             UInt64    CODEC(T64, ZSTD(1)),
    client_half_close_flow      UInt64    CODEC(T64, ZSTD(1)),
    server_half_close_flow      UInt64    CODEC(T64, ZSTD(1)),
    client_source_port_reuse    UInt64    CODEC(T64, ZSTD(1)),
    server_reset                UInt64    CODEC(T64, ZSTD(1)),
    server_queue_lack           UInt64    CODEC(T64, ZSTD(1)),
    client_establish_other_rst  UInt64    CODEC(T64, ZSTD(1)),
    server_establish_other_rst  UInt64    CODEC(T64, ZSTD(1)),
    tcp_timeout                 UInt64    CODEC(T64, ZSTD(1)),
    client_establish_fail       UInt64    CODEC(T64, ZSTD(1)),
    server_establish_fail       UInt64    CODEC(T64, ZSTD(1)),
    tcp_establish_fail          UInt64    CODEC(T64, ZSTD(1)),
    tcp_transfer_fail           UInt64    CODEC(T64, ZSTD(1)),
    tcp_rst_fail                UInt64    CODEC(T64, ZSTD(1)),
    ooo_tx                      UInt64    CODEC(T64, ZSTD(1)),
    ooo_rx                      UInt64    CODEC(T64, ZSTD(1)),
    l7_client_error             UInt32    CODEC(ZSTD(1)),
    l7_server_error             UInt32    CODEC(ZSTD(1)),
    l7_timeout                  UInt32    CODEC(ZSTD(1)),
    l7_error                    UInt32    CODEC(ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toStartOfInterval(time, INTERVAL 12 HOUR)
ORDER BY (time, l3_epc_id, ip4, ip6, server_port)
TTL _ingest_time + INTERVAL 168 HOUR
SETTINGS ttl_only_drop_parts = 1, ratio_of_defaults_for_sparse_serialization = 1;

CREATE TABLE IF NOT EXISTS flow_metrics.`network.1s` AS flow_metrics.`network.1m`
ENGINE = MergeTree
PARTITION BY toStartOfInterval(time, INTERVAL 4 HOUR)
ORDER BY (time, l3_epc_id, ip4, ip6, server_port)
TTL _ingest_time + INTERVAL 24 HOUR
SETTINGS ttl_only_drop_parts = 1, ratio_of_defaults_for_sparse_serialization = 1;

CREATE TABLE IF NOT EXISTS flow_metrics.`network_map.1m`
(
    -- tags (§3a): both ends, _0 = client, _1 = server, per observation point
    time                        DateTime                DEFAULT now()  CODEC(DoubleDelta, ZSTD(1)),
    _ingest_time                DateTime                DEFAULT now()  CODEC(DoubleDelta, ZSTD(1)),
    region_id_0                 UInt16                  CODEC(ZSTD(1)),
    region_id_1                 UInt16                  CODEC(ZSTD(1)),
    az_id_0                     UInt16                  CODEC(ZSTD(1)),
    az_id_1                     UInt16                  CODEC(ZSTD(1)),
    host_id_0                   UInt16                  CODEC(ZSTD(1)),
    host_id_1                   UInt16                  CODEC(ZSTD(1)),
    l3_device_type_0            UInt8                   CODEC(ZSTD(1)),
    l3_device_type_1            UInt8                   CODEC(ZSTD(1)),
    l3_device_id_0              UInt32                  CODEC(ZSTD(1)),
    l3_device_id_1              UInt32                  CODEC(ZSTD(1)),
    pod_node_id_0               UInt32                  CODEC(ZSTD(1)),
    pod_node_id_1               UInt32                  CODEC(ZSTD(1)),
    pod_ns_id_0                 UInt16                  CODEC(ZSTD(1)),
    pod_ns_id_1                 UInt16                  CODEC(ZSTD(1)),
    pod_group_id_0              UInt32                  CODEC(ZSTD(1)),
    pod_group_id_1              UInt32                  CODEC(ZSTD(1)),
    pod_id_0                    UInt32                  CODEC(ZSTD(1)),
    pod_id_1                    UInt32                  CODEC(ZSTD(1)),
    pod_cluster_id_0            UInt16                  CODEC(ZSTD(1)),
    pod_cluster_id_1            UInt16                  CODEC(ZSTD(1)),
    l3_epc_id_0                 Int32                   CODEC(ZSTD(1)),
    l3_epc_id_1                 Int32                   CODEC(ZSTD(1)),
    subnet_id_0                 UInt16                  CODEC(ZSTD(1)),
    subnet_id_1                 UInt16                  CODEC(ZSTD(1)),
    service_id_0                UInt32                  CODEC(ZSTD(1)),
    service_id_1                UInt32                  CODEC(ZSTD(1)),
    auto_instance_id_0          UInt32                  CODEC(ZSTD(1)),
    auto_instance_id_1          UInt32                  CODEC(ZSTD(1)),
    auto_instance_type_0        UInt8                   CODEC(ZSTD(1)),
    auto_instance_type_1        UInt8                   CODEC(ZSTD(1)),
    auto_service_id_0           UInt32                  CODEC(ZSTD(1)),
    auto_service_id_1           UInt32                  CODEC(ZSTD(1)),
    auto_service_type_0         UInt8                   CODEC(ZSTD(1)),
    auto_service_type_1         UInt8                   CODEC(ZSTD(1)),
    gprocess_id_0               UInt32                  CODEC(ZSTD(1)),
    gprocess_id_1               UInt32                  CODEC(ZSTD(1)),
    tag_source_0                UInt8                   CODEC(ZSTD(1)),
    tag_source_1                UInt8                   CODEC(ZSTD(1)),
    ip4_0                       IPv4                    CODEC(ZSTD(1)),
    ip4_1                       IPv4                    CODEC(ZSTD(1)),
    ip6_0                       IPv6                    CODEC(ZSTD(1)),
    ip6_1                       IPv6                    CODEC(ZSTD(1)),
    is_ipv4                     UInt8                   DEFAULT (ip6_0 = toIPv6('::') AND ip6_1 = toIPv6('::'))  CODEC(ZSTD(1)),
    protocol                    UInt8                   CODEC(ZSTD(1)),
    server_port                 UInt16                  CODEC(ZSTD(1)),
    signal_source               UInt16                  CODEC(ZSTD(1)),
    capture_network_type_id     UInt8                   DEFAULT 3  CODEC(ZSTD(1)),
    agent_id                    UInt16                  CODEC(ZSTD(1)),
    team_id                     UInt16                  DEFAULT 1  CODEC(ZSTD(1)),
    is_key_service              UInt8                   CODEC(ZSTD(1)),
    observation_point           LowCardinality(String)  CODEC(ZSTD(1)),
    capture_nic                 UInt32                  CODEC(ZSTD(1)),
    capture_nic_type            UInt8                   CODEC(ZSTD(1)),
    tunnel_type                 UInt8                   CODEC(ZSTD(1)),
    nat_source                  UInt8                   CODEC(ZSTD(1)),
    -- traffic meters (§3b)
    packet_tx                   UInt64                  CODEC(T64, ZSTD(1)),
    packet_rx                   UInt64                  CODEC(T64, ZSTD(1)),
    byte_tx                     UInt64                  CODEC(T64, ZSTD(1)),
    byte_rx                     UInt64                  CODEC(T64, ZSTD(1)),
    l3_byte_tx                  UInt64                  CODEC(T64, ZSTD(1)),
    l3_byte_rx                  UInt64                  CODEC(T64, ZSTD(1)),
    l4_byte_tx                  UInt64                  CODEC(T64, ZSTD(1)),
    l4_byte_rx                  UInt64                  CODEC(T64, ZSTD(1)),
    new_flow                    UInt64                  CODEC(T64, ZSTD(1)),
    closed_flow                 UInt64                  CODEC(T64, ZSTD(1)),
    flow_load                   UInt64                  CODEC(T64, ZSTD(1)),
    l7_request                  UInt64                  CODEC(T64, ZSTD(1)),
    l7_response                 UInt64                  CODEC(T64, ZSTD(1)),
    syn_count                   UInt64                  CODEC(T64, ZSTD(1)),
    synack_count                UInt64                  CODEC(T64, ZSTD(1)),
    direction_score             UInt8                   CODEC(ZSTD(1)),
    -- latency: _sum / _count / _max, averages are computed at query time
    rtt_sum                     Float64                 CODEC(ZSTD(1)),
    rtt_count                   UInt64                  CODEC(T64, ZSTD(1)),
    rtt_max                     UInt32                  CODEC(ZSTD(1)),
    rtt_client_sum              Float64                 CODEC(ZSTD(1)),
    rtt_client_count            UInt64                  CODEC(T64, ZSTD(1)),
    rtt_client_max              UInt32                  CODEC(ZSTD(1)),
    rtt_server_sum              Float64                 CODEC(ZSTD(1)),
    rtt_server_count            UInt64                  CODEC(T64, ZSTD(1)),
    rtt_server_max              UInt32                  CODEC(ZSTD(1)),
    srt_sum                     Float64                 CODEC(ZSTD(1)),
    srt_count                   UInt64                  CODEC(T64, ZSTD(1)),
    srt_max                     UInt32                  CODEC(ZSTD(1)),
    art_sum                     Float64                 CODEC(ZSTD(1)),
    art_count                   UInt64                  CODEC(T64, ZSTD(1)),
    art_max                     UInt32                  CODEC(ZSTD(1)),
    rrt_sum                     Float64                 CODEC(ZSTD(1)),
    rrt_count                   UInt64                  CODEC(T64, ZSTD(1)),
    rrt_max                     UInt32                  CODEC(ZSTD(1)),
    cit_sum                     Float64                 CODEC(ZSTD(1)),
    cit_count                   UInt64                  CODEC(T64, ZSTD(1)),
    cit_max                     UInt32                  CODEC(ZSTD(1)),
    -- performance
    retrans_tx                  UInt64                  CODEC(T64, ZSTD(1)),
    retrans_rx                  UInt64                  CODEC(T64, ZSTD(1)),
    zero_win_tx                 UInt64                  CODEC(T64, ZSTD(1)),
    zero_win_rx                 UInt64                  CODEC(T64, ZSTD(1)),
    retrans_syn                 UInt64                  CODEC(T64, ZSTD(1)),
    retrans_synack              UInt64                  CODEC(T64, ZSTD(1)),
    -- anomaly: one counter per close_type (§4), then the stored sums of flowscope.enums.FAIL_SUMS
    client_rst_flow             UInt64                  CODEC(T64, ZSTD(1)),
    server_rst_flow             UInt64                  CODEC(T64, ZSTD(1)),
    server_syn_miss             UInt64                  CODEC(T64, ZSTD(1)),
    client_ack_miss             UInt64                  CODEC(T64, ZSTD(1)),
    client_half_close_flow      UInt64                  CODEC(T64, ZSTD(1)),
    server_half_close_flow      UInt64                  CODEC(T64, ZSTD(1)),
    client_source_port_reuse    UInt64                  CODEC(T64, ZSTD(1)),
    server_reset                UInt64                  CODEC(T64, ZSTD(1)),
    server_queue_lack           UInt64                  CODEC(T64, ZSTD(1)),
    client_establish_other_rst  UInt64                  CODEC(T64, ZSTD(1)),
    server_establish_other_rst  UInt64                  CODEC(T64, ZSTD(1)),
    tcp_timeout                 UInt64                  CODEC(T64, ZSTD(1)),
    client_establish_fail       UInt64                  CODEC(T64, ZSTD(1)),
    server_establish_fail       UInt64                  CODEC(T64, ZSTD(1)),
    tcp_establish_fail          UInt64                  CODEC(T64, ZSTD(1)),
    tcp_transfer_fail           UInt64                  CODEC(T64, ZSTD(1)),
    tcp_rst_fail                UInt64                  CODEC(T64, ZSTD(1)),
    ooo_tx                      UInt64                  CODEC(T64, ZSTD(1)),
    ooo_rx                      UInt64                  CODEC(T64, ZSTD(1)),
    l7_client_error             UInt32                  CODEC(ZSTD(1)),
    l7_server_error             UInt32                  CODEC(ZSTD(1)),
    l7_timeout                  UInt32                  CODEC(ZSTD(1)),
    l7_error                    UInt32                  CODEC(ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toStartOfInterval(time, INTERVAL 12 HOUR)
ORDER BY (time, l3_epc_id_1, ip4_1, ip6_1, l3_epc_id_0, ip4_0, ip6_0, server_port)
TTL _ingest_time + INTERVAL 168 HOUR
SETTINGS ttl_only_drop_parts = 1, ratio_of_defaults_for_sparse_serialization = 1;

CREATE TABLE IF NOT EXISTS flow_metrics.`network_map.1s` AS flow_metrics.`network_map.1m`
ENGINE = MergeTree
PARTITION BY toStartOfInterval(time, INTERVAL 4 HOUR)
ORDER BY (time, l3_epc_id_1, ip4_1, ip6_1, l3_epc_id_0, ip4_0, ip6_0, server_port)
TTL _ingest_time + INTERVAL 24 HOUR
SETTINGS ttl_only_drop_parts = 1, ratio_of_defaults_for_sparse_serialization = 1;

CREATE TABLE IF NOT EXISTS flow_metrics.`application.1m`
(
    -- tags (§3a): one end, keyed by its IP with its role (0 client, 1 server, 2 local, 3 rest)
    time                     DateTime                DEFAULT now()  CODEC(DoubleDelta, ZSTD(1)),
    _ingest_time             DateTime                DEFAULT now()  CODEC(DoubleDelta, ZSTD(1)),
    region_id                UInt16                  CODEC(ZSTD(1)),
    az_id                    UInt16                  CODEC(ZSTD(1)),
    host_id                  UInt16                  CODEC(ZSTD(1)),
    l3_device_type           UInt8                   CODEC(ZSTD(1)),
    l3_device_id             UInt32                  CODEC(ZSTD(1)),
    pod_node_id              UInt32                  CODEC(ZSTD(1)),
    pod_ns_id                UInt16                  CODEC(ZSTD(1)),
    pod_group_id             UInt32                  CODEC(ZSTD(1)),
    pod_id                   UInt32                  CODEC(ZSTD(1)),
    pod_cluster_id           UInt16                  CODEC(ZSTD(1)),
    l3_epc_id                Int32                   CODEC(ZSTD(1)),
    subnet_id                UInt16                  CODEC(ZSTD(1)),
    service_id               UInt32                  CODEC(ZSTD(1)),
    auto_instance_id         UInt32                  CODEC(ZSTD(1)),
    auto_instance_type       UInt8                   CODEC(ZSTD(1)),
    auto_service_id          UInt32                  CODEC(ZSTD(1)),
    auto_service_type        UInt8                   CODEC(ZSTD(1)),
    gprocess_id              UInt32                  CODEC(ZSTD(1)),
    tag_source               UInt8                   CODEC(ZSTD(1)),
    ip4                      IPv4                    CODEC(ZSTD(1)),
    ip6                      IPv6                    CODEC(ZSTD(1)),
    is_ipv4                  UInt8                   DEFAULT (ip6 = toIPv6('::'))  CODEC(ZSTD(1)),
    role                     UInt8                   CODEC(ZSTD(1)),
    protocol                 UInt8                   CODEC(ZSTD(1)),
    server_port              UInt16                  CODEC(ZSTD(1)),
    signal_source            UInt16                  CODEC(ZSTD(1)),
    capture_network_type_id  UInt8                   DEFAULT 3  CODEC(ZSTD(1)),
    agent_id                 UInt16                  CODEC(ZSTD(1)),
    team_id                  UInt16                  DEFAULT 1  CODEC(ZSTD(1)),
    is_key_service           UInt8                   CODEC(ZSTD(1)),
    -- application tags
    l7_protocol              UInt8                   CODEC(ZSTD(1)),
    app_service              LowCardinality(String)  CODEC(ZSTD(1)),
    app_instance             LowCardinality(String)  CODEC(ZSTD(1)),
    endpoint                 LowCardinality(String)  CODEC(ZSTD(1)),
    biz_type                 UInt8                   CODEC(ZSTD(1)),
    -- meters (§3b)
    request                  UInt64                  CODEC(T64, ZSTD(1)),
    response                 UInt64                  CODEC(T64, ZSTD(1)),
    direction_score          UInt8                   CODEC(ZSTD(1)),
    rrt_sum                  Float64                 CODEC(ZSTD(1)),
    rrt_count                UInt64                  CODEC(T64, ZSTD(1)),
    rrt_max                  UInt32                  CODEC(ZSTD(1)),
    client_error             UInt64                  CODEC(T64, ZSTD(1)),
    server_error             UInt64                  CODEC(T64, ZSTD(1)),
    timeout                  UInt64                  CODEC(T64, ZSTD(1)),
    error                    UInt64                  CODEC(T64, ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toStartOfInterval(time, INTERVAL 12 HOUR)
ORDER BY (time, l3_epc_id, ip4, ip6, server_port)
TTL _ingest_time + INTERVAL 168 HOUR
SETTINGS ttl_only_drop_parts = 1, ratio_of_defaults_for_sparse_serialization = 1;

CREATE TABLE IF NOT EXISTS flow_metrics.`application.1s` AS flow_metrics.`application.1m`
ENGINE = MergeTree
PARTITION BY toStartOfInterval(time, INTERVAL 4 HOUR)
ORDER BY (time, l3_epc_id, ip4, ip6, server_port)
TTL _ingest_time + INTERVAL 24 HOUR
SETTINGS ttl_only_drop_parts = 1, ratio_of_defaults_for_sparse_serialization = 1;

CREATE TABLE IF NOT EXISTS flow_metrics.`application_map.1m`
(
    -- tags (§3a): both ends, _0 = client, _1 = server, per observation point
    time                     DateTime                DEFAULT now()  CODEC(DoubleDelta, ZSTD(1)),
    _ingest_time             DateTime                DEFAULT now()  CODEC(DoubleDelta, ZSTD(1)),
    region_id_0              UInt16                  CODEC(ZSTD(1)),
    region_id_1              UInt16                  CODEC(ZSTD(1)),
    az_id_0                  UInt16                  CODEC(ZSTD(1)),
    az_id_1                  UInt16                  CODEC(ZSTD(1)),
    host_id_0                UInt16                  CODEC(ZSTD(1)),
    host_id_1                UInt16                  CODEC(ZSTD(1)),
    l3_device_type_0         UInt8                   CODEC(ZSTD(1)),
    l3_device_type_1         UInt8                   CODEC(ZSTD(1)),
    l3_device_id_0           UInt32                  CODEC(ZSTD(1)),
    l3_device_id_1           UInt32                  CODEC(ZSTD(1)),
    pod_node_id_0            UInt32                  CODEC(ZSTD(1)),
    pod_node_id_1            UInt32                  CODEC(ZSTD(1)),
    pod_ns_id_0              UInt16                  CODEC(ZSTD(1)),
    pod_ns_id_1              UInt16                  CODEC(ZSTD(1)),
    pod_group_id_0           UInt32                  CODEC(ZSTD(1)),
    pod_group_id_1           UInt32                  CODEC(ZSTD(1)),
    pod_id_0                 UInt32                  CODEC(ZSTD(1)),
    pod_id_1                 UInt32                  CODEC(ZSTD(1)),
    pod_cluster_id_0         UInt16                  CODEC(ZSTD(1)),
    pod_cluster_id_1         UInt16                  CODEC(ZSTD(1)),
    l3_epc_id_0              Int32                   CODEC(ZSTD(1)),
    l3_epc_id_1              Int32                   CODEC(ZSTD(1)),
    subnet_id_0              UInt16                  CODEC(ZSTD(1)),
    subnet_id_1              UInt16                  CODEC(ZSTD(1)),
    service_id_0             UInt32                  CODEC(ZSTD(1)),
    service_id_1             UInt32                  CODEC(ZSTD(1)),
    auto_instance_id_0       UInt32                  CODEC(ZSTD(1)),
    auto_instance_id_1       UInt32                  CODEC(ZSTD(1)),
    auto_instance_type_0     UInt8                   CODEC(ZSTD(1)),
    auto_instance_type_1     UInt8                   CODEC(ZSTD(1)),
    auto_service_id_0        UInt32                  CODEC(ZSTD(1)),
    auto_service_id_1        UInt32                  CODEC(ZSTD(1)),
    auto_service_type_0      UInt8                   CODEC(ZSTD(1)),
    auto_service_type_1      UInt8                   CODEC(ZSTD(1)),
    gprocess_id_0            UInt32                  CODEC(ZSTD(1)),
    gprocess_id_1            UInt32                  CODEC(ZSTD(1)),
    tag_source_0             UInt8                   CODEC(ZSTD(1)),
    tag_source_1             UInt8                   CODEC(ZSTD(1)),
    ip4_0                    IPv4                    CODEC(ZSTD(1)),
    ip4_1                    IPv4                    CODEC(ZSTD(1)),
    ip6_0                    IPv6                    CODEC(ZSTD(1)),
    ip6_1                    IPv6                    CODEC(ZSTD(1)),
    is_ipv4                  UInt8                   DEFAULT (ip6_0 = toIPv6('::') AND ip6_1 = toIPv6('::'))  CODEC(ZSTD(1)),
    protocol                 UInt8                   CODEC(ZSTD(1)),
    server_port              UInt16                  CODEC(ZSTD(1)),
    signal_source            UInt16                  CODEC(ZSTD(1)),
    capture_network_type_id  UInt8                   DEFAULT 3  CODEC(ZSTD(1)),
    agent_id                 UInt16                  CODEC(ZSTD(1)),
    team_id                  UInt16                  DEFAULT 1  CODEC(ZSTD(1)),
    is_key_service           UInt8                   CODEC(ZSTD(1)),
    observation_point        LowCardinality(String)  CODEC(ZSTD(1)),
    capture_nic              UInt32                  CODEC(ZSTD(1)),
    capture_nic_type         UInt8                   CODEC(ZSTD(1)),
    tunnel_type              UInt8                   CODEC(ZSTD(1)),
    nat_source               UInt8                   CODEC(ZSTD(1)),
    -- application tags
    l7_protocol              UInt8                   CODEC(ZSTD(1)),
    app_service              LowCardinality(String)  CODEC(ZSTD(1)),
    app_instance             LowCardinality(String)  CODEC(ZSTD(1)),
    endpoint                 LowCardinality(String)  CODEC(ZSTD(1)),
    biz_type                 UInt8                   CODEC(ZSTD(1)),
    -- meters (§3b)
    request                  UInt64                  CODEC(T64, ZSTD(1)),
    response                 UInt64                  CODEC(T64, ZSTD(1)),
    direction_score          UInt8                   CODEC(ZSTD(1)),
    rrt_sum                  Float64                 CODEC(ZSTD(1)),
    rrt_count                UInt64                  CODEC(T64, ZSTD(1)),
    rrt_max                  UInt32                  CODEC(ZSTD(1)),
    client_error             UInt64                  CODEC(T64, ZSTD(1)),
    server_error             UInt64                  CODEC(T64, ZSTD(1)),
    timeout                  UInt64                  CODEC(T64, ZSTD(1)),
    error                    UInt64                  CODEC(T64, ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toStartOfInterval(time, INTERVAL 12 HOUR)
ORDER BY (time, l3_epc_id_1, ip4_1, ip6_1, l3_epc_id_0, ip4_0, ip6_0, server_port)
TTL _ingest_time + INTERVAL 168 HOUR
SETTINGS ttl_only_drop_parts = 1, ratio_of_defaults_for_sparse_serialization = 1;

CREATE TABLE IF NOT EXISTS flow_metrics.`application_map.1s` AS flow_metrics.`application_map.1m`
ENGINE = MergeTree
PARTITION BY toStartOfInterval(time, INTERVAL 4 HOUR)
ORDER BY (time, l3_epc_id_1, ip4_1, ip6_1, l3_epc_id_0, ip4_0, ip6_0, server_port)
TTL _ingest_time + INTERVAL 24 HOUR
SETTINGS ttl_only_drop_parts = 1, ratio_of_defaults_for_sparse_serialization = 1;
