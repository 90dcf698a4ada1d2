"""The metadata side of a running collector: store, sources, tagger refresh and flow_tag sync.

``collect`` and ``up`` build one ``Metadata`` from the configuration. Sources (the inventory file,
Kubernetes watchers) write into the store; a refresher thread rebuilds the tagger's inventory when
the store's revision changes; the syncer keeps ClickHouse's flow_tag tables in step. Any of them
failing (API server or MySQL unreachable) leaves the collector capturing with the last inventory
it had; ``stats()`` says how stale that is.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from collector.tagging import InventoryTagger
from flowscope.config import MetadataSettings
from flowscope.metadata import inventory as inventory_file

log = logging.getLogger(__name__)


class Metadata:
    def __init__(self, settings: MetadataSettings, tagger: InventoryTagger) -> None:
        self.settings = settings
        self.tagger = tagger
        self.store = None
        self.watchers: list = []
        self.syncer = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._revision: int | None = None
        self.errors = 0
        self.last_error = ""
        self.last_refresh = 0.0          # wall clock of the last successful read of the store

    # -- start-up ----------------------------------------------------------------------------
    def open(self, *, wait_s: float = 0.0, sources: bool = True) -> None:
        """Open the store, load the inventory file, start the Kubernetes watchers, then read the
        store once so the first packets are tagged (waiting up to ``wait_s`` for the watchers'
        first listing). Raises InventoryError for a bad file; a store that cannot be opened is
        logged and retried by ``start``. ``sources=False`` only reads the store (capture workers,
        whose parent runs the sources)."""
        from flowscope.metadata.store import MetadataStore, MetadataUnavailable

        s = self.settings
        records = inventory_file.read(s.inventory) if s.inventory and sources else None
        try:
            self.store = MetadataStore(s.store)
        except MetadataUnavailable as e:
            self._error(f"metadata store: {e}")
            return
        if records is not None:
            inventory_file.load_into(self.store, records, time.time())
        if s.kubernetes and sources:
            from flowscope.metadata.kube import KubeWatcher, load_api_client

            for spec in s.kubernetes:
                try:
                    api = load_api_client(spec.get("kubeconfig"), spec.get("context"))
                except Exception as e:          # a bad kubeconfig: say which, keep the others
                    self._error(f"kubernetes cluster {spec.get('name')!r}: {e}")
                    continue
                w = KubeWatcher(spec["name"], self.store, api)
                w.start()
                self.watchers.append(w)
            deadline = time.monotonic() + wait_s
            for w in self.watchers:
                w.wait_synced(max(0.0, deadline - time.monotonic()))
        self.refresh()
        self.tagger.apply_pending()

    def start_sync(self, client_factory: Any) -> None:
        """Keep flow_tag in ClickHouse in step with the store (a background thread with its own
        client from ``client_factory``: clients are not shared between threads)."""
        if self.store is None:
            return
        from flowscope.metadata.sync import FlowTagSyncer

        self.syncer = FlowTagSyncer(self.store, client_factory, interval_s=self.settings.sync_interval_s)
        self.syncer.start()

    def sync_now(self, client: Any) -> dict[str, int]:
        """One synchronous flow_tag sync (file replays: before the store is closed)."""
        if self.store is None:
            return {}
        from flowscope.metadata.sync import sync_flow_tag

        try:
            return sync_flow_tag(self.store, client)
        except Exception as e:
            self._error(f"flow_tag sync: {e}")
            return {}

    def start(self) -> None:
        """Poll the store's revision in the background and rebuild the tagger's inventory."""
        self._thread = threading.Thread(target=self._loop, name="metadata-refresh", daemon=True)
        self._thread.start()

    # -- refresh -----------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Rebuild the tagger's inventory if the store changed; False when the store is down."""
        if self.store is None:
            try:
                from flowscope.metadata.store import MetadataStore

                self.store = MetadataStore(self.settings.store)
            except Exception as e:
                self._error(f"metadata store: {e}")
                return False
        try:
            rev = self.store.revision
            if rev != self._revision:
                self.tagger.load(self.store.records())
                self._revision = rev
            self.last_refresh = time.time()
            return True
        except Exception as e:
            self._error(f"metadata store: {e}")
            return False

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.refresh_s):
            self.refresh()

    def _error(self, msg: str) -> None:
        self.errors += 1
        if msg != self.last_error:
            log.warning("%s (capturing on with the last known inventory)", msg)
        self.last_error = msg

    # -- status ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = time.time()
        inv = self.tagger.inv
        out: dict[str, Any] = {
            "resources": inv.resources, "addresses": len(inv.single) + len(inv.claims),
            "stale_s": round(now - self.last_refresh, 1) if self.last_refresh else None,
            "errors": self.errors, "last_error": self.last_error,
        }
        for w in self.watchers:
            ws = w.stats
            out[f"kubernetes {w.cluster_name}"] = {"synced": ws.get("synced"), "stale_s": ws.get("stale_s"),
                                                   "relists": ws.get("relists"), "reconnects": ws.get("reconnects"),
                                                   "malformed": sum(ws.get("malformed", {}).values())}
        if self.syncer is not None:
            out["flow_tag sync"] = dict(self.syncer.stats)
        return out

    def close(self) -> None:
        self._stop.set()
        for w in self.watchers:
            w.stop()
        if self.syncer is not None:
            self.syncer.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.store is not None:
            self.store.close()
