"""The metadata side of a running collector when MySQL goes away: capture goes on tagging with the
last inventory it read, the outage shows as errors and a growing staleness, and changes made
after MySQL is back reach the tagger. MySQL is the real private MariaDB of the test session,
reached through a TCP relay the test cuts (the network outage a collector actually sees)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from collector.tagging import InventoryTagger, ip_key
from flowscope.config import MetadataSettings
from flowscope.metadata.model import Record
from flowscope.metadata.runtime import Metadata
from flowscope.metadata.store import MetadataStore
from tests.helpers import DATA, replay

INVENTORY = DATA / "inventory" / "lab.yaml"


class Relay:
    """127.0.0.1:<port> → the MariaDB port, until ``cut`` (listener closed, connections reset)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.up = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.up:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                c.close()
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [c, s]
            for a, b in ((c, s), (s, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self.conns.clear()

    def restore(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.up = True
        threading.Thread(target=self._accept, daemon=True).start()


@pytest.fixture
def relay(mariadb):
    r = Relay(mariadb.port)
    yield r
    r.cut()


def pod_name(tagger: InventoryTagger, ip: str, store_records) -> str:
    pod_id = tagger.registry.by_id[tagger.tag(ip_key(ip), 1795657140_000000)].pod_id
    return next((s.record.name for s in store_records if s.record.kind == "pod" and s.id == pod_id), "")


def test_capture_goes_on_with_the_last_inventory_while_mysql_is_down(mariadb, relay: Relay, tmp_path: Path) -> None:
    direct = mariadb.dsn("fs_outage")
    through_relay = direct.replace(f":{mariadb.port}/", f":{relay.port}/")
    tagger = InventoryTagger()
    md = Metadata(MetadataSettings(store=through_relay, inventory=str(INVENTORY)), tagger)
    try:
        md.open()
        known = md.store.records()
        assert pod_name(tagger, "10.16.0.20", known) == "api" and md.stats()["errors"] == 0

        relay.cut()                                        # MySQL unreachable from here on
        assert md.refresh() is False
        time.sleep(1.1)
        s = md.stats()
        assert s["errors"] >= 1 and s["stale_s"] >= 1.0
        assert f"127.0.0.1:{relay.port}" in s["last_error"] and "s3cr" not in s["last_error"]
        writer, _ = replay("k8s_pods.pcapng", tagger=tagger)      # capture is not held up
        pods = {tagger.registry.by_id[r["tag_id_1"]].pod_id for r in writer.l4_rows() if r["protocol"] in (6, 17)}
        assert {next(x.record.name for x in known if x.record.kind == "pod" and x.id == p) for p in pods} == \
            {"api", "redis-0", "coredns"}

        with MetadataStore(direct) as other:              # a change made elsewhere during the outage
            other.upsert(Record(kind="pod", name="api-2", cluster="lab", namespace="payments", uid="u-api-2",
                                ips=("10.16.0.21",), node="node-1"))
        assert md.refresh() is False and tagger.registry.by_id[tagger.tag(ip_key("10.16.0.21"))].pod_id == 0

        relay.restore()                                    # back: the change reaches the tagger
        assert md.refresh() is True
        tagger.apply_pending()
        assert pod_name(tagger, "10.16.0.21", md.store.records()) == "api-2"
        assert md.stats()["stale_s"] < 1.0
    finally:
        md.close()
        mariadb.drop("fs_outage")


def test_an_unreachable_store_at_start_is_retried(mariadb, relay: Relay) -> None:
    dsn = mariadb.dsn("fs_late").replace(f":{mariadb.port}/", f":{relay.port}/")
    relay.cut()
    tagger = InventoryTagger()
    md = Metadata(MetadataSettings(store=dsn), tagger)
    try:
        md.open()                                          # no store: logged, nothing tagged, no crash
        assert md.store is None and md.stats()["errors"] == 1 and md.stats()["stale_s"] is None
        relay.restore()
        with MetadataStore(mariadb.dsn("fs_late")) as direct:
            direct.upsert(Record(kind="pod", name="late", cluster="c", namespace="n", uid="u1", ips=("10.1.2.3",)))
        assert md.refresh() is True
        tagger.apply_pending()
        assert tagger.registry.by_id[tagger.tag(ip_key("10.1.2.3"))].pod_id == 1
    finally:
        md.close()
        mariadb.drop("fs_late")
