"""The per-network name server: a small process per user network, bound to the gateway address, port 53.

berth has no daemon, so name service cannot live in one. Instead the first container to join a
network starts this server (``start``) and the last one to leave stops it (``stop``); in between it
answers from the state database, where ``ipam`` keeps each container's names (name, aliases, short id)
beside its lease. Nothing has to notify the server when containers come and go: every query reads the
current rows (SQLite in WAL mode, so these reads never wait for the engine's writes), which is why a
removed container's name vanishes the moment its lease is released. TTLs are 0 for the same reason.

Answers:
- ``NAME`` or ``NAME.<domain>`` of a container on this network → its A records (AAAA and other types of
  a known name get an empty NOERROR answer, so clients do not go on to ask elsewhere); a container on
  several networks also gets the names of its other networks (it has only one resolver it asks first);
- PTR for addresses in the network's subnet → the container's names;
- other names under ``<domain>`` → NXDOMAIN;
- everything else is forwarded over UDP (TCP when the answer is truncated and the client used TCP) to
  the container's own ``--dns`` servers if it has any, else to the host's resolvers from
  /etc/resolv.conf (re-read when it changes). When no upstream answers within ~2 s the client gets
  SERVFAIL rather than waiting out its own, longer timeout.

The process writes ``PID STARTTIME`` to its pid file only once its sockets are bound, so a started
server is a ready one, and whoever stops it can tell it from an unrelated process that reused the pid.
dnslib (the wire format) is imported only in the server process, never on the engine's paths.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any

from berth.errors import BerthError, Conflict

MARKER = "berth.network.dns"
DEFAULT_DOMAIN = "dns.berth"
FORWARD_TIMEOUT = 2.0  # total per query, over all upstreams
TCP_IDLE = 5.0


# -- managing the process (engine side: no dnslib here) ---------------------------------------------


def pidfile_path(run_dir: str, network: str) -> str:
    return os.path.join(run_dir, "dns", f"{network}.pid")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _read_pidfile(path: str) -> tuple[int, str] | None:
    try:
        with open(path) as f:
            pid, start = f.read().split()
        return int(pid), start
    except (OSError, ValueError):
        return None


def server_pid(run_dir: str, network: str) -> int | None:
    """The pid of the network's running server, or None (a stale pid file counts as none)."""
    info = _read_pidfile(pidfile_path(run_dir, network))
    if info is None or _start_time(info[0]) != info[1]:
        return None
    return info[0]


def running(run_dir: str) -> dict[str, int]:
    """Network name → pid of every server with a live pid file under ``run_dir``."""
    out = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(os.path.join(run_dir, "dns")):
            if entry.endswith(".pid"):
                pid = server_pid(run_dir, entry[:-4])
                if pid is not None:
                    out[entry[:-4]] = pid
    return out


def processes(run_dir: str | None = None) -> list[int]:
    """Every live name-server process (of ``run_dir``, when given), found in /proc, pid file or not."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if MARKER.encode() not in b" ".join(argv) or b"--pidfile" not in argv:
            continue
        pidfile = argv[argv.index(b"--pidfile") + 1].decode() if argv.index(b"--pidfile") + 1 < len(argv) else ""
        if run_dir is None or pidfile.startswith(os.path.join(run_dir, "")):
            out.append(int(entry))
    return sorted(out)


def _command(args: Sequence[str]) -> list[str]:
    """Run the server with -I -S and an explicit path: no site processing, no environment influence."""
    import dnslib  # only to find where it lives: dnslib is not used on this side

    import berth

    paths = [os.path.dirname(os.path.dirname(os.path.abspath(m.__file__ or ""))) for m in (berth, dnslib)]
    boot = f"import sys; sys.path[:0] = {list(dict.fromkeys(paths))!r}; from {MARKER} import main; sys.exit(main())"
    return [sys.executable, "-I", "-S", "-c", boot, *args]


def start(
    network: str,
    listen: IPv4Address | str,
    db_path: str,
    run_dir: str,
    *,
    port: int = 53,
    domain: str = DEFAULT_DOMAIN,
    upstreams: Sequence[str] | None = None,
    resolv_conf: str = "/etc/resolv.conf",
) -> int:
    """Start the network's server unless it runs already; returns its pid once it is serving.

    ``upstreams`` (``IP`` or ``IP:PORT``) replaces the host's resolvers from ``resolv_conf``.
    """
    pid = server_pid(run_dir, network)
    if pid is not None:
        return pid
    pidfile = pidfile_path(run_dir, network)
    os.makedirs(os.path.dirname(pidfile), exist_ok=True)
    args = [
        "--network", network, "--listen", str(listen), "--port", str(port), "--db", db_path,
        "--domain", domain, "--pidfile", pidfile, "--resolv-conf", resolv_conf,
        "--log", os.path.join(run_dir, "dns", f"{network}.log"),
    ]  # fmt: skip
    for upstream in upstreams or ():
        args += ["--upstream", upstream]
    proc = subprocess.run(
        _command(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, timeout=30, start_new_session=True, check=False, cwd="/",
    )  # fmt: skip
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
        raise Conflict(f"cannot start the name server of network {network} on {listen}:{port}: {message}")
    pid = server_pid(run_dir, network)
    if pid is None:
        raise BerthError(f"the name server of network {network} started but wrote no pid file")
    return pid


def _wait_gone(pidfd: int, timeout: float) -> bool:
    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


def stop(network: str, run_dir: str, timeout: float = 3.0) -> bool:
    """Stop the network's server (SIGTERM, then SIGKILL); False when none was running."""
    pidfile = pidfile_path(run_dir, network)
    info = _read_pidfile(pidfile)
    stopped = False
    if info is not None and _start_time(info[0]) == info[1]:
        try:
            pidfd = os.pidfd_open(info[0])
        except ProcessLookupError:
            pidfd = -1
        if pidfd >= 0:
            try:
                if _start_time(info[0]) == info[1]:  # still the same process now that we hold it
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                    if not _wait_gone(pidfd, timeout):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        _wait_gone(pidfd, timeout)
                    stopped = True
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
    with contextlib.suppress(FileNotFoundError):
        if _read_pidfile(pidfile) == info:
            os.unlink(pidfile)
    return stopped


def kill_stray(pid: int) -> None:
    """For leak clean-up: end a server process that lost its pid file."""
    with contextlib.suppress(ProcessLookupError):
        pidfd = os.pidfd_open(pid)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            _wait_gone(pidfd, 3.0)
        finally:
            os.close(pidfd)


# -- the server process ---------------------------------------------------------------------------


def parse_upstream(text: str) -> tuple[str, int]:
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    ip_address(host)
    return host, port


def resolv_conf_nameservers(path: str) -> list[str]:
    out = []
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                try:
                    ip_address(fields[1].split("%")[0])
                except ValueError:
                    continue
                out.append(fields[1])
    return out


class Server:
    """Answers from the database, forwards the rest; one instance per process."""

    def __init__(self, args: Any) -> None:
        self.network = args.network
        self.db_path = args.db
        self.domain = args.domain.strip(".").lower()
        self.listen = args.listen
        self.fixed_upstreams = [parse_upstream(u) for u in args.upstream or ()]
        self.resolv_conf = args.resolv_conf
        self._resolv_cache: tuple[float, list[tuple[str, int]]] = (-1.0, [])
        self._local = threading.local()
        # A connection of its own, closed at once: the process forks after this, and an SQLite
        # connection carried across fork() leaves the child's readers on a frozen WAL snapshot.
        conn = sqlite3.connect(self.db_path, timeout=5.0)
        try:
            row = conn.execute("SELECT subnet FROM net_networks WHERE name = ?", (self.network,)).fetchone()
        finally:
            conn.close()
        if row is None:
            raise SystemExit(f"network {self.network} is not in {self.db_path}")
        self.subnet = IPv4Network(row[0])

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
        return conn

    def upstreams(self, client: str) -> list[tuple[str, int]]:
        from berth.network import ipam

        with contextlib.suppress(ValueError, sqlite3.Error):
            own = ipam.client_dns_servers(self._db(), self.network, IPv4Address(client))
            if own:
                return [parse_upstream(s) for s in own]
        if self.fixed_upstreams:
            return self.fixed_upstreams
        try:
            mtime = os.stat(self.resolv_conf).st_mtime
        except OSError:
            return []
        if mtime != self._resolv_cache[0]:
            servers = [(s, 53) for s in resolv_conf_nameservers(self.resolv_conf) if s != self.listen]
            self._resolv_cache = (mtime, servers)
        return self._resolv_cache[1]

    # -- answering --

    def handle(self, data: bytes, client: str, tcp: bool) -> bytes | None:
        from dnslib import QTYPE, RCODE, DNSRecord

        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None  # not DNS: no answer, as any server would
        if request.header.qr or not request.questions:
            return None
        if request.header.opcode != 0:
            reply = request.reply()
            reply.header.rcode = RCODE.NOTIMP
            return bytes(reply.pack())
        try:
            local = self.answer_local(request, client)
        except sqlite3.Error:
            reply = request.reply()
            reply.header.rcode = RCODE.SERVFAIL
            return bytes(reply.pack())
        if local is not None:
            if not tcp and len(local) > 512:  # the classic UDP limit: the client retries over TCP
                reply = DNSRecord.parse(local)
                reply.rr = []
                reply.header.tc = 1
                return bytes(reply.pack())
            return local
        if request.q.qtype == QTYPE.AXFR:
            reply = request.reply()
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())
        return self.forward(request, data, client, tcp)

    def answer_local(self, request: Any, client: str = "0.0.0.0") -> bytes | None:
        from dnslib import PTR, QTYPE, RCODE, RR, A

        from berth.network import ipam

        q = request.q
        name = str(q.qname).rstrip(".").lower()
        conn = self._db()
        in_domain = name == self.domain or name.endswith("." + self.domain)
        if name.endswith(".in-addr.arpa"):
            octets = name[: -len(".in-addr.arpa")].split(".")
            if len(octets) == 4 and all(o.isdigit() for o in octets):
                try:
                    addr = IPv4Address(".".join(reversed(octets)))
                except ValueError:
                    return None
                if addr in self.subnet:
                    names = ipam.reverse(conn, self.network, addr)
                    reply = request.reply()
                    if not names:
                        reply.header.rcode = RCODE.NXDOMAIN
                    elif q.qtype in (QTYPE.PTR, QTYPE.ANY):
                        for n in names[:1]:
                            reply.add_answer(RR(q.qname, QTYPE.PTR, rdata=PTR(f"{n}.{self.domain}."), ttl=0))
                    return bytes(reply.pack())
            return None
        candidates = [name]
        if in_domain and name != self.domain:
            candidates.insert(0, name[: -len(self.domain) - 1])
        try:
            asker = IPv4Address(client)
        except ValueError:
            asker = IPv4Address(0)
        for candidate in candidates:
            addrs = ipam.lookup_for_client(conn, self.network, asker, candidate)
            if addrs:
                reply = request.reply()
                if q.qtype in (QTYPE.A, QTYPE.ANY):
                    for addr in addrs:
                        reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(str(addr)), ttl=0))
                return bytes(reply.pack())
        if in_domain:
            reply = request.reply()
            reply.header.rcode = RCODE.NXDOMAIN
            return bytes(reply.pack())
        return None

    def forward(self, request: Any, data: bytes, client: str, tcp: bool) -> bytes:
        from dnslib import RCODE, DNSRecord

        deadline = time.monotonic() + FORWARD_TIMEOUT
        for host, port in self.upstreams(client):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                answer = _udp_query(data, host, port, min(remaining, FORWARD_TIMEOUT / 2))
                if answer is None:
                    continue
                if tcp and DNSRecord.parse(answer).header.tc:
                    answer = _tcp_query(data, host, port, max(deadline - time.monotonic(), 0.1))
                return answer
            except (OSError, ValueError):
                continue
            except Exception:  # an unparsable answer: try the next upstream
                continue
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return bytes(reply.pack())


def _udp_query(data: bytes, host: str, port: int, timeout: float) -> bytes | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(data)
        end = time.monotonic() + timeout
        while True:
            s.settimeout(max(end - time.monotonic(), 0.001))
            try:
                answer = s.recv(65535)
            except TimeoutError:
                return None
            if answer[:2] == data[:2]:  # the same query id (connect() already filters the source)
                return answer


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _tcp_query(data: bytes, host: str, port: int, timeout: float) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(len(data).to_bytes(2, "big") + data)
        size = int.from_bytes(_recv_exact(s, 2), "big")
        return _recv_exact(s, size)


def _serve_tcp_client(server: Server, conn: socket.socket, client: str) -> None:
    with conn:
        conn.settimeout(TCP_IDLE)
        while True:
            try:
                size = int.from_bytes(_recv_exact(conn, 2), "big")
                data = _recv_exact(conn, size)
            except (OSError, ConnectionError):
                return
            answer = server.handle(data, client, tcp=True)
            if answer is None:
                return
            try:
                conn.sendall(len(answer).to_bytes(2, "big") + answer)
            except OSError:
                return


def _write_pidfile(path: str) -> None:
    start = _start_time(os.getpid())
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {start}\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    from concurrent.futures import ThreadPoolExecutor

    parser = argparse.ArgumentParser(prog=MARKER, description="berth's per-network name server")
    parser.add_argument("--network", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--db", required=True)
    parser.add_argument("--domain", default=DEFAULT_DOMAIN)
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--log", default=os.devnull)
    parser.add_argument("--upstream", action="append")
    parser.add_argument("--resolv-conf", default="/etc/resolv.conf")
    parser.add_argument("--foreground", action="store_true")
    args = parser.parse_args(argv)

    try:
        server = Server(args)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((args.listen, args.port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((args.listen, args.port))
        tcp.listen(64)
    except (OSError, sqlite3.Error) as e:
        print(f"{MARKER}: {e}", file=sys.stderr)
        return 1

    if not args.foreground:
        ready_r, ready_w = os.pipe()
        if os.fork():
            os.close(ready_w)
            return 0 if os.read(ready_r, 1) == b"1" else 1
        os.close(ready_r)
        os.setsid()
        log = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        _write_pidfile(args.pidfile)
        os.write(ready_w, b"1")
        os.close(ready_w)
    else:
        _write_pidfile(args.pidfile)

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pool = ThreadPoolExecutor(max_workers=16)
    tcp_clients = threading.BoundedSemaphore(64)

    def udp_job(data: bytes, addr: tuple[str, int]) -> None:
        try:
            answer = server.handle(data, addr[0], tcp=False)
            if answer is not None:
                udp.sendto(answer, addr)
        except Exception as e:
            print(f"{MARKER}: {e!r}", file=sys.stderr)

    def tcp_job(conn: socket.socket, addr: tuple[str, int]) -> None:
        try:
            _serve_tcp_client(server, conn, addr[0])
        finally:
            tcp_clients.release()

    print(f"{MARKER}: serving network {args.network} on {args.listen}:{args.port}", file=sys.stderr, flush=True)
    try:
        while not stopping.is_set():
            ready, _, _ = select.select([udp.fileno(), tcp.fileno(), wake_r], [], [], 5.0)
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 256)
            if udp.fileno() in ready:
                with contextlib.suppress(OSError):
                    data, addr = udp.recvfrom(65535)
                    pool.submit(udp_job, data, addr)
            if tcp.fileno() in ready:
                with contextlib.suppress(OSError):
                    conn, addr = tcp.accept()
                    if tcp_clients.acquire(blocking=False):
                        threading.Thread(target=tcp_job, args=(conn, addr), daemon=True).start()
                    else:
                        conn.close()
    finally:
        udp.close()
        tcp.close()
        pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(FileNotFoundError):
            info = _read_pidfile(args.pidfile)
            if info is not None and info[0] == os.getpid():
                os.unlink(args.pidfile)
        print(f"{MARKER}: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
