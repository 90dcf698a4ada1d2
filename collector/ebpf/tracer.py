"""The eBPF socket tracer: syscall tracepoints → socket data events (pid, tid, fd, direction,
timestamp, a bounded payload prefix) through a BPF ring buffer (per-CPU perf buffers where the
kernel has none), read in bulk on a timer: the programs never wake the reader.

Only tracepoints are used (kprobes and fentry are refused on this kernel, ARCHITECTURE.md), and no
kernel struct is read (the headers bcc compiles with do not match the running kernel): whether an
fd is a socket is known in the kernel from the syscalls that make or use sockets (accept/accept4
exits, connect, sendto/recvfrom) plus a ``/proc`` scan at start for sockets opened before; reads
and writes on other fds are dropped in the kernel, ``close`` forgets the fd. The 5-tuple comes from ``/proc/PID/net/tcp{,6}`` by socket inode (cached).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import logging
import mmap
import os
import platform
import socket
import struct
import sys
import time
from bisect import bisect_left
from collections import Counter, namedtuple
from dataclasses import dataclass
from operator import itemgetter

log = logging.getLogger("flowscope.ebpf")

DEBIAN_DIST = "/usr/lib/python3/dist-packages"
PAYLOAD_MAX = 512
EGRESS, INGRESS, CLOSE, ACCEPT, CONNECT, CONNECTED = 0, 1, 2, 3, 4, 5
KIND_SOCKET, KIND_OTHER = 1, 2
FLAG_TLS = 1                     # plaintext from an SSL_read/SSL_write uprobe


class EbpfUnavailable(RuntimeError):
    """bcc missing, not root, or the kernel refused the program: packet capture goes on."""


def import_bcc():
    """bcc's Python module: Debian's python3-bpfcc (PyPI's ``bcc`` is an unrelated project)."""
    try:
        import bcc
    except ImportError:
        if os.path.isdir(os.path.join(DEBIAN_DIST, "bcc")) and DEBIAN_DIST not in sys.path:
            sys.path.append(DEBIAN_DIST)
        try:
            import bcc
        except ImportError as e:
            raise EbpfUnavailable(f"bcc is not installed (apt-get install python3-bpfcc): {e}") from e
    if not hasattr(bcc, "BPF"):
        raise EbpfUnavailable(f"the bcc module at {getattr(bcc, '__file__', '?')} is not BCC (PyPI's 'bcc'?)")
    return bcc


def prepare_system() -> None:
    """What bcc needs on a fresh machine: tracefs mounted, a kernel-headers path (best effort)."""
    if not os.path.isdir("/sys/kernel/tracing/events"):
        os.makedirs("/sys/kernel/tracing", exist_ok=True)
        os.system("mount -t tracefs tracefs /sys/kernel/tracing >/dev/null 2>&1")
    build = f"/lib/modules/{os.uname().release}/build"
    if not os.path.exists(build):
        heads = sorted(d for d in os.listdir("/usr/src") if d.startswith("linux-headers-") and d.endswith("-amd64")) \
            if os.path.isdir("/usr/src") else []
        if heads:
            try:
                os.makedirs(os.path.dirname(build), exist_ok=True)
                os.symlink(f"/usr/src/{heads[-1]}", build)
                common = f"/usr/src/{heads[-1][:-len('-amd64')]}-common"
                if os.path.isdir(common) and not os.path.exists(build[:-5] + "source"):
                    os.symlink(common, build[:-5] + "source")
            except OSError as e:
                log.debug("kernel headers link: %s", e)


LOAD_TRIES = 4       # libbpf loads again when a signal interrupted the verifier; bcc does not


def load_bpf(bcc, text: bytes):
    """``bcc.BPF(text)``, tried again when a signal interrupted the verifier (EAGAIN: a handled
    signal, a profiler attaching), and never leaving a failed attempt's programs behind: bcc attaches
    each tracepoint as it loads it and detaches them only at exit, so a load that failed halfway
    would go on running the first half on every traced syscall."""
    attempt = 0
    while True:
        attempt += 1
        b = bcc.BPF.__new__(bcc.BPF)             # held here, so a failed __init__ can be cleaned up
        try:
            b.__init__(text=text, cflags=["-Wno-macro-redefined", "-Wno-unused-function"])
            return b
        except Exception as e:
            with contextlib.suppress(Exception):
                b.cleanup()
            if attempt == LOAD_TRIES or os.strerror(errno.EAGAIN) not in str(e):
                raise
            log.info("eBPF program load interrupted (%s): loading again", e)


BPF_TEXT = r"""
#include <uapi/linux/ptrace.h>      // struct pt_regs: the user ABI layout uprobes see
#define PAYLOAD_MAX %(payload)d
struct args_t { u64 buf; u32 fd; u32 vec; };   // vec: buf is a struct iovec array (readv/writev, *msg)
struct iovec_t { u64 base; u64 len; };          // struct iovec: stable user ABI
struct event_t {
    u64 ts; u32 tgid; u32 tid; u32 fd; u16 dir; u16 flags; u32 len; u32 cap; char comm[16];
    char data[PAYLOAD_MAX * 3];     // room past PAYLOAD_MAX only so the verifier sees bounded offsets
};
#define HEADER_SIZE 48
struct fdkey_t { u32 tgid; u32 fd; };
BPF_HASH(fdkind, struct fdkey_t, u8, 262144);
BPF_HASH(pids, u32, u8, 4096);
BPF_HASH(connecting, u64, u32, 16384);                                // thread in connect() → its fd
BPF_TABLE("lru_hash", u64, struct fdkey_t, syn_sent, 65536);          // struct sock * → (process, fd)
struct ssl_args_t { u64 ssl; u64 buf; u64 nptr; u32 fd; u32 dir; };   // nptr: *_ex's size_t *count
BPF_TABLE("lru_hash", u64, u32, ssl_fds, 65536);                      // SSL * → fd of its last syscall

// A thread's syscall in progress (enter → exit) and its SSL_read/SSL_write in progress (uprobe →
// uretprobe). Task storage lives in the thread itself (kernel ≥ 5.11): ~160 ns less per enter and
// per exit than a hash keyed by thread id, and nothing left behind when a thread dies inside a
// call. A hash on older kernels.
#if %(taskstore)d
struct task_t { struct args_t sys; struct ssl_args_t ssl; u32 in_sys; u32 in_ssl; };
BPF_TASK_STORAGE(tasks, struct task_t);
static inline struct task_t *task(u64 create) {
    return tasks.task_storage_get((void *)bpf_get_current_task_btf(), 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}
static inline void sys_put(u64 id, struct args_t *a) { struct task_t *t = task(1); if (t) { t->sys = *a; t->in_sys = 1; } }
static inline int sys_take(u64 id, struct args_t *a) {
    struct task_t *t = task(0);
    if (!t || !t->in_sys) return 0;
    *a = t->sys; t->in_sys = 0;
    return 1;
}
static inline struct ssl_args_t *ssl_get(u64 id) { struct task_t *t = task(0); return t && t->in_ssl ? &t->ssl : 0; }
static inline void ssl_put(u64 id, struct ssl_args_t *a) { struct task_t *t = task(1); if (t) { t->ssl = *a; t->in_ssl = 1; } }
static inline int ssl_take(u64 id, struct ssl_args_t *a) {
    struct task_t *t = task(0);
    if (!t || !t->in_ssl) return 0;
    *a = t->ssl; t->in_ssl = 0;
    return 1;
}
#else
BPF_HASH(active, u64, struct args_t, 16384);
BPF_HASH(ssl_active, u64, struct ssl_args_t, 16384);
static inline void sys_put(u64 id, struct args_t *a) { active.update(&id, a); }
static inline int sys_take(u64 id, struct args_t *a) {
    struct args_t *v = active.lookup(&id);
    if (!v) return 0;
    *a = *v; active.delete(&id);
    return 1;
}
static inline struct ssl_args_t *ssl_get(u64 id) { return ssl_active.lookup(&id); }
static inline void ssl_put(u64 id, struct ssl_args_t *a) { ssl_active.update(&id, a); }
static inline int ssl_take(u64 id, struct ssl_args_t *a) {
    struct ssl_args_t *v = ssl_active.lookup(&id);
    if (!v) return 0;
    *a = *v; ssl_active.delete(&id);
    return 1;
}
#endif
BPF_PERCPU_ARRAY(scratch, struct event_t, 1);
BPF_PERCPU_ARRAY(counters, u64, 4);   // 0 events, 1 submit failed (lost), 2 skipped: fd not a known socket,
                                      // 3 TLS data with no known fd (per CPU: no shared cache line)
#if %(ringbuf)d
BPF_RINGBUF_OUTPUT(events, %(ring_pages)d);
BPF_PERF_OUTPUT(spill);           // what the ring refused: it fails now and then with room to spare
#else
BPF_PERF_OUTPUT(events);
#endif

static inline void count(int i) { u64 *c = counters.lookup(&i); if (c) __sync_fetch_and_add(c, 1); }

// The ring buffer wakes nobody (BPF_RB_NO_WAKEUP): the reader drains it on a timer, so a traced
// syscall never pays for a consumer wake-up (a perf buffer wakes its reader on every record).
static inline int submit(void *ctx, struct event_t *e, u32 size) {
#if %(ringbuf)d
    if (events.ringbuf_output(e, size, BPF_RB_NO_WAKEUP) == 0) return 0;
    return spill.perf_submit(ctx, e, size);   // seen here (6.18 VM): ~1 in 50k, in bursts, ring near empty
#else
    return events.perf_submit(ctx, e, size);
#endif
}

static inline int wanted(u32 tgid) {
    if (tgid == %(self)d) return 0;
#if %(pidfilter)d
    if (!pids.lookup(&tgid)) return 0;
#endif
#if %(commfilter)d
    char comm[16] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    const char want[] = %(comm)s;
    #pragma unroll
    for (int i = 0; i < sizeof(want); i++) { if (!want[i]) break; if (comm[i] != want[i]) return 0; }   // prefix
#endif
    return 1;
}

static inline void mark_socket(u32 tgid, u32 fd) {
    struct fdkey_t k = {.tgid = tgid, .fd = fd};
    if (fdkind.lookup(&k)) return;          // known already: a lookup is cheaper than an update
    u8 one = %(socket)d;
    fdkind.update(&k, &one);
}

static inline int enter_vec(u32 fd, u64 buf, int is_socket, u32 vec) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!wanted(tgid)) return 0;
    if (is_socket) {
        mark_socket(tgid, fd);
    } else {
        struct fdkey_t k = {.tgid = tgid, .fd = fd};
        u8 *kind = fdkind.lookup(&k);
        if (!kind) { count(2); return 0; }
    }
    struct ssl_args_t *in_ssl = ssl_get(id);
    if (in_ssl) {                   // ciphertext under SSL_read/SSL_write: only its fd is wanted
        in_ssl->fd = fd;
        u64 ssl = in_ssl->ssl;
        ssl_fds.update(&ssl, &fd);
        return 0;
    }
    struct args_t a = {.buf = buf, .fd = fd, .vec = vec};
    sys_put(id, &a);
    return 0;
}
static inline int enter(u32 fd, u64 buf, int is_socket) { return enter_vec(fd, buf, is_socket, 0); }
// sendmsg/recvmsg: struct user_msghdr {void *name; int namelen; struct iovec *iov; size_t iovlen; ...}
static inline int enter_msg(u32 fd, u64 msg) {
    u64 iov = 0;
    if (msg) bpf_probe_read_user(&iov, sizeof(iov), (void *)(msg + 16));
    return enter_vec(fd, iov, 1, 1);
}

// One data event: the payload prefix gathered from up to IOV_MAX_READ buffers (a plain buffer is
// one); only the header and the captured bytes go through the perf buffer.
#define IOV_MAX_READ 4
static inline int emit(void *ctx, u64 id, u32 fd, u32 dir, u32 flags, long ret, u64 buf, u32 vec) {
    int z = 0;
    struct event_t *e = scratch.lookup(&z);
    if (!e) return 0;
    e->ts = bpf_ktime_get_ns(); e->tgid = id >> 32; e->tid = (u32)id; e->fd = fd; e->dir = dir;
    e->flags = flags; e->len = ret;
    u32 off = 0;
    #pragma unroll
    for (int i = 0; i < IOV_MAX_READ; i++) {
        struct iovec_t iv = {.base = buf, .len = ret};
        if (vec) {
            if (!buf) break;
            bpf_probe_read_user(&iv, sizeof(iv), (void *)(buf + i * sizeof(iv)));
        } else if (i) break;
        u64 take = iv.len;
        if (take > (u64)ret - off) take = (u64)ret - off;
        if (take > PAYLOAD_MAX - off) take = PAYLOAD_MAX - off;
        u32 o = off, t = take;
        asm volatile("%%0 &= %(omask)d" : "+r"(o));      // off < PAYLOAD_MAX here: a no-op the verifier sees
        asm volatile("%%0 &= %(mask)d" : "+r"(t));       // t <= PAYLOAD_MAX - off already
        if (t) bpf_probe_read_user(&e->data[o], t, (void *)iv.base);
        off += t;
        if (off >= PAYLOAD_MAX || off >= ret) break;
    }
    u32 n = off;
    asm volatile("%%0 &= %(mask)d" : "+r"(n));
    if (n > PAYLOAD_MAX) n = PAYLOAD_MAX;
    e->cap = n;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    count(0);
    if (submit(ctx, e, HEADER_SIZE + n) < 0) count(1);
    return 0;
}

static inline int leave(void *ctx, long ret, u32 dir) {
    u64 id = bpf_get_current_pid_tgid();
    struct args_t a;
    if (!sys_take(id, &a)) return 0;
    if (ret <= 0) return 0;
    return emit(ctx, id, a.fd, dir, 0, ret, a.buf, a.vec);
}

// OpenSSL: SSL_read/SSL_write(SSL *, void *buf, int num) → int; the *_ex forms (SSL *, void *buf,
// size_t num, size_t *count) → 1 on success. The fd is the one the syscalls inside the call used,
// or, when the data was already buffered, the SSL's last one.
static inline int ssl_enter(struct pt_regs *ctx, u32 dir, int ex) {
    u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id >> 32)) return 0;
    struct ssl_args_t a = {.ssl = PT_REGS_PARM1(ctx), .buf = PT_REGS_PARM2(ctx),
                           .nptr = ex ? PT_REGS_PARM4(ctx) : 0, .fd = 0xFFFFFFFF, .dir = dir};
    ssl_put(id, &a);
    return 0;
}
static inline int ssl_leave(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct ssl_args_t a;
    if (!ssl_take(id, &a)) return 0;
    u64 ssl = a.ssl, buf = a.buf, nptr = a.nptr; u32 fd = a.fd, dir = a.dir;
    long ret = (int)PT_REGS_RC(ctx);
    if (nptr) {
        if (ret != 1) return 0;
        u64 n = 0;
        bpf_probe_read_user(&n, sizeof(n), (void *)nptr);
        ret = n;
    }
    if (ret <= 0) return 0;
    if (fd == 0xFFFFFFFF) {
        u32 *known = ssl_fds.lookup(&ssl);
        if (!known) { count(3); return 0; }
        fd = *known;
    }
    return emit(ctx, id, fd, dir, %(tls)d, ret, buf, 0);
}
int ssl_write_enter(struct pt_regs *ctx) { return ssl_enter(ctx, 0, 0); }
int ssl_write_ex_enter(struct pt_regs *ctx) { return ssl_enter(ctx, 0, 1); }
int ssl_read_enter(struct pt_regs *ctx) { return ssl_enter(ctx, 1, 0); }
int ssl_read_ex_enter(struct pt_regs *ctx) { return ssl_enter(ctx, 1, 1); }
int ssl_return(struct pt_regs *ctx) { return ssl_leave(ctx); }

TRACEPOINT_PROBE(syscalls, sys_enter_read) { return enter(args->fd, (u64)args->buf, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return leave(args, args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return enter(args->fd, (u64)args->ubuf, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return leave(args, args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return enter(args->fd, (u64)args->buf, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return leave(args, args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return enter(args->fd, (u64)args->buff, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return leave(args, args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return enter_vec(args->fd, (u64)args->vec, 0, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return leave(args, args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return enter_vec(args->fd, (u64)args->vec, 0, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return leave(args, args->ret, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return enter_msg(args->fd, (u64)args->msg); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return leave(args, args->ret, 1); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return enter_msg(args->fd, (u64)args->msg); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return leave(args, args->ret, 0); }
static inline int addr_event(void *ctx, u32 fd, u64 uaddr, u32 dir) {
    u64 id = bpf_get_current_pid_tgid();
    int z = 0;
    struct event_t *e = scratch.lookup(&z);
    if (!e) return 0;
    e->ts = bpf_ktime_get_ns(); e->tgid = id >> 32; e->tid = (u32)id; e->fd = fd; e->dir = dir;
    e->flags = 0; e->len = 0; e->cap = 28;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    __builtin_memset(e->data, 0, 28);
    if (uaddr) bpf_probe_read_user(&e->data, 28, (void *)uaddr);
    if (submit(ctx, e, 48 + 32) < 0) count(1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) {
    u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id >> 32)) return 0;
    struct args_t a = {.buf = (u64)args->upeer_sockaddr, .fd = 0xFFFFFFFF};
    sys_put(id, &a);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) {
    u64 id = bpf_get_current_pid_tgid();
    struct args_t a;
    if (!sys_take(id, &a)) return 0;
    u64 uaddr = a.buf;
    if (args->ret < 0) return 0;
    mark_socket(id >> 32, args->ret);
    return addr_event(args, args->ret, uaddr, 3);
}
TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!wanted(tgid)) return 0;
    mark_socket(tgid, args->fd);
    u32 fd = args->fd;
    connecting.update(&id, &fd);
    return addr_event(args, args->fd, (u64)args->uservaddr, 4);
}
TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u64 id = bpf_get_current_pid_tgid();
    connecting.delete(&id);
    return 0;
}
// A client socket's local end. TCP picks the source port after the SYN_SENT transition (which the
// connecting thread makes inside connect), so: SYN_SENT remembers which (process, fd) the socket is,
// and SYN_SENT → ESTABLISHED (in whatever context the SYN-ACK arrives) reports its addresses then,
// before the connection can carry data. No struct is read: the tracepoint's fields come from the
// running kernel's format, where the kernel headers here may be another version's.
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6) return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == 2) {                              // TCP_SYN_SENT, in connect()
        u64 id = bpf_get_current_pid_tgid();
        u32 *fd = connecting.lookup(&id);
        if (!fd) return 0;
        struct fdkey_t k = {.tgid = id >> 32, .fd = *fd};
        syn_sent.update(&sk, &k);
        return 0;
    }
    if (args->oldstate != 2) return 0;
    struct fdkey_t *k = syn_sent.lookup(&sk);
    if (!k) return 0;
    u32 tgid = k->tgid, fd = k->fd;
    syn_sent.delete(&sk);
    if (args->newstate != 1) return 0;                      // refused or timed out: no connection
    int z = 0;
    struct event_t *e = scratch.lookup(&z);
    if (!e) return 0;
    e->ts = bpf_ktime_get_ns(); e->tgid = tgid; e->tid = 0; e->fd = fd; e->dir = 5;
    e->flags = 0; e->len = 0; e->cap = 40;
    __builtin_memset(e->comm, 0, sizeof(e->comm));
    __builtin_memset(e->data, 0, 40);
    u16 ports[4] = {args->family, args->sport, args->dport, 0};    // family, then ports in host order
    __builtin_memcpy(e->data, ports, 8);
    if (args->family == 2) {
        __builtin_memcpy(&e->data[8], args->saddr, 4);
        __builtin_memcpy(&e->data[24], args->daddr, 4);
    } else {
        __builtin_memcpy(&e->data[8], args->saddr_v6, 16);
        __builtin_memcpy(&e->data[24], args->daddr_v6, 16);
    }
    if (submit(args, e, 48 + 40) < 0) count(1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_close) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!wanted(tgid)) return 0;
    struct fdkey_t k = {.tgid = tgid, .fd = args->fd};
    u8 *kind = fdkind.lookup(&k);
    if (!kind) return 0;
    u8 was = *kind;
    fdkind.delete(&k);
    if (was != %(socket)d) return 0;
    int z = 0;
    struct event_t *e = scratch.lookup(&z);
    if (!e) return 0;
    e->ts = bpf_ktime_get_ns(); e->tgid = tgid; e->tid = (u32)id; e->fd = args->fd; e->dir = 2;
    e->flags = 0; e->len = 0; e->cap = 0;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    if (submit(args, e, 48) < 0) count(1);
    return 0;
}
"""

TLS_PROBES = ((b"SSL_write", b"ssl_write_enter"), (b"SSL_write_ex", b"ssl_write_ex_enter"),
              (b"SSL_read", b"ssl_read_enter"), (b"SSL_read_ex", b"ssl_read_ex_enter"))
LIBSSL_PATHS = ("/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/aarch64-linux-gnu/libssl.so.3",
                "/usr/lib64/libssl.so.3", "/usr/lib/libssl.so.3")


def find_libssl() -> list[str]:
    """The system's OpenSSL 3 (one path per real file: /lib and /usr/lib are often the same)."""
    found: dict[str, str] = {}
    for p in LIBSSL_PATHS:
        if os.path.exists(p):
            found.setdefault(os.path.realpath(p), p)
    return list(found.values())


HEADER = struct.Struct("<QIIIHHII16s")


@dataclass(slots=True)
class SockInfo:
    """A socket's identity as its process sees it (local end first)."""
    inode: int
    is_v4: bool = True
    laddr: bytes = b""
    lport: int = 0
    raddr: bytes = b""
    rport: int = 0
    resolved: bool = True            # False: only the peer is known (from accept/connect)


class ProcNet:
    """Socket inode → addresses from /proc/PID/net/tcp{,6}; re-read on a miss (cached)."""

    def __init__(self) -> None:
        self.by_inode: dict[int, SockInfo] = {}
        self.listen_ports: set[int] = set()
        self.listening: dict[int, SockInfo] = {}         # inode → a LISTEN socket
        self.listeners: dict[int, list[SockInfo]] = {}   # tgid → its LISTEN sockets (cached)
        self.reads = 0

    def listener(self, tgid: int, is_v4: bool) -> SockInfo | None:
        """The process's listening socket (when it has one of that family): the local end of
        the connections it accepts, once those are gone from /proc."""
        found = self.listeners.get(tgid)
        if found is None:
            self._refresh(tgid)
            found = []
            try:
                for fd in os.listdir(f"/proc/{tgid}/fd"):
                    ino = fd_inode(tgid, int(fd))
                    if ino and ino in self.listening:
                        found.append(self.listening[ino])
            except OSError:
                pass
            if len(self.listeners) > 10_000:
                self.listeners.clear()
            self.listeners[tgid] = found
        fam = [i for i in found if i.is_v4 == is_v4] or found
        return fam[0] if len(fam) == 1 else None

    def lookup(self, tgid: int, inode: int) -> SockInfo | None:
        info = self.by_inode.get(inode)
        if info is None:
            self._refresh(tgid)
            info = self.by_inode.get(inode)
        return info

    def _refresh(self, tgid: int) -> None:
        self.reads += 1
        for name, v4 in (("tcp", True), ("tcp6", False)):
            try:
                with open(f"/proc/{tgid}/net/{name}") as fh:
                    next(fh)
                    for line in fh:
                        p = line.split()
                        la, lp = p[1].split(":")
                        ra, rp = p[2].split(":")
                        inode = int(p[9])
                        lport = int(lp, 16)
                        if p[3] == "0A":
                            self.listen_ports.add(lport)
                        if inode:
                            is_v4, laddr, raddr = _addr(la, ra, v4)
                            info = self.by_inode[inode] = SockInfo(inode, is_v4, laddr, lport, raddr, int(rp, 16))
                            if p[3] == "0A":
                                self.listening[inode] = info
            except (OSError, StopIteration, ValueError, IndexError):
                continue
        if len(self.by_inode) > 200_000:
            self.by_inode.clear()


def _addr(la: str, ra: str, v4: bool) -> tuple[bool, bytes, bytes]:
    """Kernel hex addresses → (is_v4, local, remote); v4-mapped v6 addresses count as v4."""
    def conv(h: str) -> bytes:
        raw = bytes.fromhex(h)
        if v4:
            return raw[::-1]
        return b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    lb, rb = conv(la), conv(ra)
    if not v4 and lb[:12] == b"\0" * 10 + b"\xff\xff" and rb[:12] == b"\0" * 10 + b"\xff\xff":
        return True, lb[12:], rb[12:]
    return v4, lb, rb


def parse_sockaddr(raw: bytes) -> tuple[bool, bytes, int] | None:
    """struct sockaddr_in/in6 (user memory, read at accept/connect) → (is_v4, address, port)."""
    if len(raw) < 16:
        return None
    family = int.from_bytes(raw[:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return True, raw[4:8], port
    if family == socket.AF_INET6 and len(raw) >= 24:
        a = raw[8:24]
        if a[:12] == b"\0" * 10 + b"\xff\xff":
            return True, a[12:], port
        return False, a, port
    return None


def parse_connected(raw: bytes) -> tuple[bool, bytes, int, bytes, int] | None:
    """A CONNECTED event's data (family, sport, dport, saddr[16], daddr[16]; ports in host order)
    → (is_v4, local address, local port, remote address, remote port); v4-mapped v6 counts as v4."""
    if len(raw) < 40:
        return None
    family, sport, dport = struct.unpack_from("<HHH", raw)
    if family == socket.AF_INET:
        return True, raw[8:12], sport, raw[24:28], dport
    if family == socket.AF_INET6:
        local, remote = raw[8:24], raw[24:40]
        if local[:12] == remote[:12] == b"\0" * 10 + b"\xff\xff":
            return True, local[12:], sport, remote[12:], dport
        return False, local, sport, remote, dport
    return None


def fd_inode(tgid: int, fd: int) -> int | None:
    """The socket inode behind a process's fd, None if it is not a socket (or gone)."""
    try:
        target = os.readlink(f"/proc/{tgid}/fd/{fd}")
    except OSError:
        return None
    if target.startswith("socket:["):
        return int(target[8:-1])
    return 0


class Event(namedtuple("EventFields", "ts tgid tid fd dir tls len cap rawcomm data")):
    """One socket event: a tuple made straight from a buffer record's header fields plus the
    payload prefix (no per-field assignment). ``tls`` is the record's flags (``FLAG_TLS`` is the
    only one); ``comm`` is decoded only when asked (new sockets)."""
    __slots__ = ()

    @property
    def comm(self) -> str:
        return self[8].split(b"\0", 1)[0].decode(errors="replace")


_new_event = tuple.__new__
_ts = itemgetter(0)
_RING_BUSY, _RING_DISCARD = 1 << 31, 1 << 30
_RING_FLAGS = _RING_BUSY | _RING_DISCARD


class RingReader:
    """A BPF ring buffer read through ``mmap``, many records per call and no callback per record.

    The kernel's layout (kernel/bpf/ringbuf.c): a consumer page (its position, written by us), then
    a producer page (its position) and the data pages mapped twice, so a record that wraps is
    contiguous. Each record: a u32 length (bit 31 busy: reserved, not committed yet; bit 30
    discarded), a u32 page offset, the record, padded to 8 bytes. x86 only: its loads are not
    reordered with each other, so a committed header read first means its record is complete."""

    def __init__(self, map_fd: int, size: int) -> None:
        pg = mmap.PAGESIZE
        self.consumer = mmap.mmap(map_fd, pg, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.producer = mmap.mmap(map_fd, pg + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=pg)
        self.mask, self.base = size - 1, pg
        self.pos = _U64.unpack_from(self.consumer, 0)[0]
        self.stalled = False        # the last read stopped at a record reserved but not committed yet

    def read(self, out: list) -> int:
        """Append every committed record as an ``Event``; the bytes consumed."""
        mm, base, mask = self.producer, self.base, self.mask
        start = cons = self.pos
        end = _U64.unpack_from(mm, 0)[0]
        unpack, append, new = _RECORD.unpack_from, out.append, _new_event
        self.stalled = False
        while cons < end:
            o = base + (cons & mask)
            n, *head = unpack(mm, o)           # the ring's length word first: read before the record
            if n & _RING_FLAGS:
                if n & _RING_BUSY:
                    self.stalled = True
                    break
                n &= ~_RING_DISCARD
            else:
                o += _RECORD.size
                append(new(Event, (*head, mm[o:o + head[7]])))
            cons += (n + 15) & -8              # 8-byte header, record padded to 8
        if cons != start:
            self.pos = cons
            _U64.pack_into(self.consumer, 0, cons)
        return cons - start

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()


NO_WAKEUP = 1 << 30         # perf buffers: read on a timer, so a record never wakes the reader
_U64 = struct.Struct("Q")     # native: one 8-byte load/store ("<Q" goes byte by byte: torn positions)
_RECORD = struct.Struct("<I4x" + HEADER.format[1:])      # the ring's header word, then the event header


class Tracer:
    """Loads the program and turns ring (or perf) buffer records into ``Event`` objects for
    ``callback`` (which may be set after construction, before the first ``poll``). A BPF ring
    buffer (one for all CPUs, records in the order they were made, read in bulk through mmap) where
    the kernel and CPU allow it; per-CPU perf buffers otherwise.

    Raises ``EbpfUnavailable`` (with the reason) when bcc, privileges or the kernel say no."""

    POLL_INTERVAL_S = 0.01          # buffers drained this often (at once again when filling up)
    PERF_HOLD_NS = 20_000_000       # per-CPU perf buffers: records younger than this wait a poll
    PERF_BUSY = 2000                # records in one read of the perf buffers: read again at once

    def __init__(self, callback, *, pids: list[int] | None = None, comm: str | None = None,
                 payload: int = PAYLOAD_MAX, pages: int = 256, tls_libs: list[str] | None = None) -> None:
        if os.geteuid() != 0:
            raise EbpfUnavailable("eBPF tracing needs root (CAP_BPF/CAP_PERFMON)")
        bcc = import_bcc()
        prepare_system()
        self.callback = callback
        self.stats: Counter[str] = Counter()
        comm_lit = "{" + ", ".join(str(b) for b in (comm or "").encode()[:15]) + ", 0}" if comm else "{0}"
        ring_pages = 1 << max(0, pages * (os.cpu_count() or 1) - 1).bit_length()   # a power of two
        params = {"payload": payload, "self": os.getpid(), "pidfilter": int(bool(pids)),
                  "commfilter": int(bool(comm)), "comm": comm_lit, "other": KIND_OTHER, "socket": KIND_SOCKET,
                  "mask": payload * 2 - 1, "omask": payload - 1, "tls": FLAG_TLS, "ring_pages": ring_pages}
        self.ring: RingReader | None = None
        # the fastest form the kernel takes: a ring buffer (kernel ≥ 5.8, read here on x86 only)
        # and task storage (≥ 5.11), then a hash for the threads' state, then perf buffers
        variants = [(1, 1), (1, 0), (0, 0)] if platform.machine() == "x86_64" else [(0, 1), (0, 0)]
        for ring, taskstore in variants:
            try:
                self.bpf = load_bpf(bcc, (BPF_TEXT % dict(params, ringbuf=ring, taskstore=taskstore)).encode())
                break
            except Exception as e:      # compile or load refused
                if (ring, taskstore) == variants[-1]:
                    raise EbpfUnavailable(f"the kernel or bcc refused the tracer: {e}") from e
                log.info("eBPF %s refused (%s): trying without", "task storage" if taskstore else "ring buffer", e)
        self.task_storage = bool(taskstore)
        events = self.bpf[b"events"]
        if ring:
            self.ring = RingReader(events.map_fd, ring_pages * mmap.PAGESIZE)
            self._ring_busy = ring_pages * mmap.PAGESIZE // 4
            self.bpf[b"spill"].open_perf_buffer(self._on_event, page_cnt=8, lost_cb=self._on_lost,
                                                wakeup_events=NO_WAKEUP)
        else:
            events.open_perf_buffer(self._on_event, page_cnt=pages, lost_cb=self._on_lost, wakeup_events=NO_WAKEUP)
        if pids:
            m = self.bpf[b"pids"]
            for p in pids:
                m[ct.c_uint32(p)] = ct.c_uint8(1)
        self.fdkind = self.bpf[b"fdkind"]
        self.counters = self.bpf[b"counters"]
        self.known: dict[tuple[int, int], int] = {}     # (tgid, fd) → socket inode (0: not a socket)
        self._batch: list[Event] = []
        self._held: list[Event] = []        # records kept back for order (_read_ring, _read_perf)
        self._cut: int | None = None        # the earliest spilled record not handed over yet
        self.stats["sockets seeded from /proc"] = self.seed(pids)
        self.tls_attached = self.attach_tls(find_libssl() if tls_libs is None else tls_libs)

    def attach_tls(self, libs: list[str]) -> list[str]:
        """Uprobes on each library's SSL_read/SSL_write (and *_ex): HTTPS in plaintext. A library
        that refuses is logged and counted; socket tracing goes on without it."""
        done = []
        for lib in libs:
            n = 0
            for sym, fn in TLS_PROBES:
                try:
                    self.bpf.attach_uprobe(name=lib.encode(), sym=sym, fn_name=fn)
                    self.bpf.attach_uretprobe(name=lib.encode(), sym=sym, fn_name=b"ssl_return")
                    n += 1
                except Exception as e:  # symbol missing or uprobe refused
                    log.debug("uprobe %s:%s: %s", lib, sym.decode(), e)
            if n:
                done.append(lib)
            else:
                self.stats["TLS libraries not attached"] += 1
                log.warning("TLS tracing: no SSL_read/SSL_write uprobe attached in %s", lib)
        return done

    def _on_lost(self, n: int) -> None:
        self.stats["events lost (perf buffer full)"] += n

    def _on_event(self, cpu, data, size) -> None:
        raw = ct.string_at(data, size)
        h = HEADER.unpack_from(raw)
        self._batch.append(_new_event(Event, h + (raw[HEADER.size:HEADER.size + h[7]],)))

    def classify(self, tgid: int, fd: int) -> int | None:
        """The socket inode behind a traced fd (cached until its close event), 0 not a socket,
        None gone."""
        key = (tgid, fd)
        ino = self.known.get(key)
        if not ino:
            ino = fd_inode(tgid, fd)
            if ino:
                if len(self.known) > 200_000:
                    self.known.clear()
                self.known[key] = ino
        return ino

    def seed(self, pids: list[int] | None = None) -> int:
        """Sockets opened before the tracer started: found in /proc and told to the kernel."""
        n = 0
        me = os.getpid()
        for name in (map(str, pids) if pids else os.listdir("/proc")):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                fds = os.listdir(f"/proc/{name}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{name}/fd/{fd}").startswith("socket:["):
                        self.fdkind[self.fdkind.Key(int(name), int(fd))] = ct.c_uint8(KIND_SOCKET)
                        n += 1
                except (OSError, ValueError):
                    continue
        return n

    def forget(self, tgid: int, fd: int) -> None:
        self.known.pop((tgid, fd), None)

    def poll(self, timeout_ms: int = 100) -> None:
        """Hand over every event the kernel has queued, in the order they happened, then wait up
        to ``timeout_ms`` (the ring: at most ``POLL_INTERVAL_S``, none when it is filling up).

        The ring holds records in the order they were made; per-CPU perf buffers (and the ring's
        spill buffer) are sorted by timestamp, and records that an earlier one may still precede
        wait for the next poll (``_read_ring``, ``_read_perf``): an accept on one CPU and the first
        read of its socket on another must not come out swapped."""
        if self.ring is not None:
            batch, used = self._read_ring()
            busy = used >= self._ring_busy
        else:
            batch = self._read_perf()
            busy = len(batch) >= self.PERF_BUSY
        if batch:
            self._hand_over(batch)
        if timeout_ms > 0 and not busy:
            time.sleep(min(timeout_ms / 1000, self.POLL_INTERVAL_S))

    def drain(self) -> None:
        """Hand over everything queued, the records kept back for order included (stopping)."""
        for _ in range(3):
            self.poll(0)
        held, self._held, self._cut = self._held, [], None
        self._hand_over(held)

    def _hand_over(self, batch: list[Event]) -> None:
        self.stats["events"] += len(batch)
        callback = self.callback
        for e in batch:
            try:
                callback(e)
            except Exception as exc:  # one bad event costs itself, not the rest of the batch
                self.stats["event errors"] += 1
                log.debug("eBPF event %s: %s", e[:7], exc, exc_info=True)

    def _read_perf(self) -> list[Event]:
        """The per-CPU perf buffers' records, in order, read on the timer like the ring (waiting
        in poll() for their wake-ups took a wake-up and a poll per record). A thread's record on
        one CPU may land after the buffers were read while its next one, on another CPU, was read
        already; records are written microseconds after their timestamp, so those older than
        ``PERF_HOLD_NS`` at the start of the read have every predecessor read too. Younger ones
        wait for the next poll."""
        start = time.monotonic_ns()     # bpf_ktime_get_ns's clock
        self.bpf.perf_buffer_consume()  # every buffer, whether its wake-up came or not
        batch = self._held + self._batch
        self._batch = []
        return self._up_to(batch, start - self.PERF_HOLD_NS)

    def _read_ring(self) -> tuple[list[Event], int]:
        """The ring's committed records and the spilled ones (perf buffer), each in its place: a
        spilled record must not overtake one its thread wrote before it. So the spill buffer is
        read after the ring (``consume``: not waiting for its wake-up, which lags and let spilled
        records out a poll late, reordering a socket's data), then the ring again, which now holds
        whatever preceded the spilled records. If that read stops at a record still being written,
        the records from the earliest spilled one on wait for the next poll."""
        ring = self.ring
        batch, self._held = self._held, []
        used = ring.read(batch)
        self.bpf.perf_buffer_consume()
        if self._batch:
            spilled, self._batch = self._batch, []
            self.stats["events spilled (ring refused)"] += len(spilled)
            used += ring.read(batch)
            cut = min(map(_ts, spilled))
            self._cut = cut if self._cut is None else min(self._cut, cut)
            batch += spilled
        if self._cut is not None:
            if ring.stalled:
                return self._up_to(batch, self._cut), used
            self._cut = None
            batch.sort(key=_ts)
        return batch, used

    def _up_to(self, batch: list[Event], cut: int) -> list[Event]:
        """``batch`` sorted; the records before ``cut`` (ns), the rest kept back for the next poll."""
        batch.sort(key=_ts)
        i = bisect_left(batch, cut, key=_ts)
        self._held = batch[i:]
        return batch[:i]

    def kernel_counters(self) -> dict[str, int]:
        vals = [sum(self.counters[ct.c_int(i)]) for i in range(4)]      # per-CPU values
        return {"kernel events": vals[0], "kernel submit failed": vals[1], "kernel skipped (fd not a socket)": vals[2],
                "kernel TLS data without a known fd": vals[3]}

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        with contextlib.suppress(Exception):
            self.bpf.cleanup()


def ip4_int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def fmt_addr(is_v4: bool, b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if is_v4 else socket.AF_INET6, b)
