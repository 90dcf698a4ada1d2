"""Shared fixtures. chDB allows one open store path per process, so every fixture that opens one
closes it again; tests that need a second store at the same time run the CLI in a subprocess."""

from __future__ import annotations

from pathlib import Path

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
