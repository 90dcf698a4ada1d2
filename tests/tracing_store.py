"""The tracing lab's store for the tracing tests: ``flowscope collect`` over tests/data/trace_lab.pcapng
with its inventory (in a subprocess, as a user runs it), then the OTLP exports the lab's api sent
(tests/data/trace_lab.otlp.jsonl), replayed through the real ``POST /v1/traces`` route into the same
store, tagged by the same inventory. See tests/data/gen/trace_lab.py for the traffic."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import DATA, truth

FLOWSCOPE = Path(sys.executable).with_name("flowscope")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")} | {"COLUMNS": "160"}
PCAP = DATA / "trace_lab.pcapng"
OTLP = DATA / "trace_lab.otlp.jsonl"
INVENTORY = DATA / "inventory" / "trace_lab.yaml"
TRUTH = truth("trace_lab")

with warnings.catch_warnings():     # starlette nudges towards httpx2, which this environment lacks
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient
L7 = "flow_log.l7_flow_log"


@dataclass
class Lab:
    client: object
    engine: object
    root: Path
    otlp_responses: list       # (status, content type, body) of every replayed export

    def entry(self, request: dict) -> int:
        """The _id of a request's first span: the client's own NIC (client/eth0), found by the
        X-Request-ID nginx answered with."""
        rows = self.client.query(
            f"SELECT _id FROM {L7} WHERE observation_point = 'c' AND x_request_id_1 = {{x:String}} "
            "AND dictGetOrDefault('flow_tag.vtap_port_map', 'name', (toUInt64(agent_id), toUInt64(capture_nic)), '') "
            "= 'client/eth0'", parameters={"x": request["x_request_id"]}).result_rows
        assert len(rows) == 1, f"{request['path']}: {len(rows)} client-side rows"
        return rows[0][0]


def open_lab(root: Path):
    """Build the store under ``root`` and yield a Lab (the store is closed afterwards)."""
    from starlette.applications import Starlette

    from collector.tagging import InventoryTagger
    from collector.writer import Writer
    from datasource import otlp, tracing
    from datasource.engine import QueryEngine
    from flowscope.config import MetadataSettings
    from flowscope.metadata.runtime import Metadata
    from flowscope.storage import connect

    r = subprocess.run([str(FLOWSCOPE), "collect", "--pcap", str(PCAP), "--inventory", str(INVENTORY),
                        "--metadata", f"sqlite:///{root / 'm.db'}", "--clickhouse", f"chdb://{root / 'chdb'}"],
                       cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    client = connect(f"chdb://{root / 'chdb'}")
    try:
        tagger = InventoryTagger()
        md = Metadata(MetadataSettings(store=f"sqlite:///{root / 'm.db'}", inventory=str(INVENTORY)), tagger)
        md.open()
        writer = Writer(client, registry=tagger.registry)
        deps = tracing.Deps(engine=QueryEngine(client), otlp=otlp.OtlpSink(writer, tagger, agent_id=1))
        responses = []
        with TestClient(Starlette(routes=otlp.routes(deps))) as web:
            for ctype, enc, body in otlp.load_exports(OTLP.read_text().splitlines()):
                resp = web.post("/v1/traces", content=body,
                                headers={"Content-Type": ctype, **({"Content-Encoding": enc} if enc else {})})
                responses.append((resp.status_code, resp.headers.get("content-type"), resp.content))
        writer.close()
        md.close()
        yield Lab(client, QueryEngine(client), root, responses)
    finally:
        client.close()
