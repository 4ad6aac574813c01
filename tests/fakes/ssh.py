"""A fake for :class:`provisioner.postinstall.ssh.Connection`: scripted answers, no sockets.

A :class:`FakeNode` is the machine: what it answers, what it was asked, the files written
to it. It outlives its connections, as a node outlives an SSH session::

    node = FakeNode("node1")
    node.on("systemctl is-active llama-rpc.service", stdout="active\\n")
    node.on(re.compile(r"^kill -9 "), exit_status=1, stderr="no such process")
    node.on(re.compile(r"MainPID"), replies(Reply("100\\n"), Reply("200\\n")))
    node.on("same /etc/motd", node.file_is("/etc/motd", b"hello\\n"))
    with node.connect() as conn:  # a FakeConnection
        conn.run("systemctl is-active llama-rpc.service").stdout  # "active\\n"
    node.commands  # ["systemctl is-active llama-rpc.service"]
    node.puts  # [Put(path, data, mode)], in order; node.log: commands and puts in order
    node.files  # {path: bytes}: what the puts left (a test may set it beforehand)

A command no rule matches answers ``default`` (exit 0, no output). The latest rule that
matches wins: a test re-scripts a node (a fix deployed) by adding a rule. ``drop_after``
loses the connection after that many more calls (the real one's :class:`SshError`);
``unreachable`` refuses connecting.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

from provisioner.postinstall.ssh import Result, SshError


@dataclass(frozen=True)
class Reply:
    stdout: str = ""
    stderr: str = ""
    exit_status: int = 0


@dataclass(frozen=True)
class Put:
    path: str
    data: bytes
    mode: int


Answer = Reply | Callable[[str], Reply]  # a callable gets the command
Pattern = str | re.Pattern[str]  # a string matches the whole command, a regex searches it


def replies(*answers: Reply) -> Callable[[str], Reply]:
    """Each call the next answer; the last one repeats."""
    left = list(answers)

    def answer(command: str) -> Reply:
        return left.pop(0) if len(left) > 1 else left[0]

    return answer


@dataclass
class FakeNode:
    name: str
    default: Reply = Reply()
    drop_after: int | None = None  # calls (run or put) before the connection is lost
    unreachable: bool = False
    rules: list[tuple[Pattern, Answer]] = field(default_factory=list)
    log: list[str | Put] = field(default_factory=list)  # every command and put, in order
    files: dict[str, bytes] = field(default_factory=dict)
    connections: list[FakeConnection] = field(default_factory=list)

    def on(
        self,
        pattern: Pattern,
        answer: Answer | None = None,
        *,
        stdout: str = "",
        stderr: str = "",
        exit_status: int = 0,
    ) -> None:
        self.rules.append((pattern, answer or Reply(stdout, stderr, exit_status)))

    def connect(self) -> FakeConnection:
        if self.unreachable:
            raise SshError(f"{self.name} (fake): cannot connect: connection refused")
        conn = FakeConnection(self)
        self.connections.append(conn)
        return conn

    def file_is(self, path: str, data: bytes) -> Callable[[str], Reply]:
        """An answer: exit 0 while ``path`` holds ``data`` on this node, else 1 (for the
        ``same`` check of a step that puts a file)."""
        return lambda command: Reply(exit_status=0 if self.files.get(path) == data else 1)

    @property
    def commands(self) -> list[str]:
        return [c for c in self.log if isinstance(c, str)]

    @property
    def puts(self) -> list[Put]:
        return [p for p in self.log if isinstance(p, Put)]

    def answer(self, command: str) -> Reply:
        for pattern, answer in reversed(self.rules):
            hit = command == pattern if isinstance(pattern, str) else pattern.search(command)
            if hit:
                return answer if isinstance(answer, Reply) else answer(command)
        return self.default

    def _call(self, failure: str) -> None:
        """Count one call; lose the connection (raise ``failure``, worded as the real
        one's) when ``drop_after`` runs out."""
        if self.drop_after is not None:
            if self.drop_after <= 0:
                self.drop_after = None
                raise SshError(f"{self.name}: {failure}: connection dropped (fake)")
            self.drop_after -= 1


class FakeConnection:
    """One session to a :class:`FakeNode`, shaped like :class:`Connection`."""

    def __init__(self, node: FakeNode):
        self.node = node
        self.closed = False

    def run(self, command: str, *, timeout: float = 300.0) -> Result:
        if self.closed:
            raise SshError(f"{self.node.name}: the SSH connection is closed")
        self.node._call(f"running {command[:60]!r} failed")
        self.node.log.append(command)
        reply = self.node.answer(command)
        return Result(command, reply.exit_status, reply.stdout, reply.stderr, 0.0)

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        if self.closed:
            raise SshError(f"{self.node.name}: cannot write {path}: the connection is closed")
        self.node._call(f"cannot write {path}")
        self.node.log.append(Put(path, data, mode))
        self.node.files[path] = data

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
