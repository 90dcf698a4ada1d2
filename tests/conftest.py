"""Shared fixtures. chDB allows one open store path per process, so every fixture that opens one
closes it again; tests that need a second store at the same time run the CLI in a subprocess."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from flowscope.storage import connect
from tests.netns import NetPair, make_netpair, start_server


@pytest.fixture
def chdb_dsn(tmp_path: Path) -> str:
    return f"chdb://{tmp_path / 'chdb'}"


@pytest.fixture
def chdb(chdb_dsn: str):
    """A client on a fresh, empty embedded store (closed after the test)."""
    client = connect(chdb_dsn)
    try:
        yield client
    finally:
        client.close()



@pytest.fixture
def netpair():
    """Two namespaces joined by veth-a / veth-b (root only; see tests/netns.py)."""
    yield from make_netpair()


@pytest.fixture
def server(netpair: NetPair):
    """The payload server listening in the second namespace."""
    yield from start_server(netpair)


# ---------------------------------------------------------------------------------------------------
# MariaDB: one private server per test session (the metadata store's MySQL dialect runs against it)

MARIADBD = Path("/usr/sbin/mariadbd")


@dataclass(frozen=True)
class MariaDB:
    """A running private server: a password user over TCP, root over the unix socket."""

    port: int
    socket: str
    user: str = "flowscope"
    password: str = "s3cr:t@/pw"   # URL-special characters: the DSN must quote them

    def dsn(self, database: str) -> str:
        return f"mysql://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def root(self):
        import pymysql

        return pymysql.connect(unix_socket=self.socket, user="root", autocommit=True)

    def drop(self, database: str) -> None:
        conn = self.root()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory):
    """A real mariadbd on 127.0.0.1:<free port> with its own data dir, killed and removed at the end."""
    if not MARIADBD.exists() or not shutil.which("mariadb-install-db"):
        pytest.skip("mariadb-server is not installed (no /usr/sbin/mariadbd); `make test` installs it")
    import pymysql

    base = tmp_path_factory.mktemp("mariadb")
    data, sock, log = base / "data", base / "sock", base / "server.log"
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    install = subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", f"--user={user}",
         "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"],
        capture_output=True, text=True, timeout=120)
    if install.returncode:
        pytest.fail(f"mariadb-install-db failed:\n{install.stdout}\n{install.stderr}")
    server = MariaDB(port=_free_port(), socket=str(sock))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(MARIADBD), "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={server.port}",
             "--bind-address=127.0.0.1", f"--user={user}", "--skip-name-resolve", f"--pid-file={base / 'pid'}",
             "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2", "--skip-log-bin"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mariadbd exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                conn = server.root()
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mariadbd did not accept connections in 60 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        with conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS ''@'localhost'")  # an anonymous user would shadow ours
            for host in ("%", "localhost"):
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (server.user, host, server.password))
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s", (server.user, host))
        conn.close()
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "mysql"])
def metadata_dsn(request: pytest.FixtureRequest, tmp_path: Path):
    """A DSN of a fresh, empty metadata database: an SQLite file, or a new database on MariaDB."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metadata.db'}"
        return
    server: MariaDB = request.getfixturevalue("mariadb")
    database = f"fs_test_{uuid.uuid4().hex[:12]}"
    yield server.dsn(database)
    server.drop(database)


@pytest.fixture(scope="session")
def ds():
    """`flowscope serve` over a store seeded from the committed pcaps (tests/grafana_infinity.py),
    shared by the dashboard and alert contract tests."""
    from tests import grafana_infinity as gi

    why = gi.dialect_missing()
    if why:
        pytest.skip(why)
    return gi.datasource()
