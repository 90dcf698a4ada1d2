#!/usr/bin/env python3
"""Make tests/data/kafka.pcap: a real TCP exchange between a scripted Kafka client and a small fake
broker, in the netlab namespaces, captured with tcpdump on the client's eth0.

No Kafka broker runs here, so both ends are built from kafka-python's own protocol encoders
(``kafka.protocol``: every request and response below is a kafka-python ``ApiMessage`` encoded
with ``encode(header=True, framed=True)``; record batches come from ``kafka.record.
MemoryRecordsBuilder``). The server decodes what it receives with the same classes. Nothing on the
wire is hand-made. Error codes are the ones a real broker would answer in these situations.

    sudo bash /work/shared/netlab/lab.sh up          # once
    sudo .venv/bin/python tests/data/gen/kafka_lab.py capture tests/data/kafka.pcap

``serve`` and ``client`` are the two halves (the capture runs them in netlab-srv / netlab-cli).
"""

from __future__ import annotations

import struct
import sys
import time

import lab
from kafka.protocol.consumer import FetchRequest, FetchResponse
from kafka.protocol.metadata import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    MetadataRequest,
    MetadataResponse,
)
from kafka.protocol.producer import ProduceRequest, ProduceResponse
from kafka.record import MemoryRecordsBuilder

SRV, PORT = lab.SRV, 9092
TOPIC, HIGH_WATERMARK = "orders", 3
REQUESTS = {0: ProduceRequest, 1: FetchRequest, 3: MetadataRequest, 10: FindCoordinatorRequest,
            18: ApiVersionsRequest}


def records(n: int, size: int, base_offset: int = 0) -> bytes:
    """A v2 record batch (magic 2, uncompressed) with ``n`` records of ``size`` value bytes."""
    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20, offset=base_offset)
    for i in range(n):
        b.append(timestamp=1_700_000_000_000 + i, key=f"k{i}".encode(),
                 value=(f"order-{i}:" + "x" * size)[:size].encode(), headers=[])
    b.close()
    return bytes(b.buffer())


# --- fake broker ------------------------------------------------------------------------------

def answer(req, api_key: int, version: int):
    """The response a broker holding one topic ("orders", partitions 0 and 1) would give."""
    if api_key == 18:
        keys = [ApiVersionsResponse.ApiVersion(api_key=k, min_version=0, max_version=m)
                for k, m in ((0, 13), (1, 18), (3, 13), (10, 6), (18, 4))]
        return ApiVersionsResponse(error_code=0, api_keys=keys, throttle_time_ms=0, version=version)
    if api_key == 3:
        M = MetadataResponse
        topics = []
        for t in req.topics or []:
            if t.name == TOPIC:
                parts = [M.MetadataResponseTopic.MetadataResponsePartition(
                    error_code=0, partition_index=p, leader_id=1, leader_epoch=0, replica_nodes=[1],
                    isr_nodes=[1], offline_replicas=[]) for p in (0, 1)]
                topics.append(M.MetadataResponseTopic(error_code=0, name=t.name, is_internal=False,
                                                      partitions=parts))
            else:   # UNKNOWN_TOPIC_OR_PARTITION
                topics.append(M.MetadataResponseTopic(error_code=3, name=t.name, is_internal=False,
                                                      partitions=[]))
        return M(throttle_time_ms=0, brokers=[M.MetadataResponseBroker(node_id=1, host=SRV, port=PORT, rack=None)],
                 cluster_id="flowscope-lab", controller_id=1, topics=topics, version=version)
    if api_key == 0:
        R = ProduceResponse.TopicProduceResponse
        out = []
        for t in req.topic_data:
            ok = t.name == TOPIC
            parts = [R.PartitionProduceResponse(index=p.index, error_code=0 if ok else 3,
                                                base_offset=HIGH_WATERMARK if ok else -1,
                                                log_append_time_ms=-1, log_start_offset=0 if ok else -1)
                     for p in t.partition_data]
            out.append(R(name=t.name, partition_responses=parts))
        return ProduceResponse(responses=out, throttle_time_ms=0, version=version)
    if api_key == 1:
        R = FetchResponse.FetchableTopicResponse
        if version >= 7 and req.session_id not in (0, -1):   # FETCH_SESSION_ID_NOT_FOUND
            return FetchResponse(throttle_time_ms=0, error_code=70, session_id=0, responses=[], version=version)
        out = []
        for t in req.topics:
            parts = []
            for p in t.partitions:
                if p.fetch_offset >= HIGH_WATERMARK:      # OFFSET_OUT_OF_RANGE
                    parts.append(R.PartitionData(partition_index=p.partition, error_code=1, high_watermark=-1,
                                                 last_stable_offset=-1, log_start_offset=-1,
                                                 aborted_transactions=None, records=None))
                    continue
                size = 40 if version < 12 else 1000       # the flexible fetch spans several segments
                parts.append(R.PartitionData(partition_index=p.partition, error_code=0,
                                             high_watermark=HIGH_WATERMARK, last_stable_offset=HIGH_WATERMARK,
                                             log_start_offset=0, aborted_transactions=[],
                                             preferred_read_replica=-1, records=records(3, size)))
            out.append(R(topic=t.topic, partitions=parts))
        return FetchResponse(throttle_time_ms=0, error_code=0, session_id=0, responses=out, version=version)
    if api_key == 10:   # COORDINATOR_NOT_AVAILABLE: no group coordinator on this fake broker
        return FindCoordinatorResponse(throttle_time_ms=0, error_code=15,
                                       error_message="The coordinator is not available.",
                                       node_id=-1, host="", port=-1, version=version)
    raise ValueError(f"no answer for api_key {api_key}")


def answer_frame(frame: bytes) -> bytes:
    """The response frame to one request frame (none to an acks=0 Produce)."""
    api_key, version = struct.unpack_from(">hh", frame, 4)
    req = REQUESTS[api_key].decode(frame, version=version, header=True, framed=True)
    if api_key == 0 and req.acks == 0:
        return b""                                  # acks=0: a broker sends no response
    resp = answer(req, api_key, version)
    resp.with_header(correlation_id=req.header.correlation_id)
    return bytes(resp.encode(header=True, framed=True))


def serve(host: str, port: int, connections: int) -> None:
    """Answer every complete request in what one recv() brought with one send, so pipelined
    requests get pipelined responses, as a broker's network thread would."""
    lab.serve_frames(host, port, connections, 4, answer_frame)


# --- client -----------------------------------------------------------------------------------

def metadata(version: int, *topics: str):
    return MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(name=t) for t in topics],
                           allow_auto_topic_creation=False, version=version)


def produce(version: int, topic: str, partition: int, acks: int):
    P = ProduceRequest.TopicProduceData
    return ProduceRequest(transactional_id=None, acks=acks, timeout_ms=1000, version=version, topic_data=[
        P(name=topic, partition_data=[P.PartitionProduceData(index=partition, records=records(2, 20))])])


def fetch(version: int, topic: str, partition: int, offset: int, session_id: int = 0, epoch: int = -1):
    F = FetchRequest.FetchTopic
    return FetchRequest(replica_id=-1, max_wait_ms=100, min_bytes=1, max_bytes=1 << 20, isolation_level=0,
                        session_id=session_id, session_epoch=epoch, forgotten_topics_data=[], rack_id="",
                        version=version, topics=[F(topic=topic, partitions=[F.FetchPartition(
                            partition=partition, current_leader_epoch=-1, fetch_offset=offset,
                            log_start_offset=-1, partition_max_bytes=1 << 20)])])


# (request, correlation id) sent one by one; a tuple of them is sent in one segment (pipelined).
CONN_A = [
    (ApiVersionsRequest(client_software_name="kafka-python", client_software_version="3.0.12", version=3), 1),
    (metadata(1, TOPIC), 2),
    (metadata(9, "missing-topic"), 3),
    (produce(3, TOPIC, 0, acks=1), 4),
    (produce(9, "no-such-topic", 0, acks=-1), 5),
    (produce(7, TOPIC, 1, acks=0), 6),
    (fetch(4, TOPIC, 0, 0), 7),
    (fetch(12, TOPIC, 0, 0), 8),
    (fetch(11, TOPIC, 0, 9999), 9),
    ((metadata(4, TOPIC), 10), (FindCoordinatorRequest(key="lab-group", key_type=0, version=1), 11)),
]
CONN_B = [
    (ApiVersionsRequest(version=0), 0),
    (fetch(12, TOPIC, 0, 0, session_id=1234, epoch=5), 1),
]


def run_conn(host: str, port: int, client_id: str, steps: list) -> None:
    s = lab.connect(host, port)
    for step in steps:
        batch = step if isinstance(step[0], tuple) else (step,)
        wire = b""
        for req, corr in batch:
            req.with_header(correlation_id=corr, client_id=client_id)
            wire += req.encode(header=True, framed=True)
        s.sendall(wire)
        for req, corr in batch:
            name = f"{type(req).__name__} v{req.API_VERSION} corr={corr}"
            if not req.expect_response():
                print(f"{client_id}: {name}: acks=0, no response")
                continue
            frame = lab.recv_frame(s, 4, "broker")
            resp_cls = REQUESTS[req.API_KEY].__name__.replace("Request", "Response")
            resp = getattr(sys.modules[__name__], resp_cls).decode(frame, version=req.API_VERSION,
                                                                   header=True, framed=True)
            assert resp.header.correlation_id == corr, (resp.header.correlation_id, corr)
            print(f"{client_id}: {name} -> {len(frame)} bytes: {summary(resp)}")
        time.sleep(0.05)
    s.close()


def summary(resp) -> str:
    d = resp.to_dict()
    errs = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "error_code":
                    errs.append(v)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(d)
    return f"error_codes={errs}"


def client(host: str, port: int) -> None:
    run_conn(host, port, "flowscope-lab", CONN_A)
    time.sleep(0.2)
    run_conn(host, port, "lab-consumer", CONN_B)


if __name__ == "__main__":
    lab.main(__file__, __doc__, PORT, serve, client)
