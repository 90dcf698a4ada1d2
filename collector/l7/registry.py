"""Which L7 protocol a flow speaks: the protocol table (one module per protocol, each with a
``SPEC``) and the detection that runs on a flow's first payloads.

Detection is by content: port hints only decide which checks run first. A flow whose first
``MAX_ATTEMPTS`` payloads match nothing is not looked at again.
"""

from __future__ import annotations

import importlib
from collections import Counter

from collector.l7.base import L7Config, ProtocolSpec

# Protocol name (as in the configuration) → module; order matters only for cost: the cheap and
# common checks first.
MODULES = {"HTTP": "http1", "HTTP2": "http2", "DNS": "dns", "TLS": "tls", "MySQL": "mysql", "Redis": "redis",
           "Kafka": "kafka", "MQTT": "mqtt", "Dubbo": "dubbo"}
MAX_ATTEMPTS = 4


def load_specs(names: frozenset[str] | None = None) -> list[ProtocolSpec]:
    """The protocol table, optionally limited to protocol names (``HTTP``, ``DNS`` …)."""
    unknown = set(names or ()) - MODULES.keys()
    if unknown:
        raise ValueError(f"unknown L7 protocol(s) {sorted(unknown)} (known: {', '.join(MODULES)})")
    return [importlib.import_module(f"collector.l7.{module}").SPEC
            for name, module in MODULES.items() if names is None or name in names]


class Detector:
    """Finds the spec for a flow's first payloads; counts what it found."""

    def __init__(self, config: L7Config | None = None, specs: list[ProtocolSpec] | None = None) -> None:
        self.config = config or L7Config()
        self.specs = specs if specs is not None else load_specs(self.config.protocols)
        self.by_transport = {t: [s for s in self.specs if t in s.transports] for t in (6, 17)}
        self.detected: Counter[str] = Counter()
        self.gave_up: Counter[str] = Counter()

    def detect(self, payload: bytes, from_client: bool, transport: int, port: int,
               may_flip: bool) -> tuple[ProtocolSpec, bool] | None:
        """(spec, flipped) for this payload, or None. ``flipped``: the payload reads as sent by
        the other end (only tried when the flow's orientation is a guess)."""
        candidates = self.by_transport.get(transport, ())
        hinted = [s for s in candidates if port in s.ports]
        ordered = hinted + [s for s in candidates if port not in s.ports]
        for spec in ordered:
            if spec.check(payload, from_client):
                self.detected[spec.name] += 1
                return spec, False
        if may_flip:
            for spec in ordered:
                if spec.check(payload, not from_client):
                    self.detected[spec.name] += 1
                    return spec, True
        return None
