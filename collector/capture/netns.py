"""Network namespace helpers for live capture.

A process in the root namespace captures inside another one by switching the *calling thread* into it
(``setns``), creating and binding the socket there, and switching back: the socket stays bound to the
namespace it was created in. Named namespaces are the files under /run/netns (``ip netns add``).
"""

from __future__ import annotations

import ctypes
import fnmatch
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    # os.setns exists from Python 3.12 on; the project supports 3.11
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(name: str) -> str:
    """The namespace file for ``name`` ("" = this thread's own)."""
    return os.path.join(NETNS_DIR, name) if name else "/proc/thread-self/ns/net"


def netns_id(name: str) -> int:
    """Inode of the namespace: tells a namespace apart from a later one created under the same name."""
    return os.stat(netns_path(name)).st_ino


def list_netns(pattern: str = "*") -> list[str]:
    """Names under /run/netns matching a glob, sorted."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


@contextmanager
def enter_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread in namespace ``name``; always switches back."""
    if not name:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            # failing to return would leave this thread capturing/creating sockets in the wrong place
            _setns(home)
    finally:
        os.close(home)


def list_interfaces(netns: str = "") -> list[tuple[int, str]]:
    """(ifindex, name) of the interfaces in a namespace (netlink query made from inside it)."""
    with enter_netns(netns):
        return sorted(socket.if_nameindex())
