"""netconsole's two wire formats, without sockets: datagrams in, kernel lines out.

Plain netconsole sends what the kernel prints on a console: text, a record per datagram
(``[   12.345678] message\\n`` with ``printk.time``), a record longer than one datagram's
1000 bytes cut into several (only the last ends with a newline).

Extended netconsole (``+`` in ``netconsole=``, ``extended`` in configfs) sends
``/dev/kmsg``'s format: ``PREFIX,SEQ,TS_USEC,FLAGS[,...];MESSAGE\\n`` and then the
record's dictionary, each line indented by a space (dropped here). ``PREFIX`` is
``facility * 8 + level``; non-printable bytes are escaped ``\\xNN`` by the kernel. A
record that does not fit in one datagram is sent in fragments whose header carries
``,ncfrag=OFFSET/TOTAL`` (offsets into the body); they are put back together here.
``release`` targets put the kernel release first (``6.1.0-57-amd64,6,...``).

:class:`Decoder` keeps one source's partial state (a cut plain record, fragments): one
per node, bounded. What is not a kernel message is dropped with a reason
(:data:`DROP_REASONS`); only the caller counts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_DATAGRAM = 2048  # netconsole sends at most 1000 bytes of text plus a header
MAX_LINE = 1024  # characters kept of one line (the kernel's own records are shorter)
MAX_RECORD = 16 * 1024  # an extended record put back from fragments, dictionary included
MAX_PENDING = 8  # records being reassembled at once, per source

DROP_REASONS = ("oversize", "empty", "not-text", "bad-header", "bad-fragment")

_EXTENDED = re.compile(
    rb"^(?:(?P<release>[^,;\n]*[^0-9,;\n][^,;\n]*),)?"
    rb"(?P<prefix>[0-9]{1,4}),(?P<seq>[0-9]{1,20}),(?P<ts>[0-9]{1,20}),(?P<flags>[^,;\n]*)"
    rb"(?P<extra>(?:,[^,;\n]*)*);"
)
_FRAGMENT = re.compile(rb"^ncfrag=([0-9]{1,6})/([0-9]{1,6})$")
_PLAIN_TIME = re.compile(r"^\[\s*([0-9]{1,10}\.[0-9]{1,9})\]\s?")
# C0 and C1 controls and DEL: a node's text must not drive the operator's terminal.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# The kernel prints its command line: the boot script's per-boot token is not kept.
_SECRET = re.compile(r"\b(provisioner\.token=)\S+")
HIDDEN = "<hidden>"


class Dropped(Exception):
    """A datagram that is not a kernel message; ``reason`` is one of DROP_REASONS."""

    def __init__(self, reason: str, why: str):
        assert reason in DROP_REASONS
        super().__init__(f"{reason}: {why}")
        self.reason = reason


@dataclass(frozen=True)
class KernelLine:
    """One line of a node's kernel log as received.

    ``level``: 0 (emerg) .. 7 (debug), extended format only; ``seq``: the record's
    sequence number (extended only; it starts at 0 at every boot); ``kernel_ts``: seconds
    since the node's kernel started (extended, or a plain line with ``printk.time``)."""

    text: str
    level: int | None = None
    seq: int | None = None
    kernel_ts: float | None = None

    def as_dict(self) -> dict[str, str | int | float | None]:
        return {
            "text": self.text,
            "level": self.level,
            "seq": self.seq,
            "kernel_ts": self.kernel_ts,
        }


def clean(text: str) -> str:
    """One line fit to print and keep: controls out (tabs become spaces), trailing space
    gone, a boot token hidden, at most :data:`MAX_LINE` characters."""
    text = _CONTROL.sub("", text.replace("\t", " ").replace("\r", "")).rstrip()
    return _SECRET.sub(r"\g<1>" + HIDDEN, text)[:MAX_LINE]


def _text(data: bytes) -> str:
    if b"\x00" in data:
        raise Dropped("not-text", "NUL bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Dropped("not-text", f"not UTF-8 at byte {exc.start}") from None


def plain_line(text: str) -> KernelLine | None:
    """A plain netconsole line; its ``[ seconds]`` prefix read, if it has one."""
    found = _PLAIN_TIME.match(text)
    kernel_ts = float(found.group(1)) if found else None
    body = clean(text[found.end() :] if found else text)
    if not body and kernel_ts is None:
        return None
    return KernelLine(body, kernel_ts=kernel_ts)


@dataclass
class _Fragments:
    total: int
    parts: dict[int, bytes] = field(default_factory=dict)

    def complete(self) -> bytes | None:
        body, at = b"", 0
        while at < self.total:
            part = self.parts.get(at)
            if not part:
                return None
            body += part
            at += len(part)
        return body[: self.total] if at == self.total else None


@dataclass
class Decoder:
    """One source's datagrams -> kernel lines. Not thread-safe: one per node."""

    _partial: str = ""  # a plain record cut by the 1000-byte limit, waiting for its end
    _fragments: dict[int, tuple[bytes, _Fragments]] = field(default_factory=dict)

    def feed(self, datagram: bytes) -> list[KernelLine]:
        """The complete lines ``datagram`` gives (none while a record is still partial);
        :class:`Dropped` when it is not a kernel message (nothing of it is kept)."""
        if len(datagram) > MAX_DATAGRAM:
            raise Dropped("oversize", f"{len(datagram)} bytes")
        if not datagram.strip():
            raise Dropped("empty", "no text")
        head = _EXTENDED.match(datagram)
        if head is not None:
            return self._extended(head, datagram[head.end() :])
        return self._plain(_text(datagram))

    # ---------------------------------------------------------------- plain

    def _plain(self, text: str) -> list[KernelLine]:
        text = self._partial + text
        *complete, rest = text.split("\n")
        self._partial = rest
        if len(self._partial) > MAX_LINE:  # no end in sight: keep what came as a line
            complete.append(self._partial)
            self._partial = ""
        lines = [plain_line(raw) for raw in complete]
        return [line for line in lines if line is not None]

    # ---------------------------------------------------------------- extended

    def _extended(self, head: re.Match[bytes], body: bytes) -> list[KernelLine]:
        prefix, seq = int(head["prefix"]), int(head["seq"])
        if prefix > 1023:
            raise Dropped("bad-header", f"syslog prefix {prefix}")
        extras = [e for e in head["extra"].split(b",") if e]
        fragment = next((_FRAGMENT.match(e) for e in extras if e.startswith(b"ncfrag=")), None)
        if any(e.startswith(b"ncfrag=") for e in extras) and fragment is None:
            raise Dropped("bad-fragment", "unreadable ncfrag=")
        if fragment is not None:
            whole = self._reassemble(seq, head, body, int(fragment[1]), int(fragment[2]))
            if whole is None:
                return []
            body = whole
        message = _text(body).split("\n", 1)[0]  # the dictionary's lines follow: not kept
        return [
            KernelLine(
                clean(message), level=prefix & 7, seq=seq, kernel_ts=int(head["ts"]) / 1_000_000
            )
        ]

    def _reassemble(
        self, seq: int, head: re.Match[bytes], part: bytes, offset: int, total: int
    ) -> bytes | None:
        if total > MAX_RECORD or offset >= total or offset + len(part) > total or not part:
            raise Dropped("bad-fragment", f"ncfrag={offset}/{total} with {len(part)} bytes")
        key = head.group(0)[: head.start("extra") - head.start(0)]  # same record: same header
        held = self._fragments.get(seq)
        if held is None or held[0] != key or held[1].total != total:
            held = (key, _Fragments(total))
            self._fragments[seq] = held
            while len(self._fragments) > MAX_PENDING:  # the oldest never completed
                del self._fragments[next(iter(self._fragments))]
        held[1].parts[offset] = part
        whole = held[1].complete()
        if whole is not None:
            del self._fragments[seq]
        return whole
