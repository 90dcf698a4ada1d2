"""The metadata store against real SQLite and a real MariaDB (the ``metadata_dsn`` fixture runs every
test on both): stable ids, implicit parents, revisions, deletion, relists, labels and retention."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from flowscope.metadata.model import Endpoint, Record, ServicePort
from flowscope.metadata.store import MIGRATIONS, MetadataStore, MetadataUnavailable

T0 = 1_700_000_000.0


def pod(name: str, uid: str, ip: str, *, node: str = "node-1", ns: str = "shop", group: str = "web",
        group_kind: str = "Deployment", labels: dict[str, str] | None = None, created: float = T0) -> Record:
    return Record("pod", name, cluster="prod", namespace=ns, uid=uid, ips=(ip,), node=node,
                  group_kind=group_kind, group_name=group, labels=labels or {"app": "web"}, created=created)


def by_key(store: MetadataStore, include_deleted: bool = True) -> dict[tuple[str, str], object]:
    return {(s.record.kind, s.record.key): s for s in store.records(include_deleted=include_deleted)}


@pytest.fixture
def store(metadata_dsn: str):
    s = MetadataStore(metadata_dsn)
    try:
        yield s
    finally:
        s.close()


def test_ids_are_stable_across_reopen(metadata_dsn: str) -> None:
    with MetadataStore(metadata_dsn) as store:
        a = store.upsert(Record("node", "node-a", cluster="prod", ips=("10.0.0.1",)))
        b = store.upsert(Record("node", "node-b", cluster="prod", ips=("10.0.0.2",)))
        p = store.upsert(pod("web-1", "uid-1", "10.1.0.1", node="node-a"))
        assert (a, b) == (1, 2)  # ids start at 1 per kind
        assert p == 1
        before = {(s.record.kind, s.record.key): s.id for s in store.records()}
        version = store.schema_version
    with MetadataStore(metadata_dsn) as store:  # reopen: migrations are idempotent, ids unchanged
        assert store.schema_version == version == MIGRATIONS[-1][0]
        assert {(s.record.kind, s.record.key): s.id for s in store.records()} == before
        assert store.upsert(Record("node", "node-b", cluster="prod", ips=("10.0.0.2",))) == b
        assert store.upsert(Record("node", "node-c", cluster="prod")) == 3


def test_parents_are_created_once(store: MetadataStore) -> None:
    first = store.upsert(pod("web-1", "uid-1", "10.1.0.1"))
    store.upsert(pod("web-2", "uid-2", "10.1.0.2"))
    recs = store.records()
    kinds = [s.record.kind for s in recs]
    assert kinds == ["cluster", "node", "namespace", "pod_group", "pod", "pod"]  # parents first
    cluster, node, ns, group, p1, p2 = recs
    assert (cluster.record.name, node.record.name, ns.record.name, group.record.name) == \
        ("prod", "node-1", "shop", "web")
    assert group.record.group_kind == "Deployment" and group.record.namespace == "shop"
    assert (p1.id, p1.cluster_id, p1.namespace_id, p1.node_id, p1.group_id) == (first, 1, 1, 1, 1)
    assert (node.cluster_id, ns.cluster_id, group.cluster_id, group.namespace_id) == (1, 1, 1, 1)
    assert p2.group_id == group.id
    # The real records arriving later update the implicit ones in place.
    store.upsert(Record("cluster", "prod", uid="c-uid"))
    store.upsert(Record("namespace", "shop", cluster="prod", labels={"team": "a"}, created=T0))
    after = by_key(store)
    assert after[("cluster", "prod")].id == 1 and after[("cluster", "prod")].record.uid == "c-uid"
    assert after[("namespace", "shop")].id == 1
    assert after[("namespace", "shop")].record.labels == {"team": "a"}
    assert len(store.records()) == 6


def test_unchanged_upsert_keeps_revision(store: MetadataStore) -> None:
    rec = pod("web-1", "uid-1", "10.1.0.1")
    store.upsert(rec)
    rev = store.revision
    assert rev > 0
    for _ in range(3):  # a relist re-sends everything
        store.upsert(pod("web-1", "uid-1", "10.1.0.1"))
    store.replace("pod", "prod", [pod("web-1", "uid-1", "10.1.0.1")], when=T0 + 5)
    assert store.revision == rev
    store.upsert(pod("web-1", "uid-1", "10.1.0.9"))
    assert store.revision == rev + 1
    assert store.records(["pod"])[0].record.ips == ("10.1.0.9",)


def test_revision_seen_by_another_connection(store: MetadataStore, metadata_dsn: str) -> None:
    with MetadataStore(metadata_dsn) as other:
        rev = other.revision
        store.upsert(Record("host", "db-1", ips=("192.168.1.5",)))
        assert other.revision == rev + 1
        assert [s.record.name for s in other.records(["host"])] == ["db-1"]


def test_delete_hides_and_upsert_revives(store: MetadataStore) -> None:
    node = store.upsert(Record("node", "node-1", cluster="prod"))
    rev = store.revision
    store.delete("node", "prod", "node-1", when=T0 + 10)
    assert store.revision == rev + 1
    store.delete("node", "prod", "node-1", when=T0 + 20)  # already deleted: no change
    assert store.revision == rev + 1
    store.delete("node", "prod", "no-such-node", when=T0 + 20)
    assert store.revision == rev + 1
    assert ("node", "node-1") not in by_key(store, include_deleted=False)
    gone = by_key(store)[("node", "node-1")]
    assert gone.record.deleted == T0 + 10
    assert store.upsert(Record("node", "node-1", cluster="prod")) == node  # back, same id
    assert by_key(store, include_deleted=False)[("node", "node-1")].record.deleted is None


def test_recreated_pod_is_a_new_resource(store: MetadataStore) -> None:
    old = store.upsert(pod("db-0", "uid-old", "10.1.0.7", group="db", group_kind="StatefulSet", created=T0))
    store.delete("pod", "prod", "uid-old", when=T0 + 100)
    new = store.upsert(pod("db-0", "uid-new", "10.1.0.7", group="db", group_kind="StatefulSet", created=T0 + 101))
    assert new != old
    pods = {s.id: s.record for s in store.records(["pod"])}
    assert (pods[old].created, pods[old].deleted) == (T0, T0 + 100)
    assert (pods[new].created, pods[new].deleted) == (T0 + 101, None)
    assert pods[old].ips == pods[new].ips == ("10.1.0.7",)
    assert [s.id for s in store.records(["pod"], include_deleted=False)] == [new]


def test_replace_marks_missing_deleted(store: MetadataStore) -> None:
    store.replace("pod", "prod", [pod("a", "uid-a", "10.1.0.1"), pod("b", "uid-b", "10.1.0.2")], when=T0)
    store.upsert(Record("pod", "other", cluster="staging", namespace="x", uid="uid-x"))
    store.replace("pod", "prod", [pod("b", "uid-b", "10.1.0.2"), pod("c", "uid-c", "10.1.0.3")], when=T0 + 60)
    pods = {s.record.name: s.record for s in store.records(["pod"])}
    assert pods["a"].deleted == T0 + 60
    assert pods["b"].deleted is None and pods["c"].deleted is None
    assert pods["other"].deleted is None  # another cluster is not part of the listing
    with pytest.raises(ValueError):
        store.replace("pod", "prod", [Record("node", "n", cluster="prod")], when=T0)


def test_fields_and_labels_round_trip(store: MetadataStore) -> None:
    svc = Record("service", "web", cluster="prod", namespace="shop", uid="svc-uid", ips=("10.96.0.10",),
                 labels={"app": "web", "tier": "Front"}, annotations={"note": "ünïcode ✓"}, created=T0,
                 service_type="NodePort", selector={"app": "web"},
                 ports=(ServicePort(80, "TCP", 8080, 30080, "http"), ServicePort(53, "UDP")),
                 endpoints=(Endpoint("10.1.0.1", 8080), Endpoint("10.1.0.2", 8080)))
    host = Record("pod", "h", cluster="prod", namespace="shop", uid="h-uid", ips=("10.0.0.1",),
                  macs=("aa:bb:cc:dd:ee:ff",), host_network=True, node="node-1")
    sid = store.upsert(svc)
    store.upsert(host)
    got = by_key(store)
    assert got[("service", "shop/web")].record == svc
    assert got[("pod", "h-uid")].record == host
    assert store.label_owners("service", "tier", "Front") == [sid]
    assert store.label_owners("service", "tier", "front") == []  # case-sensitive, as in Kubernetes
    store.upsert(Record("service", "web", cluster="prod", namespace="shop", uid="svc-uid", labels={"app": "api"},
                        created=T0))
    assert store.label_owners("service", "app", "web") == []
    assert store.label_owners("service", "app", "api") == [sid]


def test_ids_never_reused_after_purge(store: MetadataStore) -> None:
    a = store.upsert(pod("a", "uid-a", "10.1.0.1", node="node-old"))
    b = store.upsert(pod("b", "uid-b", "10.1.0.2", node="node-1"))
    store.delete("pod", "prod", "uid-a", when=T0 + 10)
    store.delete("node", "prod", "node-old", when=T0 + 10)
    store.delete("pod", "prod", "uid-b", when=T0 + 1000)
    assert store.purge(older_than=T0 + 500) == 2  # pod a, then its node that nothing names any more
    left = by_key(store)
    assert ("pod", "uid-a") not in left and ("node", "node-old") not in left
    assert ("pod", "uid-b") in left and ("node", "node-1") in left
    c = store.upsert(pod("c", "uid-c", "10.1.0.3"))
    assert c > max(a, b)
    assert store.upsert(Record("node", "node-old", cluster="prod")) == 3  # node-old was 1, node-1 2


def test_purge_keeps_parents_still_named(store: MetadataStore) -> None:
    store.upsert(pod("a", "uid-a", "10.1.0.1"))
    store.delete("namespace", "prod", "shop", when=T0)  # the pod (alive) still names it
    assert store.purge(older_than=T0 + 1) == 0
    assert ("namespace", "shop") in by_key(store)


def test_threads_share_one_store(store: MetadataStore) -> None:
    def write(i: int) -> None:
        for j in range(20):
            store.upsert(pod(f"p{i}-{j}", f"uid-{i}-{j}", f"10.2.{i}.{j}"))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [s.id for s in store.records(["pod"])]
    assert sorted(ids) == list(range(1, 81))


def test_two_connections_write_the_same_records(metadata_dsn: str) -> None:
    """Two stores (as two processes would) relisting the same pods at once: one id per pod."""
    stores = [MetadataStore(metadata_dsn), MetadataStore(metadata_dsn)]
    errors: list[BaseException] = []

    def write(store: MetadataStore) -> None:
        try:
            for j in range(30):
                store.upsert(pod(f"p{j}", f"uid-{j}", f"10.3.0.{j}", node=f"node-{j % 3}"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        recs = stores[0].records()
        assert sorted(s.id for s in recs if s.record.kind == "pod") == list(range(1, 31))
        assert sorted(s.id for s in recs if s.record.kind == "node") == [1, 2, 3]
    finally:
        for s in stores:
            s.close()


def test_mysql_unavailable_names_host_not_password() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"mysql://flowscope:topsecret@127.0.0.1:{port}/flowscope"
    with pytest.raises(MetadataUnavailable) as err:
        MetadataStore(dsn)
    assert f"127.0.0.1:{port}" in str(err.value)
    assert "topsecret" not in str(err.value)


def test_mysql_wrong_password_and_unix_socket(mariadb) -> None:
    with pytest.raises(MetadataUnavailable) as err:
        MetadataStore(f"mysql://{mariadb.user}:wrong-pw@127.0.0.1:{mariadb.port}/fs_bad")
    assert "wrong-pw" not in str(err.value) and "Access denied" in str(err.value)
    dsn = mariadb.dsn("fs_socket").replace(f"127.0.0.1:{mariadb.port}", "localhost") + \
        f"?unix_socket={mariadb.socket}"
    try:
        with MetadataStore(dsn) as store:
            assert store.upsert(Record("host", "h1")) == 1
    finally:
        mariadb.drop("fs_socket")


def test_mysql_reconnects_after_dropped_connection(mariadb) -> None:
    dsn = mariadb.dsn("fs_reconnect")
    try:
        with MetadataStore(dsn) as store:
            store.upsert(Record("host", "h1"))
            thread_id = store._conn.thread_id()
            root = mariadb.root()
            with root.cursor() as cur:
                cur.execute(f"KILL {int(thread_id)}")
            root.close()
            assert store.upsert(Record("host", "h2")) == 2
            assert [s.record.name for s in store.records()] == ["h1", "h2"]
    finally:
        mariadb.drop("fs_reconnect")


def test_sqlite_creates_parent_dirs_and_relative_dsn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with MetadataStore("sqlite:///.flowscope/metadata.db") as store:
        store.upsert(Record("host", "h1"))
    assert (tmp_path / ".flowscope" / "metadata.db").is_file()
    with pytest.raises(ValueError):
        MetadataStore("postgres://x@y/z")
