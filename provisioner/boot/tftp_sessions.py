"""The TFTP service's sockets, threads and clock, around tftpy's sessions.

tftpy keeps the protocol (its packets, and a state machine per session in a
``TftpContextServer``); these loops replace tftpy's own ``TftpServer.listen``, which on
every datagram rebuilt the list of all session sockets to wait on, searched the sessions
one by one for the socket that was ready and checked every session's timer, in one
thread: with 64 iPXE fetches in flight it made 0.84x tftpd-hpa's files/s (tftpd-hpa
forks a process per transfer, so its sends use every core).

Here each :class:`SessionLoop` runs in a thread of its own with one poll(2) set: its
sessions' sockets (added and removed as they come and go), found from a ready socket
through a dict, and their timers looked at :data:`CHECK_SECONDS` apart (tftpy's
resend-now, for a duplicate ACK, is done at once). The first loop also holds the
listening socket: it starts each new session (the request's answer goes out from it)
and hands it to the loops in turn, so the sends, where the time goes (the GIL is let go
in ``sendto``), spread over the cores.

:class:`SessionKeys` is what the loops share: the ``ip:port`` of every session in
progress. Every datagram on the listening port is counted once by the caller's hooks
(a request, malformed, busy, or stray: from the address and port of a session in
progress). A session whose handling raises anything ends alone (a bug in the adapter is
logged and counted as an error); a failure of a loop itself is logged and counted, and
the loop goes on with the sessions it has.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tftpy.TftpShared import TftpException, TftpTimeout, TftpTimeoutExpectACK

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.25  # how often the sessions' retransmission timers are looked at
DRAIN_MAX = 64  # datagrams read from the listening port at one wakeup
MAX_DATAGRAM = 65536
FAILURE_PAUSE = 0.1  # after a loop's own failure, before it goes on


class SessionKeys:
    """The sessions in progress across the loops, by ``ip:port``."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def claim(self, key: str) -> bool:
        """Add ``key``; False when a session from there is in progress already."""
        with self._lock:
            if key in self._keys:
                return False
            self._keys.add(key)
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._keys.discard(key)


class SessionLoop:
    """One thread's sessions, and (for the first loop) the listening socket.

    ``new_session(ip, port, busy)``: a tftpy server context for a request from there,
    its packet factory guarded (it counts the first datagram, and refuses what it does
    not admit, or any request when ``busy``: that session ends at once);
    ``on_stray()``: a datagram on the listening port from a session's own address and
    port; ``on_error()``: a session ended by an unexpected exception; ``on_failure()``:
    the loop itself failed (logged; it goes on).
    """

    def __init__(
        self,
        sock: socket.socket | None,
        keys: SessionKeys,
        new_session: Callable[[str, int, bool], Any],
        *,
        max_sessions: Callable[[], int],
        on_stray: Callable[[], None],
        on_error: Callable[[], None],
        on_failure: Callable[[], None],
    ):
        self.sock = sock
        self.keys = keys
        self.peers: list[SessionLoop] = [self]  # whom new sessions go to, in turn
        self._turn = 0
        self._new_session = new_session
        self._max_sessions = max_sessions
        self._on_stray = on_stray
        self._on_error = on_error
        self._on_failure = on_failure
        self._poll = select.poll()
        if sock is not None:
            sock.setblocking(False)
            self._poll.register(sock.fileno(), select.POLLIN)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)  # drained when empty too (on the way out)
        os.set_blocking(self._wake_write, False)  # a full pipe wakes the loop already
        self._poll.register(self._wake_read, select.POLLIN)
        self._sessions: dict[str, Any] = {}  # "ip:port" -> its context
        self._by_fd: dict[int, str] = {}
        self._incoming: list[tuple[str, Any]] = []  # handed over by the first loop
        self._incoming_lock = threading.Lock()
        self._stopping = False

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def run(self) -> None:
        """Serve until :meth:`stop`; ends every session and closes the sockets on the way out."""
        listening = -1 if self.sock is None else self.sock.fileno()
        due = time.monotonic() + CHECK_SECONDS
        try:
            while not self._stopping:
                try:
                    wait = max(0.0, due - time.monotonic())
                    for fd, _ in self._poll.poll(int(wait * 1000) + 1):
                        if fd == listening:
                            self._accept()
                        elif fd == self._wake_read:
                            self._adopt_incoming()
                        else:
                            self._cycle(fd)
                    if time.monotonic() >= due:
                        self._check_timers(time.time())
                        due = time.monotonic() + CHECK_SECONDS
                except Exception:  # a bug in the loop itself: go on with what it has
                    log.exception("TFTP loop failed; going on")
                    self._on_failure()
                    time.sleep(FAILURE_PAUSE)
        finally:
            self._adopt_incoming()
            for key in list(self._sessions):
                self._end(key)
            if self.sock is not None:
                self.sock.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def stop(self) -> None:
        """Make :meth:`run` end its sessions and return (from any thread)."""
        self._stopping = True
        self._wake()

    def adopt(self, key: str, context: Any) -> None:
        """Take over a session started by the first loop (from its thread)."""
        with self._incoming_lock:
            self._incoming.append((key, context))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")

    def _adopt_incoming(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_read, 4096)
        with self._incoming_lock:
            incoming, self._incoming = self._incoming, []
        for key, context in incoming:
            self._track(key, context)

    # ------------------------------------------------------------------ datagrams

    def _accept(self) -> None:
        assert self.sock is not None
        for _ in range(DRAIN_MAX):
            try:
                buffer, (ip, port) = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket
                log.debug("tftp: listening socket: %s", exc)
                return
            key = f"{ip}:{port}"
            if not self.keys.claim(key):
                self._on_stray()  # tftpy ignores it too: the session has its own socket
                continue
            busy = len(self.keys) > self._max_sessions()
            try:
                context = self._new_session(ip, port, busy)
            except Exception:
                self.keys.release(key)
                raise
            self._track(key, context)
            self._run(key, context, functools.partial(context.start, buffer))
            if key in self._sessions:
                self._hand_over(key, context)

    def _hand_over(self, key: str, context: Any) -> None:
        """Give a started session to the next loop in turn (this one included)."""
        self._turn = (self._turn + 1) % len(self.peers)
        peer = self.peers[self._turn]
        if peer is self:
            return
        self._untrack(key, context)
        peer.adopt(key, context)

    def _cycle(self, fd: int) -> None:
        key = self._by_fd.get(fd)
        if key is None:
            return
        context = self._sessions[key]
        context.timeout_expectACK = False
        self._run(key, context, context.cycle)

    def _run(self, key: str, context: Any, step: Callable[[], object]) -> None:
        """One step of a session (its first datagram, or the next one on its socket)."""
        try:
            step()
        except TftpTimeoutExpectACK:  # a duplicate ACK: resend the last block now
            context.timeout_expectACK = True
            self._timed_out(key, context)
            return
        except TftpException as exc:
            log.debug("tftp: session %s ended: %s", key, exc)
            self._end(key)
            return
        except Exception:
            log.exception("tftp: session %s failed", key)
            self._on_error()
            self._end(key)
            return
        if context.state is None:  # the last ACK came: done
            self._end(key)

    # ------------------------------------------------------------------ timers

    def _check_timers(self, now: float) -> None:
        for key, context in list(self._sessions.items()):
            try:
                context.checkTimeout(now)
            except TftpTimeout:
                self._timed_out(key, context)

    def _timed_out(self, key: str, context: Any) -> None:
        context.retry_count += 1
        if context.retry_count >= context.retries:
            log.debug("tftp: session %s: no answer after %d tries", key, context.retries)
            self._end(key)
            return
        try:
            context.state.resendLast()
        except Exception as exc:  # a send that fails (no route): the session is over
            log.debug("tftp: session %s: resend failed: %s", key, exc)
            self._end(key)

    # ------------------------------------------------------------------ bookkeeping

    def _track(self, key: str, context: Any) -> None:
        fd = context.sock.fileno()
        self._sessions[key] = context
        self._by_fd[fd] = key
        self._poll.register(fd, select.POLLIN)

    def _untrack(self, key: str, context: Any) -> None:
        self._sessions.pop(key, None)
        fd = context.sock.fileno()
        if fd >= 0:
            self._by_fd.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self._poll.unregister(fd)

    def _end(self, key: str) -> None:
        context = self._sessions.get(key)
        if context is None:
            return
        self._untrack(key, context)
        self.keys.release(key)
        try:
            context.end()  # closes its socket, and the file (which reports the transfer)
        except Exception:
            log.exception("tftp: ending session %s failed", key)
