"""The DHCP codec against packets built and read independently by scapy."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from provisioner.boot.dhcp_codec import (
    BOOTP_MIN_SIZE,
    DhcpPacket,
    MessageType,
    NetworkInterfaceId,
    OptionCode,
    decode,
    encode,
    option_ip,
    option_text,
    reply_to,
)
from provisioner.errors import DhcpDecodeError, DhcpReplyTooLarge

MAC = "52:54:00:ab:cd:ef"
CHADDR = bytes.fromhex("525400ABCDEF")
GUID = uuid.UUID("4c4c4544-0042-3510-8052-b7c04f333232")
VENDOR_BIOS = b"PXEClient:Arch:00000:UNDI:002001"
VENDOR_UEFI = b"PXEClient:Arch:00007:UNDI:003016"


def scapy_packet(options: list[Any], *, end: bool = True, **bootp: Any) -> bytes:
    fields: dict[str, Any] = {"op": 1, "xid": 0x1234ABCD, "flags": 0x8000, "chaddr": CHADDR}
    fields.update(bootp)
    return bytes(BOOTP(**fields) / DHCP(options=[*options, *(["end"] if end else [])]))


def scapy_options(data: bytes) -> list[tuple[Any, ...]]:
    return [o for o in BOOTP(data)[DHCP].options if isinstance(o, tuple)]


def pxe_discover(**bootp: Any) -> bytes:
    return scapy_packet(
        [
            ("message-type", "discover"),
            ("max_dhcp_size", 1464),
            ("param_req_list", [1, 3, 6, 43, 60, 66, 67]),
            ("vendor_class_id", VENDOR_UEFI),
            (93, b"\x00\x07"),
            (94, b"\x01\x03\x10"),
            (97, b"\x00" + GUID.bytes),
            ("client_id", b"\x01" + CHADDR),
            ("requested_addr", "10.0.0.42"),
            ("server_id", "10.0.0.1"),
        ],
        **bootp,
    )


def test_decode_fixed_fields_from_scapy() -> None:
    pkt = decode(pxe_discover(secs=4, ciaddr="10.0.0.9", giaddr="10.0.5.1", hops=1))
    assert (pkt.op, pkt.htype, pkt.hlen, pkt.hops) == (1, 1, 6, 1)
    assert (pkt.xid, pkt.secs, pkt.flags) == (0x1234ABCD, 4, 0x8000)
    assert pkt.ciaddr == IPv4Address("10.0.0.9")
    assert pkt.yiaddr == IPv4Address("0.0.0.0")
    assert pkt.giaddr == IPv4Address("10.0.5.1")
    assert pkt.chaddr == CHADDR + bytes(10)
    assert pkt.mac == MAC
    assert (pkt.sname, pkt.file) == ("", "")


def test_decode_typed_accessors() -> None:
    pkt = decode(pxe_discover())
    assert pkt.message_type is MessageType.DISCOVER
    assert pkt.max_message_size == 1464
    assert pkt.parameter_request_list == (1, 3, 6, 43, 60, 66, 67)
    assert pkt.vendor_class == VENDOR_UEFI.decode()
    assert pkt.client_architectures == (7,)
    assert pkt.client_ndi == NetworkInterfaceId(1, 3, 16)
    assert pkt.client_machine_id == GUID
    assert pkt.client_id == b"\x01" + CHADDR
    assert pkt.requested_address == IPv4Address("10.0.0.42")
    assert pkt.server_identifier == IPv4Address("10.0.0.1")
    assert pkt.user_classes == ()
    assert pkt.relay_agent_info is None
    assert [code for code, _ in pkt.options] == [53, 57, 55, 60, 93, 94, 97, 61, 50, 54]


def test_ipxe_options_and_multiple_arches() -> None:
    encapsulated = b"\xb1\x05\x01\x80\x86\x10\x0e\x13\x01\x01"
    pkt = decode(
        scapy_packet(
            [
                ("message-type", "request"),
                (77, b"iPXE"),
                (175, encapsulated),
                (93, b"\x00\x10\x00\x07"),
                (82, b"\x01\x04eth0"),
            ]
        )
    )
    assert pkt.user_classes == ("iPXE",)
    assert pkt.ipxe_options == encapsulated
    assert pkt.client_architectures == (16, 7)
    assert pkt.relay_agent_info == b"\x01\x04eth0"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"iPXE", ("iPXE",)),  # iPXE: the bare string
        (b"\x04iPXE", ("iPXE",)),  # RFC 3004
        (b"\x04iPXE\x07gpu-box", ("iPXE", "gpu-box")),
        (b"\x09iPXE", ("\tiPXE",)),  # length runs past the end: not RFC 3004
    ],
)
def test_user_class_forms(raw: bytes, expected: tuple[str, ...]) -> None:
    pkt = decode(scapy_packet([("message-type", "discover"), (77, raw)]))
    assert pkt.user_classes == expected


@pytest.mark.parametrize(
    ("code", "value", "accessor"),
    [
        (50, b"\x0a\x00\x00", "requested_address"),
        (54, b"\x0a\x00\x00\x01\x02", "server_identifier"),
        (57, b"\x05", "max_message_size"),
        (94, b"\x01\x02", "client_ndi"),
        (97, b"\x01" + bytes(16), "client_machine_id"),
        (97, bytes(10), "client_machine_id"),
    ],
)
def test_malformed_option_values_read_as_none(code: int, value: bytes, accessor: str) -> None:
    pkt = decode(scapy_packet([("message-type", "discover"), (code, value)]))
    assert pkt.option(code) == value
    assert getattr(pkt, accessor) is None


def test_odd_arch_option_reads_as_empty() -> None:
    pkt = decode(scapy_packet([("message-type", "discover"), (93, b"\x00\x07\x00")]))
    assert pkt.client_architectures == ()


def test_unknown_message_type_and_missing_type() -> None:
    assert decode(scapy_packet([(53, b"\x0d")])).message_type is None
    assert decode(scapy_packet([(53, b"\x0d")])).option(53) == b"\x0d"
    assert decode(scapy_packet([(60, b"x")])).message_type is None


def test_mac_needs_a_hardware_address_length() -> None:
    assert decode(pxe_discover(hlen=0)).mac is None
    assert decode(pxe_discover(hlen=4)).mac == "52:54:00:ab"


def test_repeated_option_instances_are_concatenated() -> None:
    data = scapy_packet(
        [
            ("message-type", "discover"),
            (43, b"\x01" * 255),
            (43, b"\x02" * 100),
            (60, b"PXE"),
            (43, b"\x03"),  # RFC 3396: even when not adjacent
            (60, b"Client"),
        ]
    )
    pkt = decode(data)
    assert pkt.option(43) == b"\x01" * 255 + b"\x02" * 100 + b"\x03"
    assert pkt.vendor_class == "PXEClient"
    assert [code for code, _ in pkt.options] == [53, 43, 60]


@pytest.mark.parametrize(
    ("overload", "file", "sname", "expect_file", "expect_sname"),
    [
        (1, b"\x3c\x09PXEClient\xff", b"srv1", "", "srv1"),
        (2, b"boot.efi", b"\x3c\x09PXEClient\xff", "boot.efi", ""),
        (3, b"\x3c\x04PXEC\xff", b"\x3c\x05lient\x5d\x02\x00\x07\xff", "", ""),
    ],
)
def test_option_overload_reads_file_and_sname(
    overload: int, file: bytes, sname: bytes, expect_file: str, expect_sname: str
) -> None:
    data = scapy_packet(
        [("message-type", "discover"), (52, bytes([overload]))], file=file, sname=sname
    )
    pkt = decode(data)
    assert pkt.vendor_class == "PXEClient"
    assert (pkt.file, pkt.sname) == (expect_file, expect_sname)
    assert pkt.option(52) is None  # framing, not kept
    if overload == 3:
        assert pkt.client_architectures == (7,)


def test_overload_concatenates_options_then_file_then_sname() -> None:
    data = scapy_packet(
        [("message-type", "discover"), (43, b"A"), (52, b"\x03")],
        file=b"\x2b\x01B\xff",
        sname=b"\x2b\x01C\xff",
    )
    assert decode(data).option(43) == b"ABC"


GOOD = pxe_discover()


def _with(offset: int, value: bytes, data: bytes = GOOD) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (GOOD[:239], "too short"),
        (_with(0, b"\x03"), "op 3"),
        (_with(0, b"\x00"), "op 0"),
        (_with(2, b"\x11"), "hlen 17"),
        (_with(236, b"\x63\x82\x53\x64"), "magic cookie"),
        (GOOD[:240] + b"\x35\x01\x01\x3c", "no length byte"),
        (GOOD[:240] + b"\x35\x01\x01\x3c\x20PXE", "length 32, 3 bytes left"),
        (scapy_packet([(53, b"\x01\x01")]), "option 53 must be 1 byte"),
        (scapy_packet([(53, b"\x01"), (52, b"\x04")]), "overload"),
        (scapy_packet([(53, b"\x01"), (52, b"\x01\x01")]), "overload"),
        (scapy_packet([(53, b"\x01"), (52, b"\x01")], file=b"\x3c\x80PXE"), "in file truncated"),
        (scapy_packet([(53, b"\x01"), (52, b"\x01")], file=b"\x34\x01\x02\xff"), "overload inside"),
    ],
)
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(DhcpDecodeError, match=message):
        decode(data)


def test_missing_end_option_is_tolerated() -> None:
    pkt = decode(scapy_packet([("message-type", "request")], end=False))
    assert pkt.message_type is MessageType.REQUEST


def _only_decode_errors(data: bytes) -> None:
    try:
        pkt = decode(data)
    except DhcpDecodeError:
        return
    # Everything a decoded packet offers must be total as well.
    _ = (pkt.mac, pkt.message_type, pkt.user_classes, pkt.client_machine_id)
    _ = (pkt.client_architectures, pkt.client_ndi, pkt.max_message_size, pkt.vendor_class)
    _ = (pkt.requested_address, pkt.server_identifier, pkt.parameter_request_list)


def test_garbage_raises_only_decode_errors() -> None:
    rng = random.Random(20240601)
    for _ in range(3000):
        size = rng.choice([0, 1, 100, 239, 240, 241, 250, 300, 576, 1500])
        data = bytearray(rng.getrandbits(8) for _ in range(size))
        if size >= 240 and rng.random() < 0.7:  # get past the header checks often
            data[0] = rng.choice([1, 2])
            data[2] = rng.randrange(17)
            data[236:240] = b"\x63\x82\x53\x63"
        _only_decode_errors(bytes(data))


def test_truncations_and_mutations_raise_only_decode_errors() -> None:
    overloaded = scapy_packet(
        [("message-type", "discover"), (52, b"\x03")],
        file=b"\x3c\x04PXEC\xff",
        sname=b"\x3c\x05lient\xff",
    )
    rng = random.Random(7)
    for good in (GOOD, overloaded):
        for cut in range(len(good) + 1):
            _only_decode_errors(good[:cut])
        for _ in range(3000):
            data = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            _only_decode_errors(bytes(data))


def _reply() -> DhcpPacket:
    request = decode(pxe_discover(giaddr="10.0.5.1", ciaddr="10.0.0.9"))
    return reply_to(
        request,
        message_type=MessageType.OFFER,
        yiaddr=IPv4Address("10.0.0.42"),
        siaddr=IPv4Address("10.0.0.1"),
        file="ipxe.efi",
        sname="10.0.0.1",
        options=[
            option_ip(OptionCode.SERVER_ID, IPv4Address("10.0.0.1")),
            option_text(OptionCode.VENDOR_CLASS, "PXEClient"),
            (OptionCode.VENDOR_SPECIFIC, b"\x06\x01\x08\xff"),
        ],
    )


def test_encoded_reply_read_by_scapy() -> None:
    data = encode(_reply())
    assert len(data) == BOOTP_MIN_SIZE
    parsed = BOOTP(data)
    assert parsed.op == 2
    assert parsed.xid == 0x1234ABCD
    assert parsed.flags == 0x8000
    assert parsed.ciaddr == "0.0.0.0"  # only ACKs carry ciaddr
    assert parsed.yiaddr == "10.0.0.42"
    assert parsed.siaddr == "10.0.0.1"
    assert parsed.giaddr == "10.0.5.1"
    assert parsed.chaddr[:6] == CHADDR
    assert parsed.file.rstrip(b"\0") == b"ipxe.efi"
    assert parsed.sname.rstrip(b"\0") == b"10.0.0.1"
    assert scapy_options(data) == [
        ("message-type", 2),
        ("server_id", "10.0.0.1"),
        ("vendor_class_id", b"PXEClient"),
        ("vendor_specific", b"\x06\x01\x08\xff"),
    ]


def test_reply_to_echoes_relay_info_last_and_ack_keeps_ciaddr() -> None:
    request = decode(
        scapy_packet([("message-type", "request"), (82, b"\x01\x02ab")], ciaddr="10.0.0.9")
    )
    ack = reply_to(request, message_type=MessageType.ACK, options=[(66, b"x")])
    assert [code for code, _ in ack.options] == [53, 66, 82]
    assert ack.relay_agent_info == b"\x01\x02ab"
    assert ack.ciaddr == IPv4Address("10.0.0.9")
    assert (ack.op, ack.hops, ack.xid, ack.chaddr) == (2, 0, request.xid, request.chaddr)


def test_round_trip() -> None:
    pkt = decode(pxe_discover(giaddr="10.0.5.1"))
    assert decode(encode(pkt)) == pkt
    reply = _reply()
    assert decode(encode(reply)) == reply


def test_message_type_is_written_first() -> None:
    pkt = replace(_reply(), options=((60, b"PXEClient"), (53, b"\x05")))
    assert scapy_options(encode(pkt))[0] == ("message-type", 5)


def test_long_option_is_split_into_instances() -> None:
    value = bytes(range(256)) * 2 + b"tail"  # 516 bytes
    pkt = replace(_reply(), options=((53, b"\x02"), (43, value), (66, b"srv")))
    data = encode(pkt)
    assert scapy_options(data) == [
        ("message-type", 2),
        ("vendor_specific", value[:255]),
        ("vendor_specific", value[255:510]),
        ("vendor_specific", value[510:]),
        ("tftp_server_name", b"srv"),
    ]
    assert decode(data).option(43) == value


def test_empty_option_value_is_encoded() -> None:
    pkt = replace(_reply(), options=((53, b"\x02"), (80, b"")))
    assert decode(encode(pkt)).option(80) == b""


def test_max_size_is_enforced() -> None:
    big = replace(_reply(), options=((53, b"\x02"), (43, bytes(600))))
    assert len(encode(big)) > 576
    encode(big, max_size=1500)
    with pytest.raises(DhcpReplyTooLarge, match="at most 548"):
        encode(big, max_size=576)
    with pytest.raises(DhcpReplyTooLarge, match="at most 548"):
        encode(big, max_size=300)  # below the legal minimum: treated as 576
    assert len(encode(_reply(), max_size=576)) == BOOTP_MIN_SIZE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"options": ((53, b"\x01"), (53, b"\x02"))}, "twice"),
        ({"options": ((0, b""),)}, "code 0"),
        ({"options": ((52, b"\x01"),)}, "code 52"),
        ({"options": ((255, b""),)}, "code 255"),
        ({"chaddr": b"\x01" * 6}, "chaddr"),
        ({"hlen": 17}, "hlen"),
        ({"xid": 1 << 32}, "xid"),
    ],
)
def test_packet_rejects_unencodable_values(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(_reply(), **change)


def test_encode_rejects_overlong_names() -> None:
    with pytest.raises(ValueError, match="file"):
        encode(replace(_reply(), file="x" * 128))
    with pytest.raises(ValueError, match="sname"):
        encode(replace(_reply(), sname="x" * 64))
    assert decode(encode(replace(_reply(), file="f" * 127))).file == "f" * 127
