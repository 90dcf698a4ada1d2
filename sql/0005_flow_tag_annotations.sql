-- flow_tag: Kubernetes annotations of pods and Services (datamodel §6.4 *_k8s_annotation_map), in
-- the same shape as the label maps of 0004 and filled by the same syncer.

-- (pod_id, annotation key) → value: k8s.annotation.<key>
CREATE TABLE IF NOT EXISTS flow_tag.pod_k8s_annotation
(
    id         UInt64,
    key        String,
    value      String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64  DEFAULT 1,
    _version   UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (id, key);

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_k8s_annotation_map
(
    id         UInt64,
    key        String,
    value      String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64
)
PRIMARY KEY id, key
SOURCE(CLICKHOUSE(QUERY 'SELECT id, key, value, l3_epc_id, pod_ns_id, team_id FROM flow_tag.pod_k8s_annotation FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(COMPLEX_KEY_HASHED());

-- pod_id → all annotations as a JSON object string: k8s.annotations
CREATE TABLE IF NOT EXISTS flow_tag.pod_k8s_annotations
(
    id           UInt64,
    annotations  String,
    l3_epc_id    UInt64,
    pod_ns_id    UInt64,
    team_id      UInt64  DEFAULT 1,
    _version     UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_k8s_annotations_map
(
    id           UInt64,
    annotations  String,
    l3_epc_id    UInt64,
    pod_ns_id    UInt64,
    team_id      UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, annotations, l3_epc_id, pod_ns_id, team_id FROM flow_tag.pod_k8s_annotations FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- (service_id, annotation key) → value: k8s.annotation.<key>
CREATE TABLE IF NOT EXISTS flow_tag.pod_service_k8s_annotation
(
    id         UInt64,
    key        String,
    value      String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64  DEFAULT 1,
    _version   UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (id, key);

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_service_k8s_annotation_map
(
    id         UInt64,
    key        String,
    value      String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64
)
PRIMARY KEY id, key
SOURCE(CLICKHOUSE(QUERY 'SELECT id, key, value, l3_epc_id, pod_ns_id, team_id FROM flow_tag.pod_service_k8s_annotation FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(COMPLEX_KEY_HASHED());

-- service_id → all annotations as a JSON object string: k8s.annotations
CREATE TABLE IF NOT EXISTS flow_tag.pod_service_k8s_annotations
(
    id           UInt64,
    annotations  String,
    l3_epc_id    UInt64,
    pod_ns_id    UInt64,
    team_id      UInt64  DEFAULT 1,
    _version     UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_service_k8s_annotations_map
(
    id           UInt64,
    annotations  String,
    l3_epc_id    UInt64,
    pod_ns_id    UInt64,
    team_id      UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, annotations, l3_epc_id, pod_ns_id, team_id FROM flow_tag.pod_service_k8s_annotations FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());
