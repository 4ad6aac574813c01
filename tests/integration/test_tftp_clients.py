"""TftpService against real clients (curl, tftp-hpa) and hostile datagrams, on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.boot import tftp, tftp_sessions
from provisioner.boot.tftp import TftpService, TftpTransfer
from provisioner.errors import BootServiceError

# No tier marker: loopback only (real curl and tftp-hpa clients), in the fast tier.

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
needs_tftp = pytest.mark.skipif(
    shutil.which("tftp") is None, reason="the tftp-hpa client (tftp) is not installed"
)

HOST = "127.0.0.1"
BIG = 3 * 1024 * 1024


class Served:
    def __init__(self, root: Path, service: TftpService, events: list[TftpTransfer]) -> None:
        self.root = root
        self.service = service
        self.events = events
        self.port = service.port
        self.threads: list[str] = []  # the thread each transfer ended in (its session loop)

    def record(self, transfer: TftpTransfer) -> None:
        self.threads.append(threading.current_thread().name)
        self.events.append(transfer)

    def wait_events(self, count: int, timeout: float = 5.0) -> list[TftpTransfer]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.events


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "small.txt").write_bytes(b"#!ipxe\nchain http://10.0.0.1/boot.ipxe\n")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "sub" / "exact.bin").write_bytes(os.urandom(1468 * 4))  # ends with an empty DAT
    (tmp_path / "secret").write_text("outside\n")
    service = TftpService(root, HOST, 0)
    served = Served(root, service, [])
    service._on_transfer = served.record
    service.start()
    served.port = service.port
    try:
        yield served
    finally:
        service.stop()


def curl(port: int, name: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    url = f"tftp://{HOST}:{port}/{name}"
    argv = ["curl", "-s", "-S", "--max-time", "20", "-o", str(out), url, *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def tftp_hpa(port: int, *command: str) -> subprocess.CompletedProcess[str]:
    argv = ["tftp", HOST, str(port), "-m", "binary", "-c", *command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def tree(*dirs: Path) -> set[Path]:
    return {p for d in dirs for p in d.rglob("*")}


# --------------------------------------------------------------------- real clients


@needs_curl
@pytest.mark.parametrize("name", ["small.txt", "big.bin", "sub/exact.bin"])
@pytest.mark.parametrize("blksize", ["512", "1468", "65464"])
def test_curl_fetches_identical_bytes(
    served: Served, tmp_path: Path, name: str, blksize: str
) -> None:
    out = tmp_path / "out"
    result = curl(served.port, name, out, "--tftp-blksize", blksize)
    assert result.returncode == 0, result.stderr
    expected = (served.root / name).read_bytes()
    assert out.read_bytes() == expected
    [event] = served.wait_events(1)
    assert (event.filename, event.size, event.ok, event.error) == (name, len(expected), True, None)
    assert event.path == (served.root / name).resolve()
    assert event.remote_ip == HOST and event.remote_port > 0 and event.seconds > 0
    assert served.service.stats.files_sent == 1
    assert served.service.stats.bytes_sent == len(expected)


@needs_tftp
@pytest.mark.parametrize("name", ["small.txt", "big.bin", "/sub/exact.bin"])
def test_tftp_hpa_fetches_identical_bytes(served: Served, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    result = tftp_hpa(served.port, "get", name, str(out))
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr
    assert out.read_bytes() == (served.root / name.lstrip("/")).read_bytes()
    assert served.wait_events(1)[0].ok


@needs_curl
def test_concurrent_clients(served: Served, tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            ["curl", "-s", "--max-time", "30", "-o", str(tmp_path / f"o{i}"),
             f"tftp://{HOST}:{served.port}/big.bin", "--tftp-blksize", "1468"]
        )
        for i in range(16)
    ]  # fmt: skip
    assert [p.wait(60) for p in procs] == [0] * 16
    expected = (served.root / "big.bin").read_bytes()
    assert all((tmp_path / f"o{i}").read_bytes() == expected for i in range(16))
    assert len(served.wait_events(16)) == 16 and all(e.ok for e in served.events)
    # the sessions were handed to the loops in turn: each loop's thread served some
    assert set(served.threads) == {f"tftp-{n}" for n in range(tftp.LOOPS)}


def test_oack_carries_tsize_and_a_clamped_blksize(served: Served) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(rrq("big.bin", blksize="65536", tsize="0"), (HOST, served.port))
        reply, session = sock.recvfrom(65536)
        assert reply[:2] == b"\x00\x06", reply
        fields = reply[2:].split(b"\x00")[:-1]
        assert dict(zip(fields[::2], fields[1::2], strict=True)) == {
            b"blksize": b"65464",  # tftpy would have offered 65536: no datagram carries that
            b"tsize": str(BIG).encode(),
        }
        sock.sendto(struct.pack("!HH", 4, 0), session)  # ACK the OACK
        block = sock.recv(65536)
        assert block[:4] == b"\x00\x03\x00\x01" and len(block) == 4 + 65464
        sock.sendto(struct.pack("!HH", 5, 0) + b"abort\x00", session)  # as UEFI does
    [event] = served.wait_events(1)
    assert (event.ok, event.size, event.error) == (
        False,
        65464,
        f"ended after 65464 of {BIG} bytes",
    )
    assert served.service.stats.files_sent == 0


# ---------------------------------------------------------------- refusals


@needs_curl
@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "../secret", "sub/../../secret", "..%5c..%5csecret", "sub"]
)
def test_curl_gets_an_error_and_nothing_outside_the_root(
    served: Served, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    result = curl(served.port, name, out, "--path-as-is")
    assert result.returncode == 68, result  # curl: "TFTP: File not found"
    assert not out.exists() or out.read_bytes() == b""
    assert served.service.stats.refused == 1
    assert served.service.stats.bytes_sent == 0 and served.events == []


@needs_tftp
def test_tftp_hpa_traversal_is_refused(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "passwd"
    result = tftp_hpa(served.port, "get", "../../../../etc/passwd", str(out))
    assert "Error code 1: File not found" in result.stdout, result
    assert not out.exists() or out.read_bytes() == b""
    assert served.service.stats.refused == 1 and served.service.stats.bytes_sent == 0


@needs_tftp
@pytest.mark.parametrize("remote", ["upload.bin", "small.txt", "../uploaded", "new/dir/f"])
def test_writes_are_refused_and_write_nothing(served: Served, tmp_path: Path, remote: str) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(b"x" * 2000)
    private = Path(served.service._private or "")  # tftpy's own root: must stay empty
    before = tree(tmp_path, private)
    small = (served.root / "small.txt").read_bytes()
    result = tftp_hpa(served.port, "put", str(local), remote)
    assert "Error code 2: Access violation" in result.stdout, result  # tftp-hpa exits 0
    assert tree(tmp_path, private) == before
    assert list(private.iterdir()) == []
    assert (served.root / "small.txt").read_bytes() == small
    assert served.service.stats.write_refused == 1 and served.service.stats.requests == 1


# ---------------------------------------------------------------- hostile input


def rrq(name: str, mode: str = "octet", **options: str) -> bytes:
    fields = [name, mode, *(x for kv in options.items() for x in kv)]
    return b"\x00\x01" + b"".join(f.encode() + b"\x00" for f in fields)


GARBAGE = [
    os.urandom(64),
    b"\x00\x01",  # an RRQ opcode alone
    b"\x00\x01small.txt",  # no terminator
    b"\x00\x01small.txt\x00octet",  # no terminator after the mode
    b"\x00\x09small.txt\x00octet\x00",  # unknown opcode
    rrq("small.txt", mode="mail"),  # unknown mode
    b"\x00\x01\xffsmall\x00octet\x00",  # non-ASCII name: UnicodeDecodeError in tftpy
    rrq("small.txt", "octet", blksize="1468", odd="1")[:-3],  # odd option list
    b"\x00\x04\x00",  # truncated ACK: struct.error in tftpy
    b"\x00\x03\x00\x01data",  # a DAT is no way to start a session
]


@needs_curl
def test_garbage_is_counted_and_the_service_survives(served: Served, tmp_path: Path) -> None:
    for datagram in GARBAGE:  # each from its own port: tftpy keys sessions by ip:port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram, (HOST, served.port))
    deadline = time.monotonic() + 5
    while served.service.stats.malformed < len(GARBAGE) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.service.stats.malformed == len(GARBAGE)
    assert served.service.stats.requests == 0
    out = tmp_path / "out"
    assert curl(served.port, "small.txt", out).returncode == 0
    assert out.read_bytes() == (served.root / "small.txt").read_bytes()
    assert served.service.stats.restarts == 0


def test_bad_option_values_are_ignored_not_fatal(served: Served) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        # tftpy alone raises ValueError from its listen loop on blksize=abc
        sock.sendto(rrq("big.bin", blksize="abc", timeout="x"), (HOST, served.port))
        block = sock.recv(1024)
    assert block[:4] == b"\x00\x03\x00\x01" and len(block) == 4 + 512  # no OACK: defaults
    assert served.service.stats.malformed == 0 and served.service.stats.requests == 1


@needs_curl
def test_garbage_inside_a_session_ends_only_that_session(served: Served, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(rrq("big.bin"), (HOST, served.port))
        block, session = sock.recvfrom(1024)
        assert block[:4] == b"\x00\x03\x00\x01"
        sock.sendto(b"\x00\x04\x00", session)  # truncated ACK on the session port
    [event] = served.wait_events(1)
    assert (event.ok, event.size) == (False, 512)
    assert served.service.stats.malformed == 1
    out = tmp_path / "out"
    assert curl(served.port, "small.txt", out).returncode == 0
    assert served.service.stats.restarts == 0


@needs_curl
def test_too_many_sessions_are_dropped(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tftp, "MAX_SESSIONS", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as idle:  # never ACKs
        idle.sendto(rrq("big.bin"), (HOST, served.port))
        idle.settimeout(5)
        idle.recv(1024)
        assert curl(served.port, "small.txt", tmp_path / "out", "--max-time", "2").returncode
        assert served.service.stats.busy >= 1


@needs_curl
def test_a_bug_in_one_session_ends_only_that_session(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_confine = tftp.confine

    def broken(root: Path, requested: str) -> Path:
        if requested == "boom":
            raise RuntimeError("a bug in the adapter")
        return real_confine(root, requested)

    monkeypatch.setattr(tftp, "confine", broken)
    assert curl(served.port, "boom", tmp_path / "x", "--max-time", "2").returncode
    assert served.service.stats.errors >= 1  # curl may ask more than once
    out = tmp_path / "out"
    assert curl(served.port, "small.txt", out).returncode == 0
    assert out.read_bytes() == (served.root / "small.txt").read_bytes()
    assert served.service.stats.restarts == 0


@needs_curl
def test_a_failure_of_the_loop_itself_is_counted_and_it_goes_on(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_accept = tftp_sessions.SessionLoop._accept
    failures = [RuntimeError("a bug in the loop")]

    def accept_once_broken(loop: tftp_sessions.SessionLoop) -> None:
        if failures:
            raise failures.pop()
        real_accept(loop)

    monkeypatch.setattr(tftp_sessions.SessionLoop, "_accept", accept_once_broken)
    out = tmp_path / "out"
    assert curl(served.port, "small.txt", out).returncode == 0  # curl asks again
    assert out.read_bytes() == (served.root / "small.txt").read_bytes()
    assert served.service.stats.restarts == 1


# ---------------------------------------------------------------- lifecycle


def test_bind_failure_names_the_address(served: Served, tmp_path: Path) -> None:
    other = TftpService(tmp_path, HOST, served.port)
    with pytest.raises(BootServiceError, match=f"{HOST}:{served.port}"):
        other.start()
    other.stop()


def test_missing_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BootServiceError, match="not a directory"):
        TftpService(tmp_path / "nope", HOST, 0).start()


def test_stop_is_prompt_idempotent_and_ends_sessions(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 4096)
    events: list[TftpTransfer] = []
    service = TftpService(tmp_path, HOST, 0, on_transfer=events.append)
    service.stop()  # before start: nothing to do
    service.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(rrq("f"), (HOST, service.port))
        sock.recv(1024)  # a session in progress
        time.sleep(0.2)  # let tftpy's loop park in select()
        started = time.monotonic()
        service.stop()
        assert time.monotonic() - started < 1.0
    service.stop()
    assert [(e.ok, e.size) for e in events] == [(False, 512)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, service.port))  # the port is free again


@needs_curl
def test_a_session_socket_numbered_past_fd_setsize_is_served(
    served: Served, tmp_path: Path
) -> None:
    """select(2) refuses descriptors >= 1024: with a thousand HTTP connections open in
    serve, tftpy's loop died on each new session (the starvation check found it)."""
    held = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(1100)]
    try:
        assert held[-1].fileno() >= 1024
        out = tmp_path / "out"
        result = curl(served.port, "big.bin", out)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == (served.root / "big.bin").read_bytes()
        assert served.service.stats.restarts == 0
    finally:
        for sock in held:
            sock.close()
