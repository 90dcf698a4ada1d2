-- flow_tag: the dictionaries the datasource resolves names, labels and enums with at query time
-- (DeepFlow's SmartEncoding, reference/deepflow-datamodel.md §6.4): rows store small integer ids,
-- dictGet('flow_tag.<x>_map', …) turns them into names, so renames and labels apply to history.
--
-- Each dictionary flow_tag.<x>_map reads the table flow_tag.<x> (filled by the metadata syncer; the
-- enum tables by flowscope/migrate.py from flowscope/enums.py). Source tables are ReplacingMergeTree on
-- the dictionary key with an update-version column `_version` (default: insert time in µs): to change
-- a resource, insert a new row. Dictionaries read `… FINAL`, because a plain table source loaded the
-- latest-inserted duplicate, not the highest _version, before parts merged (measured on chDB 26.9).
-- Ids are UInt64 and every row has team_id (default 1), as in DeepFlow.
-- LIFETIME(MIN 0 MAX 30): a dictionary picks up table changes within 30 s; SYSTEM RELOAD DICTIONARY
-- makes it immediate.

-- region_id → name
CREATE TABLE IF NOT EXISTS flow_tag.region
(
    id        UInt64,
    name      String,
    icon_id   Int64,
    team_id   UInt64  DEFAULT 1,
    _version  UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.region_map
(
    id       UInt64,
    name     String,
    icon_id  Int64,
    team_id  UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, icon_id, team_id FROM flow_tag.region FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- az_id → name
CREATE TABLE IF NOT EXISTS flow_tag.az
(
    id        UInt64,
    name      String,
    icon_id   Int64,
    team_id   UInt64  DEFAULT 1,
    _version  UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.az_map
(
    id       UInt64,
    name     String,
    icon_id  Int64,
    team_id  UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, icon_id, team_id FROM flow_tag.az FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- pod_cluster_id → K8s cluster name
CREATE TABLE IF NOT EXISTS flow_tag.pod_cluster
(
    id        UInt64,
    name      String,
    icon_id   Int64,
    team_id   UInt64  DEFAULT 1,
    _version  UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_cluster_map
(
    id       UInt64,
    name     String,
    icon_id  Int64,
    team_id  UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, icon_id, team_id FROM flow_tag.pod_cluster FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- l3_epc_id → VPC name (one id for a single-VPC K8s cluster)
CREATE TABLE IF NOT EXISTS flow_tag.l3_epc
(
    id        UInt64,
    name      String,
    uid       String,
    team_id   UInt64  DEFAULT 1,
    _version  UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.l3_epc_map
(
    id       UInt64,
    name     String,
    uid      String,
    team_id  UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, uid, team_id FROM flow_tag.l3_epc FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- subnet_id → name
CREATE TABLE IF NOT EXISTS flow_tag.subnet
(
    id         UInt64,
    name       String,
    l3_epc_id  UInt64,
    team_id    UInt64  DEFAULT 1,
    _version   UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.subnet_map
(
    id         UInt64,
    name       String,
    l3_epc_id  UInt64,
    team_id    UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, l3_epc_id, team_id FROM flow_tag.subnet FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- l3_device_id of a cloud host (l3_device_type 1) → name
CREATE TABLE IF NOT EXISTS flow_tag.chost
(
    id         UInt64,
    name       String,
    host_id    UInt64,
    l3_epc_id  UInt64,
    hostname   String,
    ip         String,
    subnet_id  UInt64,
    team_id    UInt64  DEFAULT 1,
    _version   UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.chost_map
(
    id         UInt64,
    name       String,
    host_id    UInt64,
    l3_epc_id  UInt64,
    hostname   String,
    ip         String,
    subnet_id  UInt64,
    team_id    UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, host_id, l3_epc_id, hostname, ip, subnet_id, team_id FROM flow_tag.chost FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- pod_node_id → K8s node name
CREATE TABLE IF NOT EXISTS flow_tag.pod_node
(
    id              UInt64,
    name            String,
    pod_cluster_id  UInt64,
    team_id         UInt64  DEFAULT 1,
    _version        UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_node_map
(
    id              UInt64,
    name            String,
    pod_cluster_id  UInt64,
    team_id         UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, pod_cluster_id, team_id FROM flow_tag.pod_node FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- pod_ns_id → namespace
CREATE TABLE IF NOT EXISTS flow_tag.pod_ns
(
    id              UInt64,
    name            String,
    pod_cluster_id  UInt64,
    team_id         UInt64  DEFAULT 1,
    _version        UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_ns_map
(
    id              UInt64,
    name            String,
    pod_cluster_id  UInt64,
    team_id         UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, pod_cluster_id, team_id FROM flow_tag.pod_ns FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- service_id → K8s Service
CREATE TABLE IF NOT EXISTS flow_tag.pod_service
(
    id              UInt64,
    name            String,
    pod_cluster_id  UInt64,
    pod_ns_id       UInt64,
    team_id         UInt64  DEFAULT 1,
    _version        UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_service_map
(
    id              UInt64,
    name            String,
    pod_cluster_id  UInt64,
    pod_ns_id       UInt64,
    team_id         UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, pod_cluster_id, pod_ns_id, team_id FROM flow_tag.pod_service FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- pod_group_id → workload; pod_group_type = auto_service_type 130-135 (Deployment, StatefulSet, …)
CREATE TABLE IF NOT EXISTS flow_tag.pod_group
(
    id              UInt64,
    name            String,
    pod_group_type  UInt64,
    pod_cluster_id  UInt64,
    pod_ns_id       UInt64,
    team_id         UInt64  DEFAULT 1,
    _version        UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_group_map
(
    id              UInt64,
    name            String,
    pod_group_type  UInt64,
    pod_cluster_id  UInt64,
    pod_ns_id       UInt64,
    team_id         UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, pod_group_type, pod_cluster_id, pod_ns_id, team_id FROM flow_tag.pod_group FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- pod_id → pod
CREATE TABLE IF NOT EXISTS flow_tag.pod
(
    id              UInt64,
    name            String,
    pod_cluster_id  UInt64,
    pod_ns_id       UInt64,
    pod_node_id     UInt64,
    pod_service_id  UInt64,
    pod_group_id    UInt64,
    team_id         UInt64  DEFAULT 1,
    _version        UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_map
(
    id              UInt64,
    name            String,
    pod_cluster_id  UInt64,
    pod_ns_id       UInt64,
    pod_node_id     UInt64,
    pod_service_id  UInt64,
    pod_group_id    UInt64,
    team_id         UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, pod_cluster_id, pod_ns_id, pod_node_id, pod_service_id, pod_group_id, team_id FROM flow_tag.pod FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- gprocess_id → process
CREATE TABLE IF NOT EXISTS flow_tag.gprocess
(
    id         UInt64,
    name       String,
    chost_id   UInt64,
    l3_epc_id  UInt64,
    biz_type   UInt64,
    team_id    UInt64  DEFAULT 1,
    _version   UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.gprocess_map
(
    id         UInt64,
    name       String,
    chost_id   UInt64,
    l3_epc_id  UInt64,
    biz_type   UInt64,
    team_id    UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, chost_id, l3_epc_id, biz_type, team_id FROM flow_tag.gprocess FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- agent_id → agent name, type and host
CREATE TABLE IF NOT EXISTS flow_tag.vtap
(
    id        UInt64,
    name      String,
    type      UInt64,
    host      String,
    team_id   UInt64  DEFAULT 1,
    _version  UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.vtap_map
(
    id       UInt64,
    name     String,
    type     UInt64,
    host     String,
    team_id  UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, name, type, host, team_id FROM flow_tag.vtap FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- (l3_device_type or auto_instance/auto_service type, id) → name; pseudo types 63999 Internet, 64000 IP
CREATE TABLE IF NOT EXISTS flow_tag.device
(
    devicetype  UInt64,
    deviceid    UInt64,
    name        String,
    uid         String,
    hostname    String,
    ip          String,
    icon_id     Int64,
    team_id     UInt64  DEFAULT 1,
    _version    UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (devicetype, deviceid);

CREATE DICTIONARY IF NOT EXISTS flow_tag.device_map
(
    devicetype  UInt64,
    deviceid    UInt64,
    name        String,
    uid         String,
    hostname    String,
    ip          String,
    icon_id     Int64,
    team_id     UInt64
)
PRIMARY KEY devicetype, deviceid
SOURCE(CLICKHOUSE(QUERY 'SELECT devicetype, deviceid, name, uid, hostname, ip, icon_id, team_id FROM flow_tag.device FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(COMPLEX_KEY_HASHED());

-- (agent_id, capture_nic) → capture interface name and the device behind it
CREATE TABLE IF NOT EXISTS flow_tag.vtap_port
(
    vtap_id      UInt64,
    tap_port     UInt64,
    name         String,
    mac_type     UInt64,
    host_id      UInt64,
    device_type  UInt64,
    device_id    UInt64,
    device_name  String,
    icon_id      Int64,
    team_id      UInt64  DEFAULT 1,
    _version     UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (vtap_id, tap_port);

CREATE DICTIONARY IF NOT EXISTS flow_tag.vtap_port_map
(
    vtap_id      UInt64,
    tap_port     UInt64,
    name         String,
    mac_type     UInt64,
    host_id      UInt64,
    device_type  UInt64,
    device_id    UInt64,
    device_name  String,
    icon_id      Int64,
    team_id      UInt64
)
PRIMARY KEY vtap_id, tap_port
SOURCE(CLICKHOUSE(QUERY 'SELECT vtap_id, tap_port, name, mac_type, host_id, device_type, device_id, device_name, icon_id, team_id FROM flow_tag.vtap_port FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(COMPLEX_KEY_HASHED());

-- (pod_id, label key) → label value: k8s.label.<key>
CREATE TABLE IF NOT EXISTS flow_tag.pod_k8s_label
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

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_k8s_label_map
(
    id         UInt64,
    key        String,
    value      String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64
)
PRIMARY KEY id, key
SOURCE(CLICKHOUSE(QUERY 'SELECT id, key, value, l3_epc_id, pod_ns_id, team_id FROM flow_tag.pod_k8s_label FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(COMPLEX_KEY_HASHED());

-- pod_id → all labels as a JSON object string: k8s.labels
CREATE TABLE IF NOT EXISTS flow_tag.pod_k8s_labels
(
    id         UInt64,
    labels     String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64  DEFAULT 1,
    _version   UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_k8s_labels_map
(
    id         UInt64,
    labels     String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, labels, l3_epc_id, pod_ns_id, team_id FROM flow_tag.pod_k8s_labels FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- (service_id, label key) → value; k8s.label.<key> tries the service first, then the pod
CREATE TABLE IF NOT EXISTS flow_tag.pod_service_k8s_label
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

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_service_k8s_label_map
(
    id         UInt64,
    key        String,
    value      String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64
)
PRIMARY KEY id, key
SOURCE(CLICKHOUSE(QUERY 'SELECT id, key, value, l3_epc_id, pod_ns_id, team_id FROM flow_tag.pod_service_k8s_label FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(COMPLEX_KEY_HASHED());

-- service_id → all labels as a JSON object string
CREATE TABLE IF NOT EXISTS flow_tag.pod_service_k8s_labels
(
    id         UInt64,
    labels     String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64  DEFAULT 1,
    _version   UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY id;

CREATE DICTIONARY IF NOT EXISTS flow_tag.pod_service_k8s_labels_map
(
    id         UInt64,
    labels     String,
    l3_epc_id  UInt64,
    pod_ns_id  UInt64,
    team_id    UInt64
)
PRIMARY KEY id
SOURCE(CLICKHOUSE(QUERY 'SELECT id, labels, l3_epc_id, pod_ns_id, team_id FROM flow_tag.pod_service_k8s_labels FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(HASHED());

-- (ip, subnet_id) → the resources behind an IP, for IP-only ends (auto_instance_type 255)
CREATE TABLE IF NOT EXISTS flow_tag.ip_resource
(
    ip                String,
    subnet_id         UInt64,
    region_id         UInt64,
    region_name       String,
    az_id             UInt64,
    az_name           String,
    host_id           UInt64,
    host_name         String,
    chost_id          UInt64,
    chost_name        String,
    vpc_id            UInt64,
    vpc_name          String,
    pod_cluster_id    UInt64,
    pod_cluster_name  String,
    pod_ns_id         UInt64,
    pod_ns_name       String,
    pod_node_id       UInt64,
    pod_node_name     String,
    pod_service_id    UInt64,
    pod_service_name  String,
    pod_group_id      UInt64,
    pod_group_name    String,
    pod_id            UInt64,
    pod_name          String,
    uid               String,
    team_id           UInt64  DEFAULT 1,
    _version          UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (ip, subnet_id);

CREATE DICTIONARY IF NOT EXISTS flow_tag.ip_resource_map
(
    ip                String,
    subnet_id         UInt64,
    region_id         UInt64,
    region_name       String,
    az_id             UInt64,
    az_name           String,
    host_id           UInt64,
    host_name         String,
    chost_id          UInt64,
    chost_name        String,
    vpc_id            UInt64,
    vpc_name          String,
    pod_cluster_id    UInt64,
    pod_cluster_name  String,
    pod_ns_id         UInt64,
    pod_ns_name       String,
    pod_node_id       UInt64,
    pod_node_name     String,
    pod_service_id    UInt64,
    pod_service_name  String,
    pod_group_id      UInt64,
    pod_group_name    String,
    pod_id            UInt64,
    pod_name          String,
    uid               String,
    team_id           UInt64
)
PRIMARY KEY ip, subnet_id
SOURCE(CLICKHOUSE(QUERY 'SELECT ip, subnet_id, region_id, region_name, az_id, az_name, host_id, host_name, chost_id, chost_name, vpc_id, vpc_name, pod_cluster_id, pod_cluster_name, pod_ns_id, pod_ns_name, pod_node_id, pod_node_name, pod_service_id, pod_service_name, pod_group_id, pod_group_name, pod_id, pod_name, uid, team_id FROM flow_tag.ip_resource FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(COMPLEX_KEY_HASHED());

-- Enum names for Enum(tag) (reference §4, flowscope/enums.py): (tag_name, value) → names and
-- descriptions. Refilled by flowscope/migrate.py on every run whose enums.py content differs.
CREATE TABLE IF NOT EXISTS flow_tag.int_enum
(
    tag_name        String,
    value           UInt64,
    name_zh         String,
    name_en         String,
    description_zh  String,
    description_en  String,
    _version        UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (tag_name, value);

CREATE DICTIONARY IF NOT EXISTS flow_tag.int_enum_map
(
    tag_name        String,
    value           UInt64,
    name_zh         String,
    name_en         String,
    description_zh  String,
    description_en  String
)
PRIMARY KEY tag_name, value
SOURCE(CLICKHOUSE(QUERY 'SELECT tag_name, value, name_zh, name_en, description_zh, description_en FROM flow_tag.int_enum FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(COMPLEX_KEY_HASHED());

CREATE TABLE IF NOT EXISTS flow_tag.string_enum
(
    tag_name        String,
    value           String,
    name_zh         String,
    name_en         String,
    description_zh  String,
    description_en  String,
    _version        UInt64  DEFAULT toUnixTimestamp64Micro(now64(6))
)
ENGINE = ReplacingMergeTree(_version)
ORDER BY (tag_name, value);

CREATE DICTIONARY IF NOT EXISTS flow_tag.string_enum_map
(
    tag_name        String,
    value           String,
    name_zh         String,
    name_en         String,
    description_zh  String,
    description_en  String
)
PRIMARY KEY tag_name, value
SOURCE(CLICKHOUSE(QUERY 'SELECT tag_name, value, name_zh, name_en, description_zh, description_en FROM flow_tag.string_enum FINAL'))
LIFETIME(MIN 0 MAX 30)
LAYOUT(COMPLEX_KEY_HASHED());
