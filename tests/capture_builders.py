"""Capture bytes for tests, built layer by layer with keyword defaults.

Frames nest by calls: ``ethernet(ipv4(tcp(payload=b"hi")))``. Files wrap
frames: ``pcap([frame, ...])`` or ``pcapng(shb(), idb(), epb(0, ts, frame))``.
Checksums stay zero (the capture stage does not validate them) unless a test
sets one to tell two segments apart.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from alb_pcap.model import TH_ACK

CLIENT = "10.0.0.1"
SERVER = "10.0.0.2"
CLIENT6 = "2001:db8::1"
SERVER6 = "2001:db8::2"
T0_NS = 1_700_000_000_000_000_000  # a round epoch, in ns


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# --- transport --------------------------------------------------------------


def tcp(
    payload: bytes = b"",
    *,
    sport: int = 40000,
    dport: int = 80,
    seq: int = 1000,
    ack: int = 1,
    flags: int = TH_ACK,
    win: int = 65535,
    options: bytes = b"",
    checksum: int = 0,
    data_offset: int | None = None,
) -> bytes:
    options += b"\x01" * (-len(options) % 4)  # NOP padding
    words = data_offset if data_offset is not None else (20 + len(options)) // 4
    header = struct.pack("!HHIIHHHH", sport, dport, seq, ack, words << 12 | flags, win, checksum, 0)
    return header + options + payload


def udp(payload: bytes = b"", *, sport: int = 50000, dport: int = 53, length: int | None = None) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload) if length is None else length, 0) + payload


# --- IP ---------------------------------------------------------------------


def ipv4(
    payload: bytes,
    *,
    proto: int = 6,
    src: str = CLIENT,
    dst: str = SERVER,
    ident: int = 1,
    ttl: int = 64,
    dont_fragment: bool = True,
    more_fragments: bool = False,
    frag_offset: int = 0,
    options: bytes = b"",
    total: int | None = None,
    version: int = 4,
    ihl: int | None = None,
) -> bytes:
    options += b"\x00" * (-len(options) % 4)
    words = ihl if ihl is not None else 5 + len(options) // 4
    frag = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0) | frag_offset // 8
    length = 20 + len(options) + len(payload) if total is None else total
    header = struct.pack(
        "!BBHHHBBH4s4s", version << 4 | words, 0, length, ident, frag, ttl, proto, 0, addr(src), addr(dst)
    )
    return header + options + payload


def ipv6(
    payload: bytes,
    *,
    next_header: int = 6,
    src: str = CLIENT6,
    dst: str = SERVER6,
    payload_length: int | None = None,
) -> bytes:
    length = len(payload) if payload_length is None else payload_length
    return struct.pack("!IHBB16s16s", 6 << 28, length, next_header, 64, addr(src), addr(dst)) + payload


def ipv6_option_header(next_header: int, payload: bytes, *, size: int = 8) -> bytes:
    """Hop-by-hop, destination options or routing: length in 8-byte units beyond the first."""
    body = b"\x01" + bytes([size - 4]) + b"\x00" * (size - 4)  # one PadN option filling it
    return bytes([next_header, size // 8 - 1]) + body + payload


def ipv6_fragment_header(
    next_header: int, payload: bytes, *, offset: int = 0, more: bool = False, ident: int = 7
) -> bytes:
    return struct.pack("!BBHI", next_header, 0, offset | more, ident) + payload


def ipv6_ah(next_header: int, payload: bytes) -> bytes:
    """Authentication header, 12 bytes of ICV: length in 4-byte units minus 2."""
    return struct.pack("!BBHII", next_header, (12 + 12) // 4 - 2, 0, 0x100, 1) + b"\x00" * 12 + payload


# --- link layers ------------------------------------------------------------

_MACS = bytes.fromhex("020000000002020000000001")  # destination, source


def ethernet(
    payload: bytes,
    *,
    ethertype: int = 0x0800,
    vlans: Iterable[tuple[int, int]] = (),
    pad_to: int = 0,
) -> bytes:
    """vlans: (TPID, VLAN id) from the outermost tag in; pad_to: minimum frame size (60 on the wire)."""
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    frame = _MACS + tags + struct.pack("!H", ethertype) + payload
    return frame + b"\x00" * (pad_to - len(frame))


def llc_snap(payload: bytes, *, ethertype: int = 0x0800) -> bytes:
    """802.3 frame with LLC/SNAP header: the type field is a length."""
    body = b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", ethertype) + payload
    return _MACS + struct.pack("!H", len(body)) + body


def mpls(payload: bytes, *, labels: Iterable[int] = (16, 17)) -> bytes:
    labels = list(labels)
    stack = b"".join(
        struct.pack("!I", label << 12 | (1 << 8 if i == len(labels) - 1 else 0) | 64)
        for i, label in enumerate(labels)
    )
    return stack + payload


def null_loopback(payload: bytes, *, family: int = 2, byte_order: str = "<") -> bytes:
    return struct.pack(byte_order + "I", family) + payload


def linux_sll(payload: bytes, *, protocol: int = 0x0800) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", protocol) + payload


def linux_sll2(payload: bytes, *, protocol: int = 0x0800) -> bytes:
    return struct.pack("!HHIHBB8s", protocol, 0, 2, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + payload


# --- tunnels ----------------------------------------------------------------


def vxlan(inner_frame: bytes, *, vni: int = 7, flags: int = 0x08) -> bytes:
    return struct.pack("!B3xI", flags, vni << 8) + inner_frame


def geneve(
    inner: bytes, *, vni: int = 7, options: bytes = b"", protocol: int = 0x6558, version: int = 0
) -> bytes:
    assert len(options) % 4 == 0
    return struct.pack("!BBHI", version << 6 | len(options) // 4, 0, protocol, vni << 8) + options + inner


def geneve_option(opt_class: int = 0x0102, opt_type: int = 0x80, data: bytes = b"\x00" * 4) -> bytes:
    return struct.pack("!HBB", opt_class, opt_type, len(data) // 4) + data


def gre(
    inner: bytes,
    *,
    protocol: int = 0x0800,
    checksum: bool = False,
    key: int | None = None,
    sequence: int | None = None,
    version: int = 0,
    routing: bool = False,
) -> bytes:
    flags = (0x8000 if checksum else 0) | (0x4000 if routing else 0)
    flags |= (0x2000 if key is not None else 0) | (0x1000 if sequence is not None else 0) | version
    out = struct.pack("!HH", flags, protocol)
    if checksum:
        out += b"\x00\x00\x00\x00"
    if key is not None:
        out += struct.pack("!I", key)
    if sequence is not None:
        out += struct.pack("!I", sequence)
    return out + inner


def gtp_u(inner_ip: bytes, *, teid: int = 0x1234, sequence: int | None = None,
          extensions: tuple[bytes, ...] = (), message: int = 255) -> bytes:
    """GTP-U v1 (3GPP TS 29.281) over UDP 2152's payload: optional fields when a sequence number or
    extension headers (each given without its length byte and next-type byte) are present."""
    flags = 0x30 | (0x02 if sequence is not None else 0) | (0x04 if extensions else 0)
    body = b""
    if flags & 0x06:
        body += struct.pack("!HBB", sequence or 0, 0, 0x85 if extensions else 0)  # seq, N-PDU, next type
        for n, ext in enumerate(extensions):
            ext += b"\x00" * (-(len(ext) + 2) % 4)
            nxt = 0x85 if n + 1 < len(extensions) else 0
            body += bytes([(len(ext) + 2) // 4]) + ext + bytes([nxt])
    body += inner_ip
    return struct.pack("!BBHI", flags, message, len(body), teid) + body


def pppoe(inner_ip: bytes, *, protocol: int = 0x0021, session: int = 7) -> bytes:
    """An RFC 2516 session-stage frame's payload (Ethernet type 0x8864)."""
    return struct.pack("!BBHHH", 0x11, 0, session, len(inner_ip) + 2, protocol) + inner_ip


def cisco_hdlc(inner: bytes, *, protocol: int = 0x0800) -> bytes:
    """A frame of link type 104: unicast address, control 0, an Ethernet type."""
    return struct.pack("!BBH", 0x0F, 0, protocol) + inner


def erspan_ii(inner_frame: bytes, *, session: int = 1) -> bytes:
    header = struct.pack("!HHI", 1 << 12 | 10, session, 0)  # version 1 (type II), VLAN 10
    return gre(header + inner_frame, protocol=0x88BE, sequence=1)


def erspan_iii(inner_frame: bytes, *, platform: bool = False) -> bytes:
    header = struct.pack("!HHIHH", 2 << 12, 1, 0, 0, 1 if platform else 0)  # version 2 (type III), O flag
    return gre(header + (b"\x00" * 8 if platform else b"") + inner_frame, protocol=0x22EB, sequence=1)


def vxlan_frame(
    inner_frame: bytes,
    *,
    vni: int = 7,
    outer_src: str = "172.16.0.1",
    outer_dst: str = "172.16.0.9",
    ttl: int = 64,
) -> bytes:
    """What AWS Traffic Mirroring delivers: Ethernet/IPv4/UDP 4789/VXLAN around the mirrored frame."""
    return ethernet(
        ipv4(udp(vxlan(inner_frame, vni=vni), dport=4789), proto=17, src=outer_src, dst=outer_dst, ttl=ttl)
    )


# --- files ------------------------------------------------------------------

Frame = bytes | tuple[int, bytes] | tuple[int, bytes, int]  # data, (ts_ns, data), (ts_ns, data, wire length)


def pcap(
    frames: Iterable[Frame],
    *,
    linktype: int = 1,
    byte_order: str = "<",
    nanos: bool = False,
    snaplen: int = 65535,
    step_ns: int = 1_000_000,
) -> bytes:
    """A libpcap file; frames without a timestamp come ``step_ns`` apart from T0_NS."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(byte_order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, item in enumerate(frames):
        ts_ns, data, wirelen = _frame(item, T0_NS + i * step_ns)
        sec, rest = divmod(ts_ns, 1_000_000_000)
        frac = rest if nanos else rest // 1000
        out.append(struct.pack(byte_order + "IIII", sec, frac, len(data), wirelen) + data)
    return b"".join(out)


def _frame(item: Frame, default_ts: int) -> tuple[int, bytes, int]:
    if isinstance(item, bytes):
        return default_ts, item, len(item)
    if len(item) == 2:
        return item[0], item[1], len(item[1])
    return item  # type: ignore[return-value]


def block(block_type: int, body: bytes, *, byte_order: str = "<") -> bytes:
    body += b"\x00" * (-len(body) % 4)
    length = struct.pack(byte_order + "I", len(body) + 12)
    return struct.pack(byte_order + "I", block_type) + length + body + length


def option(code: int, value: bytes, *, byte_order: str = "<") -> bytes:
    return struct.pack(byte_order + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def shb(*, byte_order: str = "<") -> bytes:
    body = struct.pack(byte_order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    return block(0x0A0D0D0A, body, byte_order=byte_order)


def idb(
    linktype: int = 1,
    *,
    tsresol: int | None = None,
    tsoffset: int | None = None,
    snaplen: int = 0,
    byte_order: str = "<",
) -> bytes:
    options = b""
    if tsresol is not None:
        options += option(9, bytes([tsresol]), byte_order=byte_order)
    if tsoffset is not None:
        options += option(14, struct.pack(byte_order + "q", tsoffset), byte_order=byte_order)
    if options:
        options += option(0, b"", byte_order=byte_order)
    body = struct.pack(byte_order + "HHI", linktype, 0, snaplen) + options
    return block(1, body, byte_order=byte_order)


def epb(
    interface: int, ts_units: int, data: bytes, *, wirelen: int | None = None, byte_order: str = "<"
) -> bytes:
    fixed = struct.pack(
        byte_order + "IIIII",
        interface,
        ts_units >> 32,
        ts_units & 0xFFFFFFFF,
        len(data),
        len(data) if wirelen is None else wirelen,
    )
    return block(6, fixed + data, byte_order=byte_order)


def spb(data: bytes, *, wirelen: int | None = None, byte_order: str = "<") -> bytes:
    return block(
        3,
        struct.pack(byte_order + "I", len(data) if wirelen is None else wirelen) + data,
        byte_order=byte_order,
    )


def pcapng(*blocks: bytes) -> bytes:
    return b"".join(blocks)
