"""The `serve` process when core.workers > 1: binds, forks, watches, forwards signals.

Synchronous on purpose: no event loop exists in the supervisor, so every
worker creates its own (uvloop) after the fork. See runtime/workers.py for
what a worker does and docs/architecture.md for the whole picture.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import select
import signal
import socket
import sys
import time
from typing import Any, Callable

from presenced.core.partition import steering_program
from presenced.runtime.workers import LINK_BUFFER, WorkerServer
from presenced.transport.udp import attach_steering, udp_socket, udp_socket_group

log = logging.getLogger("presenced.workers")

START_TIMEOUT = 120.0               # restoring a large database takes a while
STOP_TIMEOUT = 15.0
MAX_RESTARTS = 5                    # per worker within RESTART_WINDOW, then the supervisor gives up
RESTART_WINDOW = 60.0


class Supervisor:
    """The `serve` process when workers > 1: binds, forks, watches, forwards signals."""

    def __init__(self, cfg: Any, listen: list[str], workers: int,
                 build: Callable[[int, list, dict[int, socket.socket], int], WorkerServer]) -> None:
        self.cfg = cfg
        self.listen = listen
        self.workers = workers
        self.build = build
        core = getattr(cfg, "core", None)
        self.steering = str(getattr(core, "udp_steering", "kernel"))
        # One entry per --listen address; a UDP one is a list (one socket per worker) when steered.
        self.sockets: list[Any] = []
        self.links: dict[int, dict[int, socket.socket]] = {i: {} for i in range(workers)}
        self.pids: dict[int, int] = {}          # worker index -> pid
        self.ready: dict[int, int] = {}         # start-up: read end of each worker's ready pipe
        self.restarts: dict[int, list[float]] = {i: [] for i in range(workers)}
        self._signals: list[int] = []

    def bind(self) -> None:
        """Every listening socket, once, before any worker exists (port 0 is
        resolved here, so all workers share the same port)."""
        from presenced.runtime.server import parse_listen

        for spec in self.listen:
            proto, host, port = parse_listen(spec)
            if proto == "udp":
                if self.steering == "kernel":
                    self.sockets.append(self._steered_group(host, port))
                else:
                    self.sockets.append(udp_socket(host, port))
                continue
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
                s.listen(1024)
            except OSError:
                s.close()
                raise
            self.sockets.append(s)
        need = self.workers * self.workers + 64
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need + 1024:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need + 1024) if hard != resource.RLIM_INFINITY
                                                            else need + 1024, hard))
            except (ValueError, OSError):
                pass
        for i in range(self.workers):
            for j in range(i + 1, self.workers):
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                for s in (a, b):
                    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                        try:
                            s.setsockopt(socket.SOL_SOCKET, opt, LINK_BUFFER)
                        except OSError:
                            pass
                self.links[i][j] = a
                self.links[j][i] = b

    def _steered_group(self, host: str, port: int) -> list[socket.socket]:
        """One SO_REUSEPORT socket per worker, steered by core/partition.py's BPF
        program; without it (a kernel that refuses, > 10 workers) the kernel's
        4-tuple hash spreads datagrams and workers forward what they don't own."""
        group = udp_socket_group(host, port, self.workers)
        if self.workers > 10:
            log.warning("udp_steering: more than 10 workers: datagrams are spread by the kernel's hash "
                        "and forwarded to their owner")
            return group
        try:
            attach_steering(group[0], steering_program(self.workers))
        except OSError as e:
            log.warning("udp_steering: the kernel refused the steering program (%s): datagrams are "
                        "spread by its hash and forwarded to their owner", e)
        return group

    def _spawn(self, index: int) -> int:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(r)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the event loop handles it
                _stop_with_parent()
                for other, links in self.links.items():
                    if other != index:
                        for s in links.values():
                            s.close()
                for fd in self.ready.values():
                    os.close(fd)
                socks = [s[index] if isinstance(s, list) else s for s in self.sockets]
                code = run_worker(self.build(index, socks, self.links[index], w), index)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(w)
        self.pids[index] = pid
        return r

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        from presenced.runtime.persistence import start_run

        start_run()  # in the environment the workers inherit: one id for the whole run
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        for i in range(self.workers):
            self.ready[i] = self._spawn(i)
        log.info("supervisor %d: started %d workers (pids %s)", os.getpid(), self.workers,
                 ", ".join(str(self.pids[i]) for i in range(self.workers)))
        code = self._start_up()
        if code is not None:
            return code
        log.info("all %d workers ready", self.workers)
        return self._watch()

    def _start_up(self) -> int | None:
        """Wait for every worker to say it listens; one that exits first fails the start."""
        deadline = time.monotonic() + START_TIMEOUT
        while self.ready:
            if self._stop_requested():
                return self._stop_all(0)
            for index, status in self._reaped():
                self._error(f"worker {index} failed at start-up ({_status(status)})")
                return self._stop_all(2)
            if time.monotonic() > deadline:
                self._error(f"workers {sorted(self.ready)} did not start within {START_TIMEOUT:g} s")
                return self._stop_all(2)
            fds = list(self.ready.values())
            readable, _, _ = select.select(fds, [], [], 0.1)
            for index, fd in list(self.ready.items()):
                if fd in readable:
                    if os.read(fd, 1) == b"1":
                        os.close(fd)
                        del self.ready[index]
        return None

    def _watch(self) -> int:
        while True:
            if self._stop_requested():
                return self._stop_all(0)
            for index, status in self._reaped():
                now = time.monotonic()
                recent = [t for t in self.restarts[index] if now - t < RESTART_WINDOW]
                if len(recent) >= MAX_RESTARTS:
                    self._error(f"worker {index} died {len(recent) + 1} times within {RESTART_WINDOW:g} s "
                                f"({_status(status)}); stopping")
                    return self._stop_all(1)
                recent.append(now)
                self.restarts[index] = recent
                log.error("worker %d died (%s); restarting it", index, _status(status))
                os.close(self._spawn(index))
            time.sleep(0.1)

    def _stop_requested(self) -> bool:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGCHLD:
                continue
            self._kill(sig)
            if sig != signal.SIGHUP:
                return True
        return False

    def _reaped(self) -> list[tuple[int, int]]:
        out = []
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for index, p in list(self.pids.items()):
                if p == pid:
                    del self.pids[index]
                    fd = self.ready.pop(index, None)
                    if fd is not None:
                        os.close(fd)
                    out.append((index, status))
        return out

    def _kill(self, sig: int) -> None:
        for pid in self.pids.values():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _stop_all(self, code: int) -> int:
        self._kill(signal.SIGTERM)
        from presenced.runtime.server import shutdown_grace
        timeout = STOP_TIMEOUT + shutdown_grace(self.cfg)  # a worker may wait that long for NOTIFY answers first
        deadline = time.monotonic() + timeout
        while self.pids and time.monotonic() < deadline:
            for index, status in self._reaped():
                if code == 0 and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                    log.warning("worker %d stopped with %s", index, _status(status))
            time.sleep(0.05)
        if self.pids:
            log.error("workers %s did not stop within %g s: killed", sorted(self.pids), timeout)
            self._kill(signal.SIGKILL)
            while self.pids:
                self._reaped()
                time.sleep(0.05)
        return code

    @staticmethod
    def _error(msg: str) -> None:
        log.error("%s", msg)
        print(f"presenced: {msg}", file=sys.stderr, flush=True)


def _stop_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the supervisor dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.WEXITSTATUS(status)}"


def run_worker(server: WorkerServer, index: int) -> int:
    """The worker process's main: its own event loop, created after the fork."""
    from presenced.runtime.server import install_uvloop
    from presenced.storage.base import StoreError

    import presenced.logsetup

    presenced.logsetup.WORKER = index
    install_uvloop()
    try:
        asyncio.run(server.serve_forever())
    except StoreError as e:
        print(f"presenced: worker {index}: storage: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            print(f"presenced: worker {index}: cannot listen: {e}", file=sys.stderr, flush=True)
        else:
            print(f"presenced: worker {index}: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        pass
    return 0

