"""BOOTP/DHCPv4 packets as values: ``decode(bytes) -> DhcpPacket``, ``encode(DhcpPacket) -> bytes``.

Sans-IO, like h11: no sockets, no clock, no logging. The asyncio adapter moves bytes; the
policy (``dhcp_policy``) decides what to answer.

Wire rules implemented here:

* RFC 2131 fixed header (236 bytes) + magic cookie; ``decode`` rejects anything that is
  not a well-formed BOOTREQUEST/BOOTREPLY with :class:`~provisioner.errors.DhcpDecodeError`
  and never raises anything else.
* RFC 2131/2132 option overload (52): options found in ``file`` and/or ``sname`` are parsed;
  the overloaded fields then decode as ``""`` and option 52 itself is not kept (it is framing).
* RFC 3396 long options: every instance of one code is concatenated on decode (options,
  then file, then sname); ``encode`` splits values longer than 255 bytes into consecutive
  instances.
* ``encode`` writes option 53 first, appends End, pads to the 300-byte BOOTP minimum and
  honours the client's maximum message size (option 57, an IP datagram size: 28 bytes of
  IP and UDP headers are subtracted, and values below the legal 576 count as 576): a
  longer reply raises :class:`~provisioner.errors.DhcpReplyTooLarge`, the request's fault
  (it is the echo of its own option 82 that makes a reply long).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address
from typing import Any, Generic, TypeVar, overload

from provisioner.errors import DhcpDecodeError, DhcpReplyTooLarge

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC_COOKIE = b"\x63\x82\x53\x63"
HEADER_SIZE = 236
MIN_PACKET_SIZE = HEADER_SIZE + len(MAGIC_COOKIE)  # 240
BOOTP_MIN_SIZE = 300
MIN_MAX_MESSAGE_SIZE = 576
IP_UDP_HEADERS = 28
BROADCAST_FLAG = 0x8000
ZERO_IP = IPv4Address(0)

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_SNAME_SIZE = 64
_FILE_SIZE = 128


class MessageType(IntEnum):
    """DHCP message type (option 53), RFC 2132 section 9.6."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class OptionCode(IntEnum):
    """The option codes this appliance reads or writes."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS_SERVERS = 6
    DOMAIN_NAME = 15
    VENDOR_SPECIFIC = 43
    REQUESTED_ADDRESS = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER_NAME = 66
    BOOTFILE_NAME = 67
    USER_CLASS = 77
    RELAY_AGENT_INFO = 82
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    CLIENT_MACHINE_ID = 97
    IPXE_ENCAPSULATED = 175
    END = 255


@dataclass(frozen=True)
class NetworkInterfaceId:
    """Option 94 (RFC 4578): interface type (1 = UNDI) and its version."""

    type: int
    major: int
    minor: int


Option = tuple[int, bytes]
T = TypeVar("T")


class _cached(Generic[T]):
    """``functools.cached_property`` without its lock: Python 3.11 takes an RLock at each
    first read, a tenth of the DHCP adapter's time in a storm. A packet is read by one
    thread; two threads computing one value would compute the same value."""

    def __init__(self, compute: Callable[[Any], T]):
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _cached[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> T | _cached[T]:
        if instance is None:
            return self
        value = self.compute(instance)
        instance.__dict__[self.name] = value  # found there from now on (no __set__ here)
        return value


@dataclass(frozen=True)
class DhcpPacket:
    """One BOOTP/DHCP message. ``options`` holds (code, value) pairs, one per code, in order.

    Typed accessors return ``None`` (or an empty tuple) when an option is absent or its
    value is malformed; they never raise.
    """

    op: int
    htype: int
    hlen: int
    hops: int
    xid: int
    secs: int
    flags: int
    ciaddr: IPv4Address
    yiaddr: IPv4Address
    siaddr: IPv4Address
    giaddr: IPv4Address
    chaddr: bytes
    sname: str
    file: str
    options: tuple[Option, ...]

    def __post_init__(self) -> None:
        for name, value, bits in (
            ("op", self.op, 8),
            ("htype", self.htype, 8),
            ("hops", self.hops, 8),
            ("xid", self.xid, 32),
            ("secs", self.secs, 16),
            ("flags", self.flags, 16),
        ):
            if not 0 <= value < 1 << bits:
                raise ValueError(f"{name} = {value} does not fit in {bits} bits")
        if len(self.chaddr) != 16:
            raise ValueError(f"chaddr must be 16 bytes, got {len(self.chaddr)}")
        if not 0 <= self.hlen <= 16:
            raise ValueError(f"hlen = {self.hlen} is not in 0..16")
        seen: set[int] = set()
        for code, _ in self.options:
            if code in (OptionCode.PAD, OptionCode.END, OptionCode.OVERLOAD) or not 0 < code < 255:
                raise ValueError(f"option code {code} cannot be carried in options")
            if code in seen:
                raise ValueError(f"option {code} appears twice; concatenate values instead")
            seen.add(code)

    @_cached
    def _index(self) -> dict[int, bytes]:
        return dict(self.options)  # codes are unique (checked above)

    def option(self, code: int) -> bytes | None:
        """The value of option ``code`` (all RFC 3396 instances joined), or None."""
        return self._index.get(code)

    @_cached
    def mac(self) -> str | None:
        """chaddr[:hlen] as lowercase "aa:bb:cc:dd:ee:ff"; None when hlen is 0."""
        if self.hlen == 0:
            return None
        return self.chaddr[: self.hlen].hex(":")

    @_cached
    def message_type(self) -> MessageType | None:
        """Option 53, or None when absent or not a known type (1..8)."""
        value = self.option(OptionCode.MESSAGE_TYPE)
        if value is None or len(value) != 1:
            return None
        try:
            return MessageType(value[0])
        except ValueError:
            return None

    @property
    def requested_address(self) -> IPv4Address | None:
        """Option 50."""
        return self._ip(OptionCode.REQUESTED_ADDRESS)

    @property
    def server_identifier(self) -> IPv4Address | None:
        """Option 54."""
        return self._ip(OptionCode.SERVER_ID)

    @property
    def parameter_request_list(self) -> tuple[int, ...]:
        """Option 55, the option codes the client asks for."""
        return tuple(self.option(OptionCode.PARAMETER_REQUEST_LIST) or b"")

    @property
    def max_message_size(self) -> int | None:
        """Option 57, as sent (an IP datagram size); pass it to ``encode(max_size=...)``."""
        value = self.option(OptionCode.MAX_MESSAGE_SIZE)
        if value is None or len(value) != 2:
            return None
        return int.from_bytes(value, "big")

    @property
    def vendor_class(self) -> str | None:
        """Option 60, e.g. "PXEClient:Arch:00007:UNDI:003016"."""
        value = self.option(OptionCode.VENDOR_CLASS)
        return None if value is None else _text(value)

    @property
    def client_id(self) -> bytes | None:
        """Option 61."""
        return self.option(OptionCode.CLIENT_ID)

    @property
    def user_classes(self) -> tuple[str, ...]:
        """Option 77: RFC 3004 length-prefixed classes, or the raw value as one class.

        iPXE sends the bare string "iPXE", which is not valid RFC 3004 (0x69 > 3 bytes
        left), so it comes back as ``("iPXE",)``.
        """
        value = self.option(OptionCode.USER_CLASS)
        if not value:
            return ()
        classes: list[str] = []
        pos = 0
        while pos < len(value):
            size = value[pos]
            end = pos + 1 + size
            if size == 0 or end > len(value):
                return (_text(value),)
            classes.append(_text(value[pos + 1 : end]))
            pos = end
        return tuple(classes)

    @property
    def client_architectures(self) -> tuple[int, ...]:
        """Option 93 (RFC 4578): uint16 architecture types; () if absent or malformed."""
        value = self.option(OptionCode.CLIENT_ARCH)
        if not value or len(value) % 2:
            return ()
        return tuple(int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value), 2))

    @property
    def client_ndi(self) -> NetworkInterfaceId | None:
        """Option 94 (RFC 4578)."""
        value = self.option(OptionCode.CLIENT_NDI)
        if value is None or len(value) != 3:
            return None
        return NetworkInterfaceId(value[0], value[1], value[2])

    @property
    def client_machine_id(self) -> uuid.UUID | None:
        """Option 97 (RFC 4578): type 0 + 16 bytes, read in network byte order."""
        value = self.option(OptionCode.CLIENT_MACHINE_ID)
        if value is None or len(value) != 17 or value[0] != 0:
            return None
        return uuid.UUID(bytes=value[1:])

    @property
    def relay_agent_info(self) -> bytes | None:
        """Option 82 (RFC 3046), to be echoed unchanged in replies."""
        return self.option(OptionCode.RELAY_AGENT_INFO)

    @property
    def ipxe_options(self) -> bytes | None:
        """Option 175, iPXE's encapsulated options, undecoded."""
        return self.option(OptionCode.IPXE_ENCAPSULATED)

    def _ip(self, code: int) -> IPv4Address | None:
        value = self.option(code)
        if value is None or len(value) != 4:
            return None
        return IPv4Address(value)


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _field_text(raw: bytes) -> str:
    return _text(raw.split(b"\0", 1)[0])


def _parse_options(area: bytes, where: str, into: dict[int, bytearray]) -> None:
    """Parse one option area, appending each value to ``into[code]`` (RFC 3396)."""
    pos = 0
    size = len(area)
    while pos < size:
        code = area[pos]
        if code == OptionCode.END:
            return
        if code == OptionCode.PAD:
            pos += 1
            continue
        if pos + 1 >= size:
            raise DhcpDecodeError(f"option {code} in {where} truncated: no length byte")
        length = area[pos + 1]
        end = pos + 2 + length
        if end > size:
            raise DhcpDecodeError(
                f"option {code} in {where} truncated: length {length}, {size - pos - 2} bytes left"
            )
        into.setdefault(code, bytearray()).extend(area[pos + 2 : end])
        pos = end


def decode(data: bytes) -> DhcpPacket:
    """Parse one UDP payload. Raises DhcpDecodeError (and nothing else) when malformed."""
    if len(data) < MIN_PACKET_SIZE:
        raise DhcpDecodeError(f"packet too short: {len(data)} bytes, need {MIN_PACKET_SIZE}")
    fields = _HEADER.unpack_from(data)
    op, hlen, sname, file = fields[0], fields[2], fields[12], fields[13]
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpDecodeError(f"op {op} is neither BOOTREQUEST (1) nor BOOTREPLY (2)")
    if hlen > 16:
        raise DhcpDecodeError(f"hlen {hlen} exceeds the 16-byte chaddr field")
    if data[HEADER_SIZE:MIN_PACKET_SIZE] != MAGIC_COOKIE:
        raise DhcpDecodeError(f"bad magic cookie {data[HEADER_SIZE:MIN_PACKET_SIZE].hex()}")

    found: dict[int, bytearray] = {}
    _parse_options(data[MIN_PACKET_SIZE:], "options", found)
    overload_raw = found.pop(OptionCode.OVERLOAD, None)
    file_text, sname_text = _field_text(file), _field_text(sname)
    if overload_raw is not None:
        if len(overload_raw) != 1 or overload_raw[0] not in (1, 2, 3):
            raise DhcpDecodeError(f"bad option overload value {bytes(overload_raw).hex()}")
        overload = overload_raw[0]
        if overload & 1:
            _parse_options(file, "file", found)
            file_text = ""
        if overload & 2:
            _parse_options(sname, "sname", found)
            sname_text = ""
        if OptionCode.OVERLOAD in found:
            raise DhcpDecodeError("option overload inside an overloaded field")
    message_type = found.get(OptionCode.MESSAGE_TYPE)
    if message_type is not None and len(message_type) != 1:
        raise DhcpDecodeError(f"option 53 must be 1 byte, got {len(message_type)}")

    return DhcpPacket(
        op=op,
        htype=fields[1],
        hlen=hlen,
        hops=fields[3],
        xid=fields[4],
        secs=fields[5],
        flags=fields[6],
        ciaddr=IPv4Address(fields[7]),
        yiaddr=IPv4Address(fields[8]),
        siaddr=IPv4Address(fields[9]),
        giaddr=IPv4Address(fields[10]),
        chaddr=fields[11],
        sname=sname_text,
        file=file_text,
        options=tuple((code, bytes(value)) for code, value in found.items()),
    )


def _encode_field(text: str, size: int, name: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) >= size:
        raise ValueError(f"{name} {text!r} is {len(raw)} bytes; at most {size - 1} fit")
    return raw


def encode(pkt: DhcpPacket, *, max_size: int | None = None) -> bytes:
    """Serialise ``pkt``. ``max_size`` is the client's option 57, when it sent one.

    Raises DhcpReplyTooLarge when the message exceeds ``max_size``, and ValueError (a
    local bug, not a wire error) when sname/file do not fit.
    """
    header = _HEADER.pack(
        pkt.op,
        pkt.htype,
        pkt.hlen,
        pkt.hops,
        pkt.xid,
        pkt.secs,
        pkt.flags,
        pkt.ciaddr.packed,
        pkt.yiaddr.packed,
        pkt.siaddr.packed,
        pkt.giaddr.packed,
        pkt.chaddr,
        _encode_field(pkt.sname, _SNAME_SIZE, "sname"),
        _encode_field(pkt.file, _FILE_SIZE, "file"),
    )
    out = bytearray(header)
    out += MAGIC_COOKIE
    first = [opt for opt in pkt.options if opt[0] == OptionCode.MESSAGE_TYPE]
    rest = [opt for opt in pkt.options if opt[0] != OptionCode.MESSAGE_TYPE]
    for code, value in first + rest:
        if not value:
            out += bytes((code, 0))
        for start in range(0, len(value), 255):
            chunk = value[start : start + 255]
            out += bytes((code, len(chunk)))
            out += chunk
    out.append(OptionCode.END)
    if max_size is not None:
        limit = max(max_size, MIN_MAX_MESSAGE_SIZE) - IP_UDP_HEADERS
        if len(out) > limit:
            raise DhcpReplyTooLarge(f"reply is {len(out)} bytes; client accepts at most {limit}")
    if len(out) < BOOTP_MIN_SIZE:
        out += bytes(BOOTP_MIN_SIZE - len(out))
    return bytes(out)


def reply_to(
    request: DhcpPacket,
    *,
    message_type: MessageType,
    yiaddr: IPv4Address = ZERO_IP,
    siaddr: IPv4Address = ZERO_IP,
    file: str = "",
    sname: str = "",
    options: Iterable[Option] = (),
) -> DhcpPacket:
    """A BOOTREPLY to ``request``: xid, flags, giaddr, chaddr, htype and hlen copied.

    Option 53 comes first; the request's option 82 (relay agent info) is echoed last, as
    RFC 3046 asks. ciaddr is copied into ACKs only (RFC 2131 table 3).
    """
    opts: list[Option] = [(OptionCode.MESSAGE_TYPE, bytes((message_type,)))]
    opts.extend(options)
    relay_info = request.relay_agent_info
    if relay_info is not None:
        opts.append((OptionCode.RELAY_AGENT_INFO, relay_info))
    return DhcpPacket(
        op=BOOTREPLY,
        htype=request.htype,
        hlen=request.hlen,
        hops=0,
        xid=request.xid,
        secs=0,
        flags=request.flags,
        ciaddr=request.ciaddr if message_type == MessageType.ACK else ZERO_IP,
        yiaddr=yiaddr,
        siaddr=siaddr,
        giaddr=request.giaddr,
        chaddr=request.chaddr,
        sname=sname,
        file=file,
        options=tuple(opts),
    )


def option_ip(code: int, *addresses: IPv4Address) -> Option:
    """An option holding one or more IPv4 addresses (1, 3, 6, 54, ...)."""
    return (code, b"".join(a.packed for a in addresses))


def option_u32(code: int, value: int) -> Option:
    """An option holding one unsigned 32-bit integer (51, ...)."""
    return (code, value.to_bytes(4, "big"))


def option_text(code: int, value: str) -> Option:
    """An option holding text (15, 60, 66, 67, ...)."""
    return (code, value.encode("utf-8"))
