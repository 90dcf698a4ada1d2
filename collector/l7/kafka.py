"""Kafka (l7_protocol 100): 4-byte length-prefixed requests and responses, paired by correlation id.

Requests carry ``api_key, api_version, correlation_id, client_id`` (request header v1; v2 adds
tagged fields for flexible versions, https://kafka.apache.org/protocol#protocol_messages).
Responses carry only the correlation id, so the parser remembers each request's API and version
to read the response body: the first non-zero ``error_code`` is the response code (datamodel §2:
error_code ≠ 0 → server error). Produce and Fetch bodies give the first topic and partition;
Fetch responses are read only as far as ``max_buffer`` keeps, record batches skipped by length.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from collector.l7.base import (
    KAFKA,
    PARSE_FAILED,
    REQUEST,
    RESPONSE,
    SERVER_ERROR,
    SESSION,
    GiveUp,
    L7Config,
    L7Message,
    Spec,
)
from collector.l7.stream import Framing, HeadFramer, Malformed

MAX_REQUEST = 100 << 20         # the broker's default socket.request.max.bytes
MAX_RESPONSE = 1 << 30
PENDING_MAX = 1024              # requests remembered for their responses
UNMATCHED_MAX = 4               # consecutive responses to no known request before giving up

# api_key: (name, highest version known, first flexible version or None). Apache Kafka 4.1's
# message definitions (clients/src/main/resources/common/message/*.json), removed APIs included.
APIS: dict[int, tuple[str, int, int | None]] = {
    0: ("Produce", 13, 9), 1: ("Fetch", 18, 12), 2: ("ListOffsets", 11, 6), 3: ("Metadata", 13, 9),
    4: ("LeaderAndIsr", 7, 4), 5: ("StopReplica", 4, 2), 6: ("UpdateMetadata", 8, 6),
    7: ("ControlledShutdown", 3, 3), 8: ("OffsetCommit", 10, 8), 9: ("OffsetFetch", 10, 6),
    10: ("FindCoordinator", 6, 3), 11: ("JoinGroup", 9, 6), 12: ("Heartbeat", 4, 4), 13: ("LeaveGroup", 5, 4),
    14: ("SyncGroup", 5, 4), 15: ("DescribeGroups", 6, 5), 16: ("ListGroups", 5, 3), 17: ("SaslHandshake", 1, None),
    18: ("ApiVersions", 4, 3), 19: ("CreateTopics", 7, 5), 20: ("DeleteTopics", 6, 4), 21: ("DeleteRecords", 2, 2),
    22: ("InitProducerId", 6, 2), 23: ("OffsetForLeaderEpoch", 4, 4), 24: ("AddPartitionsToTxn", 5, 3),
    25: ("AddOffsetsToTxn", 4, 3), 26: ("EndTxn", 5, 3), 27: ("WriteTxnMarkers", 2, 1),
    28: ("TxnOffsetCommit", 5, 3), 29: ("DescribeAcls", 3, 2), 30: ("CreateAcls", 3, 2), 31: ("DeleteAcls", 3, 2),
    32: ("DescribeConfigs", 4, 4), 33: ("AlterConfigs", 2, 2), 34: ("AlterReplicaLogDirs", 2, 2),
    35: ("DescribeLogDirs", 5, 2), 36: ("SaslAuthenticate", 2, 2), 37: ("CreatePartitions", 3, 2),
    38: ("CreateDelegationToken", 3, 2), 39: ("RenewDelegationToken", 2, 2), 40: ("ExpireDelegationToken", 2, 2),
    41: ("DescribeDelegationToken", 3, 2), 42: ("DeleteGroups", 2, 2), 43: ("ElectLeaders", 2, 2),
    44: ("IncrementalAlterConfigs", 1, 1), 45: ("AlterPartitionReassignments", 1, 0),
    46: ("ListPartitionReassignments", 0, 0), 47: ("OffsetDelete", 0, None), 48: ("DescribeClientQuotas", 1, 1),
    49: ("AlterClientQuotas", 1, 1), 50: ("DescribeUserScramCredentials", 0, 0),
    51: ("AlterUserScramCredentials", 0, 0), 52: ("Vote", 2, 0), 53: ("BeginQuorumEpoch", 1, 1),
    54: ("EndQuorumEpoch", 1, 1), 55: ("DescribeQuorum", 2, 0), 56: ("AlterPartition", 3, 0),
    57: ("UpdateFeatures", 2, 0), 58: ("Envelope", 0, 0), 59: ("FetchSnapshot", 1, 0), 60: ("DescribeCluster", 2, 0),
    61: ("DescribeProducers", 0, 0), 62: ("BrokerRegistration", 4, 0), 63: ("BrokerHeartbeat", 1, 0),
    64: ("UnregisterBroker", 0, 0), 65: ("DescribeTransactions", 0, 0), 66: ("ListTransactions", 2, 0),
    67: ("AllocateProducerIds", 0, 0), 68: ("ConsumerGroupHeartbeat", 1, 0), 69: ("ConsumerGroupDescribe", 1, 0),
    70: ("ControllerRegistration", 0, 0), 71: ("GetTelemetrySubscriptions", 0, 0), 72: ("PushTelemetry", 0, 0),
    73: ("AssignReplicasToDirs", 0, 0), 74: ("ListConfigResources", 1, 0), 75: ("DescribeTopicPartitions", 0, 0),
    76: ("ShareGroupHeartbeat", 1, 0), 77: ("ShareGroupDescribe", 1, 0), 78: ("ShareFetch", 1, 0),
    79: ("ShareAcknowledge", 1, 0), 80: ("AddRaftVoter", 0, 0), 81: ("RemoveRaftVoter", 0, 0),
    82: ("UpdateRaftVoter", 0, 0), 83: ("InitializeShareGroupState", 0, 0), 84: ("ReadShareGroupState", 0, 0),
    85: ("WriteShareGroupState", 0, 0), 86: ("DeleteShareGroupState", 0, 0),
    87: ("ReadShareGroupStateSummary", 0, 0), 88: ("StreamsGroupHeartbeat", 0, 0),
    89: ("StreamsGroupDescribe", 0, 0), 90: ("DescribeShareGroupOffsets", 0, 0),
    91: ("AlterShareGroupOffsets", 0, 0), 92: ("DeleteShareGroupOffsets", 0, 0),
}
PRODUCE, FETCH, METADATA, API_VERSIONS = 0, 1, 3, 18

# Responses whose body opens with a top-level error_code: api_key → (first version where a 4-byte
# throttle_time_ms comes before it or None, first and last version that have it there).
TOP_ERROR: dict[int, tuple[int | None, int, int]] = {
    4: (None, 0, 99), 5: (None, 0, 99), 6: (None, 0, 99), 7: (None, 0, 99), 10: (1, 0, 3), 11: (2, 0, 99),
    12: (1, 0, 99), 13: (1, 0, 99), 14: (1, 0, 99), 16: (1, 0, 99), 17: (None, 0, 99), 18: (None, 0, 99),
    22: (0, 0, 99), 24: (0, 4, 99), 25: (0, 0, 99), 26: (0, 0, 99), 29: (0, 0, 99), 35: (0, 3, 99),
    36: (None, 0, 99), 38: (None, 0, 99), 39: (None, 0, 99), 40: (None, 0, 99), 41: (None, 0, 99),
    43: (0, 1, 99), 46: (0, 0, 99), 47: (None, 0, 99), 48: (0, 0, 99), 50: (0, 0, 99), 52: (None, 0, 99),
    53: (None, 0, 99), 54: (None, 0, 99), 55: (None, 0, 99), 56: (0, 0, 99), 57: (0, 0, 99), 59: (0, 0, 99),
    60: (0, 0, 99), 62: (0, 0, 99), 63: (0, 0, 99), 64: (0, 0, 99), 66: (0, 0, 99), 67: (0, 0, 99),
    68: (0, 0, 99), 70: (0, 0, 99), 71: (0, 0, 99), 72: (0, 0, 99), 74: (0, 0, 99), 76: (0, 0, 99),
    78: (0, 0, 99), 79: (0, 0, 99), 80: (0, 0, 99), 81: (0, 0, 99), 82: (0, 0, 99), 88: (0, 0, 99),
}

# error_code → name (org.apache.kafka.common.protocol.Errors); -1 is UNKNOWN_SERVER_ERROR.
ERRORS = (
    "NONE", "OFFSET_OUT_OF_RANGE", "CORRUPT_MESSAGE", "UNKNOWN_TOPIC_OR_PARTITION", "INVALID_FETCH_SIZE",
    "LEADER_NOT_AVAILABLE", "NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT", "BROKER_NOT_AVAILABLE",
    "REPLICA_NOT_AVAILABLE", "MESSAGE_TOO_LARGE", "STALE_CONTROLLER_EPOCH", "OFFSET_METADATA_TOO_LARGE",
    "NETWORK_EXCEPTION", "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR",
    "INVALID_TOPIC_EXCEPTION", "RECORD_LIST_TOO_LARGE", "NOT_ENOUGH_REPLICAS",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "INVALID_REQUIRED_ACKS", "ILLEGAL_GENERATION",
    "INCONSISTENT_GROUP_PROTOCOL", "INVALID_GROUP_ID", "UNKNOWN_MEMBER_ID", "INVALID_SESSION_TIMEOUT",
    "REBALANCE_IN_PROGRESS", "INVALID_COMMIT_OFFSET_SIZE", "TOPIC_AUTHORIZATION_FAILED",
    "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED", "INVALID_TIMESTAMP",
    "UNSUPPORTED_SASL_MECHANISM", "ILLEGAL_SASL_STATE", "UNSUPPORTED_VERSION", "TOPIC_ALREADY_EXISTS",
    "INVALID_PARTITIONS", "INVALID_REPLICATION_FACTOR", "INVALID_REPLICA_ASSIGNMENT", "INVALID_CONFIG",
    "NOT_CONTROLLER", "INVALID_REQUEST", "UNSUPPORTED_FOR_MESSAGE_FORMAT", "POLICY_VIOLATION",
    "OUT_OF_ORDER_SEQUENCE_NUMBER", "DUPLICATE_SEQUENCE_NUMBER", "INVALID_PRODUCER_EPOCH",
    "INVALID_TXN_STATE", "INVALID_PRODUCER_ID_MAPPING", "INVALID_TRANSACTION_TIMEOUT",
    "CONCURRENT_TRANSACTIONS", "TRANSACTION_COORDINATOR_FENCED", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    "SECURITY_DISABLED", "OPERATION_NOT_ATTEMPTED", "KAFKA_STORAGE_ERROR", "LOG_DIR_NOT_FOUND",
    "SASL_AUTHENTICATION_FAILED", "UNKNOWN_PRODUCER_ID", "REASSIGNMENT_IN_PROGRESS",
    "DELEGATION_TOKEN_AUTH_DISABLED", "DELEGATION_TOKEN_NOT_FOUND", "DELEGATION_TOKEN_OWNER_MISMATCH",
    "DELEGATION_TOKEN_REQUEST_NOT_ALLOWED", "DELEGATION_TOKEN_AUTHORIZATION_FAILED",
    "DELEGATION_TOKEN_EXPIRED", "INVALID_PRINCIPAL_TYPE", "NON_EMPTY_GROUP", "GROUP_ID_NOT_FOUND",
    "FETCH_SESSION_ID_NOT_FOUND", "INVALID_FETCH_SESSION_EPOCH", "LISTENER_NOT_FOUND",
    "TOPIC_DELETION_DISABLED", "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH",
    "UNSUPPORTED_COMPRESSION_TYPE", "STALE_BROKER_EPOCH", "OFFSET_NOT_AVAILABLE", "MEMBER_ID_REQUIRED",
    "PREFERRED_LEADER_NOT_AVAILABLE", "GROUP_MAX_SIZE_REACHED", "FENCED_INSTANCE_ID",
    "ELIGIBLE_LEADERS_NOT_AVAILABLE", "ELECTION_NOT_NEEDED", "NO_REASSIGNMENT_IN_PROGRESS",
    "GROUP_SUBSCRIBED_TO_TOPIC", "INVALID_RECORD", "UNSTABLE_OFFSET_COMMIT", "THROTTLING_QUOTA_EXCEEDED",
    "PRODUCER_FENCED", "RESOURCE_NOT_FOUND", "DUPLICATE_RESOURCE", "UNACCEPTABLE_CREDENTIAL",
    "INCONSISTENT_VOTER_SET", "INVALID_UPDATE_VERSION", "FEATURE_UPDATE_FAILED",
    "PRINCIPAL_DESERIALIZATION_FAILURE", "SNAPSHOT_NOT_FOUND", "POSITION_OUT_OF_RANGE", "UNKNOWN_TOPIC_ID",
    "DUPLICATE_BROKER_REGISTRATION", "BROKER_ID_NOT_REGISTERED", "INCONSISTENT_TOPIC_ID",
    "INCONSISTENT_CLUSTER_ID", "TRANSACTIONAL_ID_NOT_FOUND", "FETCH_SESSION_TOPIC_ID_ERROR",
    "INELIGIBLE_REPLICA", "NEW_LEADER_ELECTED", "OFFSET_MOVED_TO_TIERED_STORAGE", "FENCED_MEMBER_EPOCH",
    "UNRELEASED_INSTANCE_ID", "UNSUPPORTED_ASSIGNOR", "STALE_MEMBER_EPOCH", "MISMATCHED_ENDPOINT_TYPE",
    "UNSUPPORTED_ENDPOINT_TYPE", "UNKNOWN_CONTROLLER_ID", "UNKNOWN_SUBSCRIPTION_ID", "TELEMETRY_TOO_LARGE",
    "INVALID_REGISTRATION", "TRANSACTION_ABORTABLE", "INVALID_RECORD_STATE", "SHARE_SESSION_NOT_FOUND",
    "INVALID_SHARE_SESSION_EPOCH", "FENCED_STATE_EPOCH", "INVALID_VOTER_KEY", "DUPLICATE_VOTER",
    "VOTER_NOT_FOUND",
)


def flexible(key: int, ver: int) -> bool:
    """Does this API version use compact types and tagged fields? APIs newer than the table
    are: every API added since KIP-482 is flexible from v0."""
    first = APIS[key][2] if key in APIS else 0
    return first is not None and ver >= first


def error_name(code: int) -> str:
    if code == -1:
        return "UNKNOWN_SERVER_ERROR"
    return ERRORS[code] if 0 <= code < len(ERRORS) else f"ERROR_{code}"


_HEAD = struct.Struct(">ihhih")     # length, api_key, api_version, correlation_id, client_id length
_KEY_VERSION = struct.Struct(">hh")


def _plausible_request(b: bytes, pos: int, strict: bool) -> bool:
    """Does a request header start at ``pos``? ``strict`` (detection): a known API and version
    and a non-empty printable client id, as every client library sends; else any api_key < 128
    (a newer broker's APIs)."""
    if len(b) - pos < 14:
        return False
    size, key, ver, _corr, cid = _HEAD.unpack_from(b, pos)
    if not 10 <= size <= MAX_REQUEST or not -1 <= cid <= size - 10 or ver < 0:
        return False
    if strict:
        api = APIS.get(key)
        if api is None or ver > api[1] + 2 or cid < 1:
            return False
        name = b[pos + 14:pos + 14 + cid]
        return all(0x20 <= c < 0x7F for c in name)
    return key < 128 and ver <= 64


def check(payload: bytes, from_client: bool) -> bool:
    """A client's first payload that opens with a plausible request header (known api_key and
    version, sane length, printable client id) and is the whole request, or several (the next
    one plausible too), or a long segment that a longer request continues after."""
    if not from_client or not _plausible_request(payload, 0, True):
        return False
    end = 4 + _HEAD.unpack_from(payload)[0]
    if end > len(payload):
        return len(payload) >= 512      # a sender with more to say fills its segments
    return len(payload) - end < 14 or _plausible_request(payload, end, True)


class _Stop(Exception):
    """The bytes kept end inside a field, or a length makes no sense."""


class _Cursor:
    """Reads Kafka primitive types from a message's kept bytes (flexible versions: compact
    strings/arrays and tagged fields, KIP-482)."""

    __slots__ = ("b", "flex", "p")

    def __init__(self, b: bytes, p: int, flex: bool) -> None:
        self.b, self.p, self.flex = b, p, flex

    def take(self, n: int) -> int:
        p = self.p
        if n < 0 or p + n > len(self.b):
            raise _Stop
        self.p = p + n
        return p

    def i8(self) -> int:
        return self.b[self.take(1)]

    def i16(self) -> int:
        return struct.unpack_from(">h", self.b, self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack_from(">i", self.b, self.take(4))[0]

    def uvarint(self) -> int:
        v = shift = 0
        while True:
            c = self.i8()
            v |= (c & 0x7F) << shift
            if c < 0x80:
                return v
            shift += 7
            if shift > 28:
                raise _Stop

    def length(self) -> int:
        """A string/bytes/array length; -1 for null."""
        n = self.uvarint() - 1 if self.flex else self.i32()
        if n < -1:
            raise _Stop
        return n

    def string(self) -> str | None:
        n = self.uvarint() - 1 if self.flex else self.i16()
        if n < 0:
            if n < -1:
                raise _Stop
            return None
        p = self.take(n)
        return self.b[p:p + n].decode("utf-8", "replace")

    def array(self) -> int:
        n = self.length()
        if n > len(self.b) - self.p:        # every element takes at least a byte
            raise _Stop
        return max(n, 0)

    def skip_bytes(self) -> None:
        n = self.length()
        if n > 0:
            self.take(n)

    def uuid(self) -> str:
        p = self.take(16)
        return self.b[p:p + 16].hex()

    def tags(self) -> None:
        if self.flex:
            for _ in range(self.uvarint()):
                self.uvarint()
                self.take(self.uvarint())


def _topic(c: _Cursor, ver: int, name_until: int) -> tuple[str, str]:
    """(topic name, topic id) of one topic entry: a name up to ``name_until``, a UUID after."""
    return (c.string() or "", "") if ver <= name_until else ("", c.uuid())


def _produce_errors(c: _Cursor, ver: int) -> Iterator[int]:
    for _ in range(c.array()):
        _topic(c, ver, 12)
        for _ in range(c.array()):
            c.take(4)                               # index
            yield c.i16()
            c.take(8 + (8 if ver >= 2 else 0) + (8 if ver >= 5 else 0))
            if ver >= 8:
                for _ in range(c.array()):         # record_errors
                    c.take(4)
                    c.string()
                    c.tags()
                c.string()                          # error_message
            c.tags()
        c.tags()


def _fetch_errors(c: _Cursor, ver: int) -> Iterator[int]:
    if ver >= 1:
        c.take(4)                                   # throttle_time_ms
    if ver >= 7:
        yield c.i16()
        c.take(4)                                   # session_id
    for _ in range(c.array()):
        _topic(c, ver, 12)
        for _ in range(c.array()):
            c.take(4)                               # partition_index
            yield c.i16()
            c.take(8 + (8 if ver >= 4 else 0) + (8 if ver >= 5 else 0))
            if ver >= 4:
                for _ in range(c.array()):         # aborted_transactions (null → 0)
                    c.take(16)
                    c.tags()
            if ver >= 11:
                c.take(4)                           # preferred_read_replica
            c.skip_bytes()                          # records: skipped by length
            c.tags()
        c.tags()


def _metadata_errors(c: _Cursor, ver: int) -> Iterator[int]:
    if ver >= 3:
        c.take(4)
    for _ in range(c.array()):                      # brokers
        c.take(4)
        c.string()
        c.take(4)
        if ver >= 1:
            c.string()                              # rack
        c.tags()
    if ver >= 2:
        c.string()                                  # cluster_id
    if ver >= 1:
        c.take(4)                                   # controller_id
    for _ in range(c.array()):
        yield c.i16()
        c.string()
        c.take((16 if ver >= 10 else 0) + (1 if ver >= 1 else 0))
        for _ in range(c.array()):
            yield c.i16()
            c.take(12 if ver >= 7 else 8)           # index, leader, leader_epoch
            for _ in range(3 if ver >= 5 else 2):   # replicas, isr, offline replicas
                c.take(4 * c.array())
            c.tags()
        if ver >= 8:
            c.take(4)                               # topic_authorized_operations
        c.tags()


def _top_errors(c: _Cursor, key: int, ver: int) -> Iterator[int]:
    throttle_from, first, last = TOP_ERROR[key]
    if first <= ver <= last:
        if throttle_from is not None and ver >= throttle_from:
            c.take(4)
        yield c.i16()


BODY_ERRORS = {PRODUCE: _produce_errors, FETCH: _fetch_errors, METADATA: _metadata_errors}


def response_error(c: _Cursor, key: int, ver: int) -> tuple[int | None, bool]:
    """(first non-zero error code of a response body, else 0 if any was read, else None; whether
    the whole body could be read). (None, True): this API's errors are not looked for."""
    scan = BODY_ERRORS.get(key)
    errors = scan(c, ver) if scan else _top_errors(c, key, ver) if key in TOP_ERROR else None
    if errors is None:
        return None, True
    seen = False
    try:
        for code in errors:
            if code:
                return code, True
            seen = True
    except _Stop:
        return (0 if seen else None), False
    return (0 if seen else None), True


def _judge_request(body: bytearray) -> None:
    """api_key and version, judged as soon as they are in (a long request is not waited for)."""
    key, ver = _KEY_VERSION.unpack_from(body)
    if not 0 <= key < 128 or not 0 <= ver <= 64:
        raise Malformed(f"kafka: implausible request header (api_key {key}, version {ver})")


def _starts_request(payload: bytes) -> bool:
    return _plausible_request(payload, 0, False)


REQUESTS = Framing("kafka", 4, 10, MAX_REQUEST, "message length", judge_at=4, judge=_judge_request)
RESPONSES = Framing("kafka", 4, 4, MAX_RESPONSE, "message length")


class KafkaParser:
    """One Kafka connection: requests and the responses that answer them by correlation id, the
    requests' APIs remembered to read the responses (see the module docstring)."""

    protocol = KAFKA
    name = "Kafka"
    timeout_s = 120.0

    def __init__(self, config: L7Config) -> None:
        self.cap = max(64, config.max_buffer)
        self.sides = (HeadFramer(RESPONSES, self.cap), HeadFramer(REQUESTS, self.cap))   # [server, client]
        self.pending: dict[int, tuple[int, int, str]] = {}   # correlation id → (api_key, version, name)
        self.unmatched = 0

    def feed(self, payload: bytes, length: int, from_client: bool, ts: int, seq: int) -> list[L7Message] | GiveUp:
        if from_client:
            return self.sides[1].feed(payload, length, ts, seq, self._request, _starts_request)
        return self.sides[0].feed(payload, length, ts, seq, self._response, self._starts_response)

    def _starts_response(self, payload: bytes) -> bool:
        """After lost bytes: does this segment start a response to a pending request?"""
        return len(payload) >= 8 and 4 <= struct.unpack_from(">i", payload)[0] <= MAX_RESPONSE \
            and struct.unpack_from(">i", payload, 4)[0] in self.pending

    def _request(self, _head: bytes, size: int, b: bytes, ts: int, seq: int, captured: int) -> L7Message | None:
        if len(b) < 8:
            return None                 # header not captured: nothing to report
        key, ver, corr = struct.unpack_from(">hhi", b)     # key and version were judged early
        name = APIS[key][0] if key in APIS else f"ApiKey{key}"
        flex = flexible(key, ver)
        c = _Cursor(b, 8, False)
        attrs = {"api_version": str(ver)}
        topic = tid = ""
        part = None
        acks = -1
        try:
            if not (key == 7 and ver == 0):         # ControlledShutdown v0: request header v0
                cid = c.string()
                if cid is not None:
                    attrs["client_id"] = cid
            c.flex = flex                           # client_id stays a non-compact string
            c.tags()
            if key == PRODUCE:
                if ver >= 3:
                    c.string()                      # transactional_id
                acks = c.i16()
                c.take(4)                           # timeout_ms
            elif key == FETCH:                      # replica_id, max_wait, min/max bytes, isolation, session
                c.take((4 if ver <= 14 else 0) + 8 + (4 if ver >= 3 else 0) + (1 if ver >= 4 else 0)
                       + (8 if ver >= 7 else 0))
            if key in (PRODUCE, FETCH) and c.array():
                topic, tid = _topic(c, ver, 12)
                part = c.i32() if c.array() else None
        except _Stop:
            pass
        if tid:
            attrs["topic_id"] = tid
        one_way = key == PRODUCE and acks == 0      # acks=0: the broker sends no response
        if not one_way:
            self.pending[corr] = (key, ver, name)
            if len(self.pending) > PENDING_MAX:
                del self.pending[next(iter(self.pending))]
        return L7Message(
            SESSION if one_way else REQUEST, ts, seq, session_id=corr, request_id=corr, request_type=name,
            request_domain=topic, request_resource=f"{topic}-{part}" if topic and part is not None else topic,
            endpoint=topic or name, attributes=attrs, length=size, captured=captured, l7_protocol=KAFKA)

    def _response(self, _head: bytes, size: int, b: bytes, ts: int, seq: int, captured: int) -> L7Message | None:
        if len(b) < 4:
            return None
        corr = struct.unpack_from(">i", b)[0]
        req = self.pending.pop(corr, None)
        msg = L7Message(RESPONSE, ts, seq, session_id=corr, request_id=corr, length=size, captured=captured,
                        l7_protocol=KAFKA)
        if req is None:
            self.unmatched += 1
            if self.unmatched > UNMATCHED_MAX:
                raise Malformed("kafka: responses match no request")
            return msg
        self.unmatched = 0
        key, ver, msg.request_type = req
        if key not in BODY_ERRORS and key not in TOP_ERROR:
            return msg                  # an API whose error codes are not looked for
        flex = flexible(key, ver)
        c = _Cursor(b, 4, flex)
        try:
            if flex and key != API_VERSIONS:        # ApiVersions keeps response header v0
                c.tags()
        except _Stop:
            msg.response_status = PARSE_FAILED
            return msg
        code, complete = response_error(c, key, ver)
        if not complete and (code is None or captured < size + 4):
            code = None                 # error codes not captured (a 0 read so far proves nothing)
            msg.response_status = PARSE_FAILED
        elif code is not None:          # a body longer than max_buffer: the codes it kept decide
            msg.response_code = code
            if code:
                msg.response_status = SERVER_ERROR
                msg.response_exception = error_name(code)
        return msg


SPEC = Spec(KAFKA, "Kafka", frozenset({9092}), frozenset({6}), check, KafkaParser)
