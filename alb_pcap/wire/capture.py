"""The capture stage: one capture file in, the innermost TCP segment of each frame out.

Theory of operation
-------------------
``open_capture`` opens the file and sniffs its content, never its name: gzip
(``1f 8b``, read through ``gzip``), then pcap (either byte order, micro- or
nanosecond magic) or pcapng (``0a 0d 0d 0a``). It validates the file header
eagerly, so a file that cannot be analysed at all fails with a one-line
``CaptureError`` before any other stage runs.

``Capture.packets()`` streams. Records are cut out of 1 MiB chunks of the
(possibly decompressed) file and decoded in place with precompiled ``struct``
objects: no per-layer objects, no copy of the frame. Only the TCP payload is
copied, into the ``model.Packet`` that leaves. Memory is bounded by one chunk
(or one record or block, at most ``MAX_BLOCK_LEN``), the duplicate window and
the fragment buffer; it does not grow with the capture's length. The common
shapes (Ethernet/IPv4/TCP, bare or in VXLAN) take ``fast_ethernet``, one struct
call per frame; everything else, and anything odd about those, ``decode``.

When ``_fastwire`` (C, built by setup.py) is there and ``ALB_PCAP_PURE`` is not
set, its Walker does that loop for the frames it fully understands, straight from
the chunk, and stops before any other record (cut by the chunk, damaged, a pcapng
block that is not a packet, a frame that logs an anomaly or needs a layer it
lacks): ``_compiled_packets`` reads and decodes that one here, as the pure path
does, and starts the walker again after it. Same Packets, counts and anomalies
either way (tests/test_fastwire.py holds them to it).

Decoding peels layers until it reaches TCP:

- link: Ethernet (any number of 802.1Q/802.1ad tags, 802.3 + SNAP, MPLS label
  stacks), Linux cooked SLL and SLL2, raw IP (101, 12, 14, 228, 229), BSD
  null/loop (0, 108);
- IP: IPv4 with options, IPv6 with extension headers. Each IP header's length
  bounds everything after it, so Ethernet padding never reaches the payload;
- tunnels, up to ``MAX_TUNNEL_DEPTH`` deep: VXLAN (udp/4789), Geneve
  (udp/6081, options skipped), GRE (checksum/key/sequence) carrying IP or
  Ethernet, ERSPAN I/II/III, GRE-in-UDP (udp/4754), IP-in-IP (4, 41). The
  innermost VXLAN/Geneve VNI becomes ``Packet.vni``; every tunnel a frame came
  through is counted in ``stats.tunnels``.

Invariants
----------
- Every frame read is counted exactly once: ``stats.decoded`` (yielded),
  ``stats.duplicates`` or ``stats.skipped[reason]``.
- Only ``CaptureError`` leaves ``open_capture``; nothing leaves ``packets()``.
  Layer decoders raise ``_Skip``; ``packets()`` is the one place that catches
  it, counts the frame and records the anomaly. A file damaged mid-record ends
  the iteration with a ``truncated_capture_file`` (or ``corrupt_capture_file``)
  anomaly: the frame cut short is not counted, as Wireshark does not show it.

Decisions
---------
- Mirror duplicates (AWS Traffic Mirroring of both ends of a path): the second
  copy of a segment seen within ``dedup_window_ns`` (2 ms) is dropped and
  counted in ``stats.duplicates``. The key is the inner segment: addresses,
  ports, seq, ack, data offset and flags, IPv4 id, TCP length and checksum;
  never TTL or the outer headers. A real retransmission comes at least one RTO
  (>= 200 ms) later and is kept. IPv6 has no id, so two byte-identical IPv6
  segments within 2 ms (a repeated dup-ACK) are merged; so be it. Keys live in
  two generations of one window each (and at most ``_DEDUP_MAX_KEYS``), so the
  table stays small. The copy kept is the first, with its VNI.
- IP fragments are reassembled, at any layer (outer or inner). A fragment frame
  that does not complete its datagram is counted as skipped ``ip_fragment``;
  the frame that completes it yields the segment. Pending datagrams are
  bounded (``MAX_PENDING_DATAGRAMS``, ``MAX_PENDING_FRAGMENT_BYTES``) and time
  out after ``FRAGMENT_TIMEOUT_NS`` of capture time; what never completes is
  reported as ``unreassembled_fragments``. A fragment cut by the snap length
  cannot be reassembled (``incompletely_captured_fragment``).
- Snap length: a segment whose headers are complete is kept with the payload
  the capture holds; ``Packet.missing`` is what the innermost IP length says
  was on the wire beyond that (AWS mirror truncation shows up the same way).
  A frame too short for its IP or TCP header is skipped as ``truncated``.
- TCP checksums are not validated: mirror and host captures often carry
  offloaded (not yet computed) checksums, and Zeek's ``-C`` default for such
  captures is the same.
- Timestamps are integer nanoseconds. A pcapng Simple Packet Block has none;
  it gets the timestamp of the frame before it.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Literal

from ..model import AnomalyLog, CaptureError, CaptureStats, Packet

try:  # the per-packet loop in C (setup.py builds it); ALB_PCAP_PURE=1 keeps to Python
    from . import _fastwire
except ImportError:  # not built (no compiler at install time): Python does the same work
    _fastwire = None
if os.environ.get("ALB_PCAP_PURE"):
    _fastwire = None

DEDUP_WINDOW_NS = 2_000_000
FRAGMENT_TIMEOUT_NS = 30_000_000_000  # Linux ipfrag_time
MAX_PENDING_DATAGRAMS = 256
MAX_PENDING_FRAGMENT_BYTES = 8 << 20
MAX_FRAGMENTS_PER_DATAGRAM = 64  # each fragment re-checks coverage: keep that cheap
MAX_TUNNEL_DEPTH = 8
MAX_RECORD_LEN = 262_144  # Wireshark's WTAP_MAX_PACKET_SIZE_STANDARD
MAX_BLOCK_LEN = 16 << 20  # pcapng blocks carry options, so more than a record

_CHUNK = 1 << 20
# Times a calendar can show: 1970 to the end of year 9999 (datetime's range). A pcapng packet
# outside it (a damaged timestamp, if_tsresol or if_tsoffset) is kept and noted.
MIN_SANE_TS_NS = 0
MAX_SANE_TS_NS = 253_402_300_800 * 1_000_000_000 - 1
BACKWARDS_NOTED_NS = 1_000_000_000  # a frame this much older than the one before it is noted
_DEDUP_MAX_KEYS = 1 << 16
_MAX_HANDED_OVER = 64  # records in a row read by Python when the C walker takes none
_MAX_TUNNEL_LABELS = 1024  # distinct "vxlan vni=N" labels before they share one

# Skip reasons (stats.skipped keys).
NOT_IP = "not_ip"
ARP = "arp"
UDP = "udp"
ICMP = "icmp"
OTHER_IP_PROTO = "other_ip_proto"
IP_FRAGMENT = "ip_fragment"
MALFORMED = "malformed"
TRUNCATED = "truncated"
UNSUPPORTED_LINK_TYPE = "unsupported_link_type"
UNSUPPORTED_TUNNEL = "unsupported_tunnel"

# Link types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_C_HDLC = 104  # Cisco HDLC: routers' serial links, and what some of them mirror
_LINK_NAMES = {
    LINKTYPE_NULL: "null",
    LINKTYPE_ETHERNET: "ethernet",
    12: "raw",  # DLT_RAW as some BSDs number it
    14: "raw",  # ... and OpenBSD
    LINKTYPE_RAW: "raw",
    LINKTYPE_LOOP: "loop",
    LINKTYPE_LINUX_SLL: "linux_sll",
    LINKTYPE_IPV4: "ipv4",
    LINKTYPE_IPV6: "ipv6",
    LINKTYPE_LINUX_SLL2: "linux_sll2",
}

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_RARP = 0x8035
ETH_IPV6 = 0x86DD
ETH_BRIDGED = 0x6558  # transparent Ethernet bridging (GRE, Geneve)
ETH_MPLS = (0x8847, 0x8848)
ETH_ERSPAN_1_2 = 0x88BE
ETH_ERSPAN_3 = 0x22EB
ETH_PPPOE_SESSION = 0x8864
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057
_VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200, 0x9300))

IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_FRAGMENT = 44
IPPROTO_GRE = 47
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
_IPV6_EXTENSIONS = frozenset((0, 43, IPPROTO_FRAGMENT, IPPROTO_AH, 60))  # hop-by-hop, routing, dst opts

VXLAN_PORT = 4789
GENEVE_PORT = 6081
GRE_IN_UDP_PORT = 4754
GTP_U_PORT = 2152  # 3GPP TS 29.281: a mobile core's user plane

# BSD AF_INET6 differs by OS: Linux 10, NetBSD/OpenBSD 24, FreeBSD 28, Darwin 30.
_AF_INET = 2
_AF_INET6 = frozenset((10, 24, 28, 30))

_PCAP_MAGICS = {  # magic as stored -> (byte order, nanosecond timestamps)
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BYTE_ORDERS = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
_GZIP_MAGIC = b"\x1f\x8b"

_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from
_IPV4 = struct.Struct("!BxHHHxB2x4s4s").unpack_from  # vihl, len, id, frag, proto, src, dst
_IPV6 = struct.Struct("!IHB").unpack_from  # version/class/flow, payload length, next header
_TCP = struct.Struct("!HHIIHH").unpack_from  # ports, seq, ack, offset+flags, window
_UDP = struct.Struct("!HHH").unpack_from  # ports, length
_GRE = struct.Struct("!HH").unpack_from  # flags+version, protocol type
# The common shape in one call: Ethernet type, IPv4 without options (as _IPV4),
# then 18 bytes of TCP (as _TCP); for UDP these are ports, length, checksum...
_ETH_IPV4_TCP = struct.Struct("!12xHBxH2xHxB2x4s4sHHIIHH2x").unpack_from
# ... and inside VXLAN, from the outer Ethernet on: outer ethertype, vihl, len,
# frag; UDP port and length; VXLAN flags and VNI << 8; then as _ETH_IPV4_TCP.
_VXLAN_TCP = struct.Struct("!12xHBxH2xH12x2xHH2xB3xI12xHBxH2xHxB2x4s4sHHIIHH2x").unpack_from
_LENGTH_AND_ID = struct.Struct("!HH").pack
_new_packet = tuple.__new__  # Packet(...) costs twice as much per frame


class _Skip(Exception):
    """The frame yields no segment: why (stats.skipped key) and what to log, if anything."""

    def __init__(self, reason: str, anomaly: str | None = None, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.anomaly = anomaly
        self.detail = detail


class _Damaged(Exception):
    """The capture file cannot be read further (cut short, corrupt)."""

    def __init__(self, anomaly: str, detail: str) -> None:
        super().__init__(detail)
        self.anomaly = anomaly
        self.detail = detail


# Records: (ts_ns, linktype, buffer, start, end); the frame is buffer[start:end].
_Record = tuple[int, int, bytes, int, int]


def open_capture(
    path: str | os.PathLike[str],
    anomalies: AnomalyLog,
    *,
    dedup_window_ns: int = DEDUP_WINDOW_NS,
) -> Capture:
    """Open a pcap/pcapng file (gzip-compressed or not) for streaming.

    Raises CaptureError with a one-line message when the file is missing, a
    directory, unreadable, empty, not a capture, or its header is cut short.
    """
    name = os.fspath(path)
    raw = _open_file(name)
    try:
        stream, compressed = _maybe_gunzip(raw, name)
        fmt, reader = _sniff(stream, name)
    except BaseException:
        raw.close()
        raise
    fmt += "+gzip" if compressed else ""
    return Capture(name, fmt, reader, (stream, raw), anomalies, dedup_window_ns)


class Capture:
    """One open capture file; ``packets()`` streams it once."""

    def __init__(
        self,
        path: str,
        fmt: str,
        reader: _PcapReader | _PcapngReader,
        streams: tuple[io.BufferedIOBase, ...],
        anomalies: AnomalyLog,
        dedup_window_ns: int,
    ) -> None:
        self.stats = CaptureStats(path=path, format=fmt)
        self._reader = reader
        self._streams = streams
        self._anomalies = anomalies
        self._decoder = _Decoder(self.stats, anomalies, dedup_window_ns)
        self._link_run = (-1, 0)  # link type of the frames last read, and how many not yet counted
        if isinstance(reader, _PcapngReader):  # a pcap record's u32 seconds are always in range
            reader.on_time_out_of_range = self._time_out_of_range

    def packets(self) -> Iterator[Packet]:
        """The innermost TCP segment of each frame, in file order.

        Skipped frames and dropped duplicates are only counted in ``stats``.
        Every count is live, except ``stats.link_types``: it catches up when the
        link type changes and when the iteration ends (or is abandoned).
        """
        if _fastwire is None:
            return self._python_packets()
        return self._compiled_packets()

    def _python_packets(self) -> Iterator[Packet]:
        try:
            yield from self._decoded(self._reader.records())
        finally:
            self._count_link_run()
        self._finish()

    def _compiled_packets(self) -> Iterator[Packet]:
        """The C walker takes every frame it fully understands, straight from the reader's
        buffer; it stops before anything else (a record cut by the buffer's end, a pcapng
        block that is not a packet, damage, a frame that logs an anomaly or needs a layer
        it lacks), and that one record is read and decoded here, as ``_python_packets``
        does. Both sides keep the same counts, in ``stats`` and the decoder."""
        walker = _fastwire.Walker(
            Packet, self._decoder, self.stats, self.stats.skipped, self.stats.tunnels,
            self._decoder._vxlan_labels, (NOT_IP, ARP, UDP, ICMP, OTHER_IP_PROTO), _DEDUP_MAX_KEYS,
        )  # fmt: skip
        reader = self._reader
        source = reader._source
        walking = False
        ended: list[bool] = []  # set by _python_records at the end of the file (or damage)
        idle = 0  # walks in a row that took no frame
        try:
            while not ended:
                reader.prepare(walker)
                walker.start(source.buf, source._pos, *self._link_run, reader.spb_ts)
                walking = True
                yield from walker
                walking = False
                source._pos = walker.pos
                self._link_run = walker.link_run
                reader.spb_ts = walker.spb_ts
                # A capture of shapes the walker lacks (Geneve, GRE...) would pay a start and a
                # stop per frame: while it takes nothing, Python takes more records in a row.
                idle = 0 if walker.taken else idle + 1
                count = min(1 << max(idle - 1, 0), _MAX_HANDED_OVER)
                yield from self._decoded(self._python_records(count, ended))
        finally:
            if walking:  # abandoned in the middle of the walk
                self._link_run = walker.link_run
            self._count_link_run()
        self._finish()

    def _python_records(self, n: int, ended: list[bool]) -> Iterator[_Record]:
        """Up to n records read by the Python reader; ``ended`` gets True when the file
        ends (or turns out damaged) first."""
        for _ in range(n):
            record = self._reader.next_record()
            if record is None:
                ended.append(True)
                return
            yield record

    def _decoded(self, records: Iterable[_Record]) -> Iterator[Packet]:
        """Count, decode and deduplicate each record's frame (all of them on the pure path)."""
        # The stage's hot loop: locals only, and nothing per frame that can wait.
        stats = self.stats
        skipped = stats.skipped
        fast_ethernet = self._decoder.fast_ethernet
        decode = self._decoder.decode
        add_anomaly = self._anomalies.add
        frame = stats.frames
        linktype_seen, run = self._link_run  # frames of linktype_seen not yet in stats.link_types
        last_ts = stats.last_ts_ns
        try:
            for ts_ns, linktype, buf, start, end in records:
                frame += 1
                stats.frames = frame
                if last_ts is None:
                    stats.first_ts_ns = last_ts = ts_ns
                elif ts_ns < last_ts:  # capture order is time order, but for mirror jitter
                    self._went_backwards(frame, last_ts, ts_ns)
                stats.last_ts_ns = last_ts = ts_ns
                if linktype != linktype_seen:
                    self._count_link_type(linktype_seen, run)
                    linktype_seen, run = linktype, 0
                run += 1
                try:
                    packet = (
                        fast_ethernet(frame, ts_ns, buf, start, end)
                        if linktype == LINKTYPE_ETHERNET
                        else False
                    )
                    if packet is False:
                        packet = decode(frame, ts_ns, linktype, buf, start, end)
                except _Skip as skip:
                    skipped[skip.reason] += 1
                    if skip.anomaly:
                        add_anomaly(skip.anomaly, frame, ts_ns, detail=skip.detail)
                    continue
                except Exception as exc:  # a decoder bug must not cost the rest of the file
                    skipped[MALFORMED] += 1
                    add_anomaly("decoder_error", frame, ts_ns, detail=f"{type(exc).__name__}: {exc}")
                    continue
                if packet is None:
                    stats.duplicates += 1
                    continue
                stats.decoded += 1
                if packet.missing:
                    stats.truncated += 1
                yield packet
        finally:
            self._link_run = (linktype_seen, run)

    def frames(self) -> Iterator[tuple[int, int, int, bytes]]:
        """Every frame undecoded, numbered as ``packets()`` numbers them: (frame, ts_ns, linktype, bytes).

        For excerpts of a capture (``--write-pcap``); a capture is read one way or the other, once.
        """
        for frame, (ts_ns, linktype, buf, start, end) in enumerate(self._reader.records(), 1):
            yield frame, ts_ns, linktype, bytes(buf[start:end])

    def _went_backwards(self, frame: int, before_ns: int, ts_ns: int) -> None:
        if before_ns - ts_ns >= BACKWARDS_NOTED_NS:
            self._anomalies.add("time_went_backwards", frame, ts_ns,
                                detail=f"{(before_ns - ts_ns) / 1e9:.3f} s before frame {frame - 1}")

    def _time_out_of_range(self, ts_ns: int) -> None:
        """A pcapng packet time no calendar shows (called before its frame is counted)."""
        self._anomalies.add("time_out_of_range", self.stats.frames + 1, ts_ns,
                            detail=f"{ts_ns // 1_000_000_000} s since the epoch")

    def _count_link_run(self) -> None:
        self._count_link_type(*self._link_run)
        self._link_run = (-1, 0)

    def _count_link_type(self, linktype: int, frames: int) -> None:
        if frames:
            self.stats.link_types[_LINK_NAMES.get(linktype) or f"linktype {linktype}"] += frames

    def _finish(self) -> None:
        damage = self._reader.damage
        if damage is not None:
            detail = damage.detail
            gz = self._streams[0]
            if isinstance(gz, _GzipStream) and gz.damage and gz.damage not in detail:
                # zlib notices damage late: what came out just before it is already garbage
                detail += f" (after {gz.damage})"
            self._anomalies.add(damage.anomaly, self.stats.frames + 1, self.stats.last_ts_ns, detail=detail)
        self._decoder.finish()

    def close(self) -> None:
        for stream in self._streams:
            stream.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- opening and sniffing ---------------------------------------------------


def _open_file(name: str) -> io.BufferedReader:
    if name == "-":  # standard input: read once, never seeked (peek, not seek, finds gzip)
        stdin = sys.stdin.buffer
        return stdin if hasattr(stdin, "peek") else io.BufferedReader(stdin)
    try:
        return open(name, "rb")  # noqa: SIM115 - Capture.close() owns it
    except FileNotFoundError:
        raise CaptureError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise CaptureError(f"{name}: is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureError(f"{name}: permission denied") from None
    except OSError as exc:
        raise CaptureError(f"{name}: cannot open: {exc.strerror or exc}") from None


def _read_head(stream: io.BufferedIOBase, n: int, name: str) -> bytes:
    """Read file-header bytes; a read error here means the file is unusable."""
    try:
        return stream.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise CaptureError(f"{name}: cannot read: {exc}") from None


def _maybe_gunzip(raw: io.BufferedReader, name: str) -> tuple[io.BufferedIOBase, bool]:
    try:
        magic = raw.peek(2)[:2]  # peek, not seek: a pipe works too
    except OSError as exc:
        raise CaptureError(f"{name}: cannot read: {exc}") from None
    if not magic:
        raise CaptureError(f"{name}: empty file")
    if magic != _GZIP_MAGIC:
        return raw, False
    return _GzipStream(raw), True


class _GzipDamaged(zlib.error):
    """The compressed data is damaged; every byte before the damage was handed out."""


class _GzipStream(io.RawIOBase):
    """gzip members decompressed incrementally, so that damage costs only what follows it.

    ``gzip.GzipFile`` decompresses 128 KiB of input per call and loses that call's output
    when zlib raises, so a file damaged near its start was refused as a whole. Here each
    input chunk is fed to a decompressor whose state before the chunk is kept (``copy()``,
    once per 64 KiB); when zlib raises, the chunk is replayed a byte at a time from that
    state to recover every byte before the damage, and only then is the error raised.
    Output per call is bounded (``max_length``), so a decompression bomb costs no memory.
    Concatenated members and zero padding after the last are read as ``gzip`` does.
    """

    _IN = 64 * 1024

    def __init__(self, raw: io.BufferedIOBase) -> None:
        super().__init__()
        self._raw = raw
        self._d = zlib.decompressobj(zlib.MAX_WBITS | 16)
        self._fresh = True  # the current member has been given no input yet
        self._input = b""  # compressed bytes not yet consumed
        self._read_in = 0  # compressed bytes read from the file
        self._out = b""  # decompressed bytes not yet handed out
        self._error: Exception | None = None

    def readable(self) -> bool:
        return True

    @property
    def damage(self) -> str | None:
        """What zlib said about damaged data, once it has been met."""
        return str(self._error) if isinstance(self._error, _GzipDamaged) else None

    def read1(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = _CHUNK
        while not self._out:
            if self._error is not None:
                raise self._error
            if not self._step(n):
                return b""
        out, self._out = self._out[:n], self._out[n:]
        return out

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if n is None or n < 0:
            parts = []
            while chunk := self.read1():
                parts.append(chunk)
            return b"".join(parts)
        parts, have = [], 0
        while have < n:
            chunk = self.read1(n - have)
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self._raw.close()
        super().close()

    def _step(self, n: int) -> bool:
        """Decompress some more into ``_out``; False at a clean end of the file."""
        if not self._input:
            self._input = self._raw.read(self._IN)
            self._read_in += len(self._input)
            if not self._input:
                if not self._fresh and not self._d.eof:
                    self._out = self._d.decompress(b"", n)  # output zlib still held back
                    if self._out:
                        return True
                    self._error = EOFError("compressed file ended before the end-of-stream marker was reached")
                    return True
                return False
        if self._d.eof:  # a member ended: another one follows, or zero padding
            data = self._input.lstrip(b"\x00")
            self._input = data
            if not data:
                return True
            self._d, self._fresh = zlib.decompressobj(zlib.MAX_WBITS | 16), True
        d, data = self._d, self._input
        before = d.copy()
        self._fresh = False
        try:
            self._out = d.decompress(data, n)
        except zlib.error as exc:
            self._out, at = self._salvage(before, data)
            self._input = b""
            self._error = _GzipDamaged(
                f"gzip data damaged at compressed byte {self._read_in - len(data) + at} ({_zlib_reason(exc)})"
            )
            return True
        self._input = d.unused_data if d.eof else d.unconsumed_tail
        return True

    @staticmethod
    def _salvage(d, data: bytes) -> tuple[bytes, int]:
        """Everything ``data`` decompresses to before the byte zlib refuses, and that byte's index."""
        parts = []
        for i in range(len(data)):
            try:
                parts.append(d.decompress(data[i : i + 1]))  # one input byte: a few KiB out at most
            except zlib.error:
                return b"".join(parts), i
            if d.eof:
                break
        return b"".join(parts), len(data)


def _zlib_reason(exc: zlib.error) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("Error ") and ": " in text else text


def _sniff(stream: io.BufferedIOBase, name: str) -> tuple[str, _PcapReader | _PcapngReader]:
    magic = _read_head(stream, 4, name)
    if not magic:
        raise CaptureError(f"{name}: empty file (after gzip decompression)")
    if magic in _PCAP_MAGICS:
        return "pcap", _PcapReader.open(stream, magic, name)
    if magic == _PCAPNG_SHB:
        return "pcapng", _PcapngReader.open(stream, name)
    raise CaptureError(f"{name}: not a pcap or pcapng capture (starts with {magic.hex(' ')})")


class _ByteSource:
    """A stream read in large chunks, handed out as spans of ``buf`` without copying."""

    def __init__(self, stream: io.BufferedIOBase) -> None:
        self._read = stream.read1  # one read per call: little is lost if a gzip stream breaks
        self.buf = b""
        self._pos = 0

    def take(self, n: int) -> int | None:
        """Consume n bytes: their offset in ``buf``; None at a clean end of file."""
        pos = self._pos
        if len(self.buf) - pos < n:
            self.refill(pos, n)
            pos = 0
            if len(self.buf) < n:
                if self.buf:
                    raise _Damaged(
                        "truncated_capture_file", f"file ends {len(self.buf)} bytes into a {n}-byte read"
                    )
                return None
        self._pos = pos + n
        return pos

    def refill(self, pos: int, need: int) -> bytes:
        """Keep ``buf[pos:]`` and read until it holds ``need`` bytes or the file ends."""
        parts = [self.buf[pos:]]
        have = len(parts[0])
        while have < need:
            try:
                more = self._read(max(_CHUNK, need - have))
            except _GzipDamaged as exc:
                raise _Damaged("corrupt_capture_file", f"{exc}; reading stopped") from None
            except (OSError, EOFError, zlib.error) as exc:  # cut gzip stream, I/O error
                raise _Damaged("truncated_capture_file", f"read failed: {exc}") from None
            if not more:
                break
            parts.append(more)
            have += len(more)
        self.buf = b"".join(parts)
        self._pos = 0
        return self.buf


# --- pcap -------------------------------------------------------------------


class _PcapReader:
    """Classic libpcap files: a 24-byte header, then 16-byte record headers."""

    def __init__(self, stream: io.BufferedIOBase, byte_order: str, nanos: bool, linktype: int) -> None:
        self._source = _ByteSource(stream)
        self._record = struct.Struct(byte_order + "IIII").unpack_from
        self._big_endian = byte_order == ">"
        self._frac_ns = 1 if nanos else 1000
        self.linktype = linktype
        self.damage: _Damaged | None = None
        self.spb_ts = 0  # (pcapng's; unused here)

    @classmethod
    def open(cls, stream: io.BufferedIOBase, magic: bytes, name: str) -> _PcapReader:
        byte_order, nanos = _PCAP_MAGICS[magic]
        header = _read_head(stream, 20, name)
        if len(header) < 20:
            raise CaptureError(f"{name}: pcap file header cut short ({len(header) + 4} of 24 bytes)")
        major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack(byte_order + "HHiIII", header)
        if major != 2:
            raise CaptureError(f"{name}: unsupported pcap version {major}")
        return cls(stream, byte_order, nanos, network & 0x03FFFFFF)  # upper bits: FCS length

    def records(self) -> Iterator[_Record]:
        """Frames until the end of the file, or until it turns out damaged (``damage``)."""
        while (record := self.next_record()) is not None:
            yield record

    # The compiled walk reads from _ByteSource.buf at _ByteSource._pos, and hands the
    # records it does not take back here, one at a time.

    def prepare(self, walker: _fastwire.Walker) -> None:
        walker.set_pcap(self._big_endian, self._frac_ns, self.linktype)

    def next_record(self) -> _Record | None:
        """The record at the source's position, read as ``records()`` reads it; None at the end."""
        source = self._source
        buf, pos = source.buf, source._pos
        try:
            if len(buf) - pos < 16:
                buf, pos = source.refill(pos, 16), 0
                if len(buf) < 16:
                    if buf:
                        raise _Damaged(
                            "truncated_capture_file", f"file ends {len(buf)} bytes into a record header"
                        )
                    return None
            sec, frac, caplen, _wirelen = self._record(buf, pos)
            if caplen > MAX_RECORD_LEN:
                raise _Damaged("corrupt_capture_file", f"record claims {caplen} bytes (max {MAX_RECORD_LEN})")
            start = pos + 16
            pos = start + caplen
            if pos > len(buf):
                buf, start, pos = source.refill(start, caplen), 0, caplen
                if pos > len(buf):
                    raise _Damaged(
                        "truncated_capture_file", f"file ends {len(buf)} bytes into a {caplen}-byte record"
                    )
        except _Damaged as damage:
            self.damage = damage
            return None
        source._pos = pos
        return sec * 1_000_000_000 + frac * self._frac_ns, self.linktype, buf, start, pos


# --- pcapng -----------------------------------------------------------------

_BLOCK_SHB = 0x0A0D0D0A
_BLOCK_IDB = 1
_BLOCK_PB = 2  # obsolete Packet Block, still written by old tools
_BLOCK_SPB = 3
_BLOCK_EPB = 6
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14


class _Interface:
    """What a pcapng section says about one capture interface."""

    __slots__ = ("linktype", "mul", "div", "offset_ns", "snaplen")

    def __init__(self, linktype: int, snaplen: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.mul, self.div = 1000, 1  # default if_tsresol: microseconds
        self.offset_ns = 0

    def set_tsresol(self, code: int) -> None:
        """if_tsresol: 10^-n seconds, or 2^-n when the top bit is set."""
        exponent = code & 0x7F
        if code & 0x80:
            self.mul, self.div = 1_000_000_000, 1 << exponent
        elif exponent <= 9:
            self.mul, self.div = 10 ** (9 - exponent), 1
        else:
            self.mul, self.div = 1, 10 ** (exponent - 9)

    def ts_ns(self, high: int, low: int) -> int:
        return ((high << 32) | low) * self.mul // self.div + self.offset_ns


class _Section:
    """Byte order and interfaces of one pcapng section."""

    def __init__(self, byte_order: str) -> None:
        self.big_endian = byte_order == ">"
        self.u32 = struct.Struct(byte_order + "I").unpack_from
        self.u16 = struct.Struct(byte_order + "H").unpack_from
        self.i64 = struct.Struct(byte_order + "q").unpack_from
        self.block = struct.Struct(byte_order + "II").unpack_from
        self.epb = struct.Struct(byte_order + "IIIII").unpack_from  # interface, ts high/low, caplen, len
        self.pb = struct.Struct(byte_order + "HHIIII").unpack_from  # interface, drops, ts, caplen, len
        self.idb = struct.Struct(byte_order + "HHI").unpack_from  # linktype, reserved, snaplen
        self.interfaces: list[_Interface] = []


def _parse_shb_start(head: bytes, name: str) -> tuple[str, int]:
    """Byte order and total length from the first 12 bytes of a Section Header Block."""
    byte_order = _PCAPNG_BYTE_ORDERS.get(head[8:12])
    if byte_order is None:
        raise CaptureError(f"{name}: pcapng section header has no byte-order magic")
    (length,) = struct.unpack_from(byte_order + "I", head, 4)
    if length < 28 or length > MAX_BLOCK_LEN or length % 4:
        raise CaptureError(f"{name}: pcapng section header has a bad length ({length})")
    return byte_order, length


def _check_shb_body(body: bytes, byte_order: str, length: int, name: str) -> None:
    (major,) = struct.unpack_from(byte_order + "H", body, 0)
    if major != 1:
        raise CaptureError(f"{name}: unsupported pcapng version {major}")
    if struct.unpack_from(byte_order + "I", body, len(body) - 4)[0] != length:
        raise CaptureError(f"{name}: pcapng section header is corrupt (length fields differ)")


class _PcapngReader:
    """pcapng: blocks of any kind; sections may change byte order and interfaces."""

    def __init__(self, stream: io.BufferedIOBase, byte_order: str, name: str) -> None:
        self._source = _ByteSource(stream)
        self._section = _Section(byte_order)
        self._name = name
        self._last_ts_ns = 0
        self.damage: _Damaged | None = None
        self.on_time_out_of_range: Callable[[int], None] | None = None
        self._walker_knows: tuple[object, ...] = ()  # (walker, section, interfaces) last told

    @classmethod
    def open(cls, stream: io.BufferedIOBase, name: str) -> _PcapngReader:
        head = _PCAPNG_SHB + _read_head(stream, 8, name)
        if len(head) < 12:
            raise CaptureError(f"{name}: pcapng section header cut short ({len(head)} bytes)")
        byte_order, length = _parse_shb_start(head, name)
        body = _read_head(stream, length - 12, name)
        if len(body) < length - 12:
            raise CaptureError(
                f"{name}: pcapng section header cut short ({len(body) + 12} of {length} bytes)"
            )
        _check_shb_body(body, byte_order, length, name)
        return cls(stream, byte_order, name)

    def records(self) -> Iterator[_Record]:
        """Frames until the end of the file, or until it turns out damaged (``damage``)."""
        try:
            while True:
                block = self._next_block()
                if block is None:
                    return
                record = self._packet_record(*block)
                if record is not None:
                    yield record
        except _Damaged as damage:
            self.damage = damage

    # The compiled walk reads from _ByteSource.buf at _ByteSource._pos, and hands the
    # blocks it does not take back here, one packet record at a time.

    @property
    def spb_ts(self) -> int:
        """The time a Simple Packet Block gets: the packet block's before it."""
        return self._last_ts_ns

    @spb_ts.setter
    def spb_ts(self, ts_ns: int) -> None:
        self._last_ts_ns = ts_ns

    def prepare(self, walker: _fastwire.Walker) -> None:
        """Tell the walker this section's interfaces, when they changed (an IDB or SHB read here)."""
        section = self._section
        knows = (walker, section, len(section.interfaces))
        if self._walker_knows != knows:
            interfaces = [(i.linktype, i.snaplen, i.mul, i.div, i.offset_ns) for i in section.interfaces]
            walker.set_pcapng(section.big_endian, interfaces)
            self._walker_knows = knows

    def next_record(self) -> _Record | None:
        """The next packet record, blocks read as ``records()`` reads them; None at the end."""
        try:
            while True:
                block = self._next_block()
                if block is None:
                    return None
                record = self._packet_record(*block)
                if record is not None:
                    return record
        except _Damaged as damage:
            self.damage = damage
            return None

    def _next_block(self) -> tuple[int, bytes, int, int] | None:
        """(type, buffer, body offset, body size) of the next block; None at the end of file."""
        source = self._source
        while True:
            pos = source.take(8)
            if pos is None:
                return None
            block_type, length = self._section.block(source.buf, pos)
            if block_type != _BLOCK_SHB:
                break
            self._next_section(pos)
        if length < 12 or length > MAX_BLOCK_LEN:
            raise _Damaged("corrupt_capture_file", f"pcapng block of type {block_type} has length {length}")
        body = source.take(length - 8)
        if body is None:
            raise _Damaged("truncated_capture_file", "file ends after a pcapng block header")
        size = length - 12  # the body without the trailing length
        if self._section.u32(source.buf, body + size)[0] != length:
            raise _Damaged("corrupt_capture_file", f"pcapng block of type {block_type}: length fields differ")
        return block_type, source.buf, body, size

    def _next_section(self, pos: int) -> None:
        source = self._source
        head = source.buf[pos : pos + 8]
        more = source.take(4)
        if more is None:
            raise _Damaged("truncated_capture_file", "file ends inside a pcapng section header")
        head += source.buf[more : more + 4]
        try:
            byte_order, length = _parse_shb_start(head, self._name)
            body = source.take(length - 12)
            if body is None:
                raise _Damaged("truncated_capture_file", "file ends inside a pcapng section header")
            _check_shb_body(source.buf[body : body + length - 12], byte_order, length, self._name)
        except CaptureError as exc:
            raise _Damaged("corrupt_capture_file", str(exc)) from None
        self._section = _Section(byte_order)

    def _packet_record(self, block_type: int, buf: bytes, body: int, size: int) -> _Record | None:
        """The frame in a packet block; None for any other block (after noting interfaces)."""
        section = self._section
        if block_type == _BLOCK_EPB:
            if size < 20:
                raise _Damaged("corrupt_capture_file", "pcapng enhanced packet block too short")
            interface_id, high, low, caplen, _wirelen = section.epb(buf, body)
            return self._record(interface_id, high, low, buf, body + 20, caplen, size - 20)
        if block_type == _BLOCK_SPB:
            if size < 4:
                raise _Damaged("corrupt_capture_file", "pcapng simple packet block too short")
            interface = self._interface(0)
            (wirelen,) = section.u32(buf, body)
            caplen = min(wirelen, size - 4, interface.snaplen or wirelen)
            return self._last_ts_ns, interface.linktype, buf, body + 4, body + 4 + caplen
        if block_type == _BLOCK_PB:
            if size < 20:
                raise _Damaged("corrupt_capture_file", "pcapng packet block too short")
            interface_id, _drops, high, low, caplen, _wirelen = section.pb(buf, body)
            return self._record(interface_id, high, low, buf, body + 20, caplen, size - 20)
        if block_type == _BLOCK_IDB:
            self._add_interface(buf, body, size)
        return None

    def _record(
        self, interface_id: int, high: int, low: int, buf: bytes, start: int, caplen: int, room: int
    ) -> _Record:
        if caplen > room:
            raise _Damaged("corrupt_capture_file", f"pcapng packet of {caplen} bytes in a {room}-byte block")
        interface = self._interface(interface_id)
        ts_ns = self._last_ts_ns = interface.ts_ns(high, low)
        if not MIN_SANE_TS_NS <= ts_ns <= MAX_SANE_TS_NS and self.on_time_out_of_range is not None:
            self.on_time_out_of_range(ts_ns)
        return ts_ns, interface.linktype, buf, start, start + caplen

    def _interface(self, interface_id: int) -> _Interface:
        interfaces = self._section.interfaces
        if interface_id >= len(interfaces):
            raise _Damaged("corrupt_capture_file", f"pcapng packet for undefined interface {interface_id}")
        return interfaces[interface_id]

    def _add_interface(self, buf: bytes, body: int, size: int) -> None:
        section = self._section
        if size < 8:
            raise _Damaged("corrupt_capture_file", "pcapng interface description block too short")
        linktype, _reserved, snaplen = section.idb(buf, body)
        interface = _Interface(linktype, snaplen)
        pos, end = body + 8, body + size
        while pos + 4 <= end:
            code, length = section.u16(buf, pos)[0], section.u16(buf, pos + 2)[0]
            value = pos + 4
            if code == 0 or value + length > end:  # opt_endofopt, or options cut short
                break
            if code == _OPT_IF_TSRESOL and length >= 1:
                interface.set_tsresol(buf[value])
            elif code == _OPT_IF_TSOFFSET and length >= 8:
                interface.offset_ns = section.i64(buf, value)[0] * 1_000_000_000
            pos = value + (length + 3) // 4 * 4
        section.interfaces.append(interface)


# --- frame decoding ---------------------------------------------------------


class _Decoder:
    """Peels one frame down to its innermost TCP segment.

    Layer methods take the frame's buffer and the span [off, end) that their
    layer may use; each IP layer narrows ``end`` to its own length. They return
    a Packet, None for a mirror duplicate, or raise _Skip.
    """

    def __init__(self, stats: CaptureStats, anomalies: AnomalyLog, dedup_window_ns: int) -> None:
        self._tunnels = stats.tunnels
        self._anomalies = anomalies
        self._window = dedup_window_ns
        self._recent: dict[Hashable, int] = {}
        self._older: dict[Hashable, int] = {}
        self._rotate_at = -(1 << 63)
        self._fragments = _Reassembler(anomalies)
        self._labels: dict[tuple[str, int | None], str] = {}
        self._vxlan_labels: dict[int, str] = {}  # the fast path's view of _labels
        self._links: dict[int, Callable[[bytes, int, int], Packet | None]] = {
            LINKTYPE_NULL: self._null,
            LINKTYPE_ETHERNET: self._ethernet,
            12: self._raw,
            14: self._raw,
            LINKTYPE_RAW: self._raw,
            LINKTYPE_LOOP: self._null,
            LINKTYPE_LINUX_SLL: self._linux_sll,
            LINKTYPE_IPV4: self._ipv4,
            LINKTYPE_IPV6: self._ipv6,
            LINKTYPE_LINUX_SLL2: self._linux_sll2,
            LINKTYPE_C_HDLC: self._cisco_hdlc,
        }
        # Per-frame state.
        self._frame = 0
        self._ts = 0
        self._vni: int | None = None
        self._depth = 0

    def decode(self, frame: int, ts_ns: int, linktype: int, buf: bytes, off: int, end: int) -> Packet | None:
        """Any frame, layer by layer."""
        self._frame = frame
        self._ts = ts_ns
        self._vni = None
        self._depth = 0
        link = self._links.get(linktype)
        if link is None:
            raise _Skip(UNSUPPORTED_LINK_TYPE, "unsupported_link_type", f"linktype {linktype}")
        return link(buf, off, end)

    def finish(self) -> None:
        self._fragments.flush()

    def fast_ethernet(
        self, frame: int, ts_ns: int, buf: bytes, off: int, end: int
    ) -> Packet | None | Literal[False]:
        """Ethernet/IPv4/TCP, bare or inside one Ethernet/IPv4/UDP/VXLAN: nearly every
        frame of a mirror capture, in one struct call.

        False for any other shape (IP options, fragments, VLAN tags, truncation...),
        before any side effect: ``decode`` then takes the frame from the start.
        Both must give the same result; a test holds them to it.
        """
        if end - off >= 104 and buf[off + 23] == IPPROTO_UDP:
            (
                outer_type, outer_vihl, outer_total, outer_frag, udp_dport, udp_length, vxlan_flags, vni,
                ethertype, vihl, total, frag, proto, src, dst, sport, dport, seq, ack, offset_flags, win,
            ) = _VXLAN_TCP(buf, off)  # fmt: skip
            if (
                outer_type != ETH_IPV4 or outer_vihl != 0x45 or outer_frag & 0x3FFF or outer_total < 20
                or udp_dport != VXLAN_PORT or not vxlan_flags & 0x08
            ):  # fmt: skip
                return False
            if off + 14 + outer_total < end:
                end = off + 14 + outer_total
            if 8 <= udp_length < end - off - 34:
                end = off + 34 + udp_length
            vni >>= 8
            off += 50  # the inner frame; if the bounds above cut it short, the TCP check below says so
        elif end - off >= 54:
            (
                ethertype, vihl, total, frag, proto, src, dst, sport, dport, seq, ack, offset_flags, win,
            ) = _ETH_IPV4_TCP(buf, off)  # fmt: skip
            vni = None
        else:
            return False
        if ethertype != ETH_IPV4 or vihl != 0x45 or frag & 0x3FFF or total < 20 or proto != IPPROTO_TCP:
            return False
        if off + 14 + total < end:
            end = off + 14 + total
        tcp = off + 34
        header = offset_flags >> 12 << 2
        wire = total - 20
        if header < 20 or end - tcp < header:  # (end - tcp <= wire: a header beyond wire fails too)
            return False
        if vni is not None:
            self._tunnels[self._vxlan_labels.get(vni) or self._label("vxlan", vni)] += 1
        # _tcp's duplicate key read in two pieces (IP length and id; addresses and
        # TCP header), then _seen() inlined: a call costs 5% of this path.
        key = buf[off + 16 : off + 20] + buf[off + 26 : tcp + 18]
        recent = self._recent
        first = recent.get(key)
        if first is None:
            first = self._older.get(key)
        if first is not None and -self._window <= ts_ns - first <= self._window:
            return None
        recent[key] = ts_ns
        if ts_ns >= self._rotate_at or len(recent) > _DEDUP_MAX_KEYS:
            self._rotate(ts_ns)
        return _new_packet(
            Packet,
            (
                frame, ts_ns, src, dst, sport, dport, seq, ack, offset_flags & 0xFF, win,
                buf[tcp + header : end], wire - (end - tcp), vni,
            ),
        )  # fmt: skip

    # link layers

    def _ethernet(self, buf: bytes, off: int, end: int) -> Packet | None:
        if end - off < 14:
            raise _Skip(TRUNCATED, "truncated_ethernet_frame")
        ethertype = buf[off + 12] << 8 | buf[off + 13]
        if ethertype == ETH_IPV4:
            return self._ipv4(buf, off + 14, end)
        return self._ethertype(ethertype, buf, off + 14, end)

    def _ethertype(self, ethertype: int, buf: bytes, off: int, end: int) -> Packet | None:
        """What follows an Ethernet type field, a VLAN tag, SLL, GRE or Geneve."""
        while ethertype in _VLAN_TPIDS:  # 802.1Q, 802.1ad QinQ, any depth
            if end - off < 4:
                raise _Skip(TRUNCATED, "truncated_VLAN_header")
            ethertype = buf[off + 2] << 8 | buf[off + 3]
            off += 4
        if ethertype < 0x0600:  # an 802.3 length: LLC, maybe SNAP with a real type
            end = min(end, off + ethertype)
            if end - off < 8 or buf[off : off + 3] != b"\xaa\xaa\x03":
                raise _Skip(NOT_IP)
            ethertype = buf[off + 6] << 8 | buf[off + 7]
            off += 8
        if ethertype == ETH_IPV4:
            return self._ipv4(buf, off, end)
        if ethertype == ETH_IPV6:
            return self._ipv6(buf, off, end)
        if ethertype in ETH_MPLS:
            return self._mpls(buf, off, end)
        if ethertype == ETH_BRIDGED:
            return self._ethernet(buf, off, end)
        if ethertype == ETH_PPPOE_SESSION:
            return self._pppoe(buf, off, end)
        if ethertype in (ETH_ARP, ETH_RARP):
            raise _Skip(ARP)
        raise _Skip(NOT_IP)

    def _mpls(self, buf: bytes, off: int, end: int) -> Packet | None:
        while True:  # label stack entries until the bottom-of-stack bit
            if end - off < 4:
                raise _Skip(TRUNCATED, "truncated_link_header", "MPLS")
            bottom = buf[off + 2] & 1
            off += 4
            if bottom:
                break
        return self._raw(buf, off, end)  # MPLS does not say what it carries: guess by version

    def _pppoe(self, buf: bytes, off: int, end: int) -> Packet | None:
        """RFC 2516 session stage: version/type, code, session id, length, then PPP's protocol field."""
        if end - off < 8:
            raise _Skip(TRUNCATED, "truncated_link_header", "PPPoE")
        end = min(end, off + 6 + (buf[off + 4] << 8 | buf[off + 5]))
        protocol = buf[off + 6] << 8 | buf[off + 7]
        self._tunnel("pppoe")
        if protocol == PPP_IPV4:
            return self._ipv4(buf, off + 8, end)
        if protocol == PPP_IPV6:
            return self._ipv6(buf, off + 8, end)
        raise _Skip(NOT_IP)  # LCP, IPCP, authentication: the session's own talk

    def _cisco_hdlc(self, buf: bytes, off: int, end: int) -> Packet | None:
        """Address, control, then an Ethernet type (0x8035 SLARP, the link's keep-alives, is no IP)."""
        if end - off < 4:
            raise _Skip(TRUNCATED, "truncated_link_header", "Cisco HDLC")
        return self._ethertype(buf[off + 2] << 8 | buf[off + 3], buf, off + 4, end)

    def _raw(self, buf: bytes, off: int, end: int) -> Packet | None:
        if end <= off:
            raise _Skip(TRUNCATED, "truncated_IP")
        version = buf[off] >> 4
        if version == 4:
            return self._ipv4(buf, off, end)
        if version == 6:
            return self._ipv6(buf, off, end)
        raise _Skip(NOT_IP)

    def _null(self, buf: bytes, off: int, end: int) -> Packet | None:
        """BSD loopback: a 4-byte address family, in the capturing host's byte order (0)
        or in network order (108, OpenBSD); either way a small number."""
        if end - off < 4:
            raise _Skip(TRUNCATED, "truncated_link_header", "loopback")
        family = int.from_bytes(buf[off : off + 4], "little")
        if family > 0xFFFF:
            family = int.from_bytes(buf[off : off + 4], "big")
        if family == _AF_INET:
            return self._ipv4(buf, off + 4, end)
        if family in _AF_INET6:
            return self._ipv6(buf, off + 4, end)
        raise _Skip(NOT_IP)

    def _linux_sll(self, buf: bytes, off: int, end: int) -> Packet | None:
        if end - off < 16:
            raise _Skip(TRUNCATED, "truncated_Linux_SLL_header")
        return self._ethertype(buf[off + 14] << 8 | buf[off + 15], buf, off + 16, end)

    def _linux_sll2(self, buf: bytes, off: int, end: int) -> Packet | None:
        if end - off < 20:
            raise _Skip(TRUNCATED, "truncated_Linux_SLL2_header")
        return self._ethertype(buf[off] << 8 | buf[off + 1], buf, off + 20, end)

    # IP

    def _ipv4(self, buf: bytes, off: int, end: int) -> Packet | None:
        if end - off < 20:
            raise _Skip(TRUNCATED, "truncated_IP")
        vihl, total, ip_id, frag, proto, src, dst = _IPV4(buf, off)
        if vihl == 0x45:
            header = 20
        else:
            if vihl >> 4 != 4:
                raise _Skip(MALFORMED, "unknown_ip_version", f"version {vihl >> 4} in an IPv4 slot")
            header = (vihl & 15) << 2
            if header < 20:
                raise _Skip(MALFORMED, "IPv4_min_header_size", f"header length {header}")
            if end - off < header:
                raise _Skip(TRUNCATED, "truncated_IP", "IPv4 options cut by the snap length")
        if total < header:
            if total:
                raise _Skip(MALFORMED, "invalid_IP_header_size", f"total length {total} < header {header}")
            # TCP segmentation offload leaves ip_len zero in host captures: use what was captured.
            self._anomalies.add("ip_hdr_len_zero", self._frame, self._ts)
            total = end - off
        elif off + total < end:
            end = off + total  # drop link padding (and anything else after the datagram)
        if frag & 0x3FFF:  # more-fragments flag or an offset
            return self._ipv4_fragment(buf, off + header, end, src, dst, ip_id, frag, proto, total - header)
        ip_key = buf[off + 2 : off + 6]  # total length and id
        if proto == IPPROTO_TCP:
            return self._tcp(buf, off + header, end, src, dst, ip_key, total - header)
        return self._ip_payload(proto, buf, off + header, end, src, dst, ip_key, total - header)

    def _ipv6(self, buf: bytes, off: int, end: int) -> Packet | None:
        if end - off < 40:
            raise _Skip(TRUNCATED, "truncated_IP", "IPv6 header")
        head, length, next_header = _IPV6(buf, off)
        if head >> 28 != 6:
            raise _Skip(MALFORMED, "unknown_ip_version", f"version {head >> 28} in an IPv6 slot")
        src = buf[off + 8 : off + 24]
        dst = buf[off + 24 : off + 40]
        off += 40
        if not length:  # a jumbogram, or offloaded segmentation: the capture is all we know
            length = end - off
        elif off + length < end:
            end = off + length
        ip_key = buf[off - 36 : off - 34]  # payload length
        return self._ipv6_headers(next_header, buf, off, end, src, dst, length, ip_key)

    def _ipv6_headers(
        self,
        next_header: int,
        buf: bytes,
        off: int,
        end: int,
        src: bytes,
        dst: bytes,
        wire: int,
        ip_key: bytes,
    ) -> Packet | None:
        """Walk the extension headers (RFC 8200 §4) to the upper layer."""
        while next_header in _IPV6_EXTENSIONS:
            if wire < 8:
                raise _Skip(MALFORMED, "bogus_IP_header_lengths", "IPv6 extension headers exceed the payload")
            if end - off < 8:
                raise _Skip(TRUNCATED, "truncated_IP", "IPv6 extension header")
            if next_header == IPPROTO_FRAGMENT:
                offset_flags = _U16(buf, off + 2)[0]
                if offset_flags & 0xFFF9:  # an offset or more-fragments: a real fragment
                    return self._ipv6_fragment(buf, off, end, src, dst, offset_flags, wire)
                size = 8  # an atomic fragment (RFC 6946): the whole datagram
            elif next_header == IPPROTO_AH:
                size = (buf[off + 1] + 2) * 4
            else:
                size = (buf[off + 1] + 1) * 8
            if size > wire:
                raise _Skip(MALFORMED, "bogus_IP_header_lengths", "IPv6 extension headers exceed the payload")
            if end - off < size:
                raise _Skip(TRUNCATED, "truncated_IP", "IPv6 extension header")
            next_header = buf[off]
            off += size
            wire -= size
        if next_header == IPPROTO_TCP:
            return self._tcp(buf, off, end, src, dst, ip_key, wire)
        return self._ip_payload(next_header, buf, off, end, src, dst, ip_key, wire)

    def _ip_payload(
        self, proto: int, buf: bytes, off: int, end: int, src: bytes, dst: bytes, ip_key: bytes, wire: int
    ) -> Packet | None:
        if proto == IPPROTO_TCP:
            return self._tcp(buf, off, end, src, dst, ip_key, wire)
        if proto == IPPROTO_UDP:
            return self._udp(buf, off, end)
        if proto == IPPROTO_GRE:
            return self._gre(buf, off, end, "gre")
        if proto == IPPROTO_IPIP:
            self._tunnel("ip-in-ip")
            return self._ipv4(buf, off, end)
        if proto == IPPROTO_IPV6:
            self._tunnel("ip-in-ip")
            return self._ipv6(buf, off, end)
        if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            raise _Skip(ICMP)
        raise _Skip(OTHER_IP_PROTO)

    # fragments

    def _ipv4_fragment(
        self,
        buf: bytes,
        off: int,
        end: int,
        src: bytes,
        dst: bytes,
        ip_id: int,
        frag: int,
        proto: int,
        wire: int,
    ) -> Packet | None:
        offset = (frag & 0x1FFF) * 8
        datagram = self._defragment(
            (src, dst, proto, ip_id), offset, frag & 0x2000, proto, buf, off, end, wire
        )
        if datagram is None:
            return None
        proto, data = datagram
        ip_key = _LENGTH_AND_ID(min(len(data), 0xFFFF), ip_id)
        return self._ip_payload(proto, data, 0, len(data), src, dst, ip_key, len(data))

    def _ipv6_fragment(
        self, buf: bytes, off: int, end: int, src: bytes, dst: bytes, offset_flags: int, wire: int
    ) -> Packet | None:
        next_header = buf[off]
        ident = _U32(buf, off + 4)[0]
        datagram = self._defragment(
            (src, dst, ident),
            offset_flags & 0xFFF8,
            offset_flags & 1,
            next_header,
            buf,
            off + 8,
            end,
            wire - 8,
        )
        if datagram is None:
            return None
        next_header, data = datagram
        return self._ipv6_headers(
            next_header, data, 0, len(data), src, dst, len(data), buf[off + 4 : off + 8]
        )

    def _defragment(
        self,
        key: tuple[object, ...],
        offset: int,
        more: int,
        proto: int,
        buf: bytes,
        off: int,
        end: int,
        wire: int,
    ) -> tuple[int, bytes] | None:
        """The whole datagram once this fragment completes it; None for a mirror copy."""
        if wire < 0:
            raise _Skip(MALFORMED, "bogus_IP_header_lengths", "fragment header beyond the payload")
        if end - off < wire:
            raise _Skip(IP_FRAGMENT, "incompletely_captured_fragment")
        if self._seen(("fragment", key, offset, more, wire), self._ts):
            return None
        datagram = self._fragments.add(key, offset, bool(more), proto, buf[off:end], self._frame, self._ts)
        if datagram is None:
            raise _Skip(IP_FRAGMENT)
        return datagram

    # transport and tunnels

    def _tcp(
        self, buf: bytes, off: int, end: int, src: bytes, dst: bytes, ip_key: bytes, wire: int
    ) -> Packet | None:
        """The segment, unless it is the mirror copy of one seen within the window.

        The copy's key: ``ip_key`` (IPv4 length and id; IPv6 payload length),
        addresses, and the TCP header's first 18 bytes (ports, seq, ack, offset,
        flags, window, checksum). Never TTL or anything outside this IP header.
        """
        if wire < 20:
            raise _Skip(MALFORMED, "truncated_header", f"IP length leaves {wire} bytes for TCP")
        if end - off < 20:
            raise _Skip(TRUNCATED, "truncated_header", "TCP header cut short")
        sport, dport, seq, ack, offset_flags, win = _TCP(buf, off)
        header = offset_flags >> 12 << 2
        if header < 20 or header > wire:
            raise _Skip(MALFORMED, "bad_TCP_header_len", f"data offset {header}, {wire} bytes of TCP")
        if end - off < header:
            raise _Skip(TRUNCATED, "truncated_header", "TCP options cut short")
        if self._seen(ip_key + src + dst + buf[off : off + 18], self._ts):
            return None
        return _new_packet(
            Packet,
            (
                self._frame, self._ts, src, dst, sport, dport, seq, ack, offset_flags & 0xFF, win,
                buf[off + header : end], wire - (end - off), self._vni,
            ),
        )  # fmt: skip

    def _seen(self, key: Hashable, ts: int) -> bool:
        """True if this is a mirror copy of a segment seen within the window."""
        first = self._recent.get(key)
        if first is None:
            first = self._older.get(key)
        if first is not None and -self._window <= ts - first <= self._window:
            return True
        self._recent[key] = ts
        if ts >= self._rotate_at or len(self._recent) > _DEDUP_MAX_KEYS:
            self._rotate(ts)
        return False

    def _rotate(self, ts: int) -> None:
        """Keys move to the older generation, which is dropped at the next
        rotation: each key is kept at least one window, memory stays flat."""
        self._older = self._recent
        self._recent = {}
        self._rotate_at = ts + self._window

    def _udp(self, buf: bytes, off: int, end: int) -> Packet | None:
        if end - off < 8:
            raise _Skip(TRUNCATED, "truncated_header", "UDP header cut short")
        _sport, dport, length = _UDP(buf, off)
        if 8 <= length < end - off:
            end = off + length
        if dport == VXLAN_PORT:
            return self._vxlan(buf, off + 8, end)
        if dport == GENEVE_PORT:
            return self._geneve(buf, off + 8, end)
        if dport == GRE_IN_UDP_PORT:
            return self._gre(buf, off + 8, end, "gre-in-udp")
        if dport == GTP_U_PORT:
            return self._gtp_u(buf, off + 8, end)
        raise _Skip(UDP)

    def _gtp_u(self, buf: bytes, off: int, end: int) -> Packet | None:
        """3GPP TS 29.281: flags, message type (255: a user's IP packet), length, TEID; 4 more bytes when
        a sequence number, N-PDU number or extension header is flagged, then the extension headers,
        each sized in 4-byte units by its first byte, the next one's type in its last."""
        if end - off < 8:
            raise _Skip(TRUNCATED, "truncated_header", "GTP-U header cut short")
        flags, message = buf[off], buf[off + 1]
        if flags >> 5 != 1:
            raise _Skip(UNSUPPORTED_TUNNEL, "unknown_gtp_version", f"version {flags >> 5}")
        if message != 255:
            raise _Skip(UDP)  # echo, error indication, end marker: the tunnel's own signalling
        end = min(end, off + 8 + (buf[off + 2] << 8 | buf[off + 3]))
        start, off = off, off + 8
        if flags & 0x07:
            if end - off < 4:
                raise _Skip(TRUNCATED, "truncated_header", "GTP-U optional fields cut short")
            following, off = buf[off + 3], off + 4
            while following and flags & 0x04:
                if end - off < 4 or not buf[off]:
                    raise _Skip(MALFORMED, "bad_gtp_extension", f"at byte {off - start} of the GTP-U header")
                off += 4 * buf[off]
                following = buf[off - 1] if off <= end else 0
        self._tunnel("gtp-u")  # not by TEID: one per user bearer, thousands
        return self._raw(buf, off, end)

    def _vxlan(self, buf: bytes, off: int, end: int) -> Packet | None:
        """RFC 7348: flags, 3 reserved bytes, 24-bit VNI (valid when the I flag is set), 1 reserved."""
        if end - off < 8:
            raise _Skip(TRUNCATED, "truncated_header", "VXLAN header cut short")
        vni = _U32(buf, off + 4)[0] >> 8 if buf[off] & 0x08 else None
        self._vni = vni
        self._tunnel("vxlan", vni)
        return self._ethernet(buf, off + 8, end)

    def _geneve(self, buf: bytes, off: int, end: int) -> Packet | None:
        """RFC 8926: version and option length, flags, protocol type, 24-bit VNI, options."""
        if end - off < 8:
            raise _Skip(TRUNCATED, "truncated_header", "Geneve header cut short")
        if buf[off] >> 6:
            raise _Skip(MALFORMED, "geneve_invalid_version", f"version {buf[off] >> 6}")
        header = 8 + (buf[off] & 0x3F) * 4
        if end - off < header:
            raise _Skip(TRUNCATED, "truncated_header", "Geneve options cut short")
        vni = _U32(buf, off + 4)[0] >> 8
        self._vni = vni
        self._tunnel("geneve", vni)
        return self._ethertype(_U16(buf, off + 2)[0], buf, off + header, end)

    def _gre(self, buf: bytes, off: int, end: int, label: str) -> Packet | None:
        """RFC 2784/2890 GRE; ERSPAN I/II/III ride on it with their own protocol types."""
        if end - off < 4:
            raise _Skip(TRUNCATED, "truncated_GRE")
        flags, proto = _GRE(buf, off)
        if flags & 7:
            raise _Skip(UNSUPPORTED_TUNNEL, "unknown_gre_version", f"version {flags & 7} (PPTP is version 1)")
        if flags & 0x4000:
            raise _Skip(UNSUPPORTED_TUNNEL, "gre_routing", "RFC 1701 source routing")
        # checksum+reserved, key, sequence number: 4 bytes each when flagged
        off += 4 + 4 * ((flags >> 15 & 1) + (flags >> 13 & 1) + (flags >> 12 & 1))
        if end < off:
            raise _Skip(TRUNCATED, "truncated_GRE")
        if proto in (ETH_ERSPAN_1_2, ETH_ERSPAN_3):
            return self._erspan(proto, flags, buf, off, end)
        self._tunnel(label)
        return self._ethertype(proto, buf, off, end)

    def _erspan(self, proto: int, gre_flags: int, buf: bytes, off: int, end: int) -> Packet | None:
        """ERSPAN mirrors Ethernet frames over GRE: type I has no header of its own,
        type II (GRE sequence number present) 8 bytes, type III 12 bytes plus an
        optional 8-byte platform subheader (O flag)."""
        if proto == ETH_ERSPAN_3:
            if end - off < 12:
                raise _Skip(TRUNCATED, "truncated_GRE", "ERSPAN III header")
            kind = "erspan-iii"
            off += 20 if buf[off + 11] & 1 else 12
        elif gre_flags & 0x1000:
            kind = "erspan-ii"
            off += 8
        else:
            kind = "erspan-i"
        self._tunnel(kind)
        return self._ethernet(buf, off, end)

    def _tunnel(self, kind: str, vni: int | None = None) -> None:
        self._depth += 1
        if self._depth > MAX_TUNNEL_DEPTH:
            raise _Skip(MALFORMED, "exceeded_tunnel_max_depth", f"more than {MAX_TUNNEL_DEPTH} tunnels")
        self._tunnels[self._label(kind, vni)] += 1

    def _label(self, kind: str, vni: int | None) -> str:
        """The stats.tunnels key: "gre", "vxlan vni=7"; a garbage capture must not grow it without end."""
        label = self._labels.get((kind, vni))
        if label is None:
            if len(self._labels) >= _MAX_TUNNEL_LABELS:
                return f"{kind} (other)"
            label = self._labels[kind, vni] = kind if vni is None else f"{kind} vni={vni}"
            if kind == "vxlan" and vni is not None:
                self._vxlan_labels[vni] = label
        return label


class _Datagram:
    """The fragments of one IP datagram received so far."""

    __slots__ = ("first_frame", "first_ts", "pieces", "size", "proto", "length")

    def __init__(self, frame: int, ts_ns: int) -> None:
        self.first_frame = frame
        self.first_ts = ts_ns
        self.pieces: list[tuple[int, bytes]] = []
        self.size = 0  # bytes held
        self.proto: int | None = None  # from the first fragment (RFC 8200 §4.5: offset 0 decides)
        self.length: int | None = None  # known once the last fragment arrives

    def overlap_differs(self, offset: int, data: bytes) -> bool:
        for start, held in self.pieces:
            lo, hi = max(start, offset), min(start + len(held), offset + len(data))
            if lo < hi and held[lo - start : hi - start] != data[lo - offset : hi - offset]:
                return True
        return False

    def assembled(self) -> bytes | None:
        if self.length is None or self.proto is None:
            return None
        covered = 0
        for start, held in sorted(self.pieces):
            if start > covered:
                return None
            covered = max(covered, start + len(held))
        if covered < self.length:
            return None
        whole = bytearray(self.length)
        for start, held in reversed(self.pieces):  # the first copy of an overlap wins
            piece = held[: max(0, self.length - start)]
            whole[start : start + len(piece)] = piece
        return bytes(whole)


class _Reassembler:
    """IP datagrams put back together from fragments (RFC 791 §3.2, RFC 8200 §4.5), bounded."""

    def __init__(self, anomalies: AnomalyLog) -> None:
        self._anomalies = anomalies
        self._pending: dict[tuple[object, ...], _Datagram] = {}
        self._held = 0

    def add(
        self,
        key: tuple[object, ...],
        offset: int,
        more: bool,
        proto: int,
        data: bytes,
        frame: int,
        ts_ns: int,
    ) -> tuple[int, bytes] | None:
        """(protocol, datagram payload) when this fragment completes it."""
        self._expire(ts_ns)
        if offset + len(data) > 65535:
            self._anomalies.add("excessively_large_fragment", frame, ts_ns)
            return None
        datagram = self._pending.get(key)
        if datagram is None:
            datagram = self._pending[key] = _Datagram(frame, ts_ns)
        elif len(datagram.pieces) >= MAX_FRAGMENTS_PER_DATAGRAM:
            self._give_up(key, f"more than {MAX_FRAGMENTS_PER_DATAGRAM} fragments")
            return None
        if datagram.overlap_differs(offset, data):
            self._anomalies.add("fragment_inconsistency", frame, ts_ns, detail="overlapping fragments differ")
        datagram.pieces.append((offset, data))
        datagram.size += len(data)
        self._held += len(data)
        if offset == 0:
            datagram.proto = proto
        if not more:
            datagram.length = offset + len(data)
        whole = datagram.assembled()
        if whole is not None:
            self._drop(key)
            return datagram.proto, whole  # type: ignore[return-value]  # assembled() checked proto
        self._evict()
        return None

    def flush(self) -> None:
        """The capture ended: what is still pending will never complete."""
        for key in list(self._pending):
            self._give_up(key, "capture ended first")

    def _expire(self, now_ns: int) -> None:
        while self._pending:
            key, datagram = next(iter(self._pending.items()))
            if now_ns - datagram.first_ts <= FRAGMENT_TIMEOUT_NS:
                return  # the rest started later
            self._give_up(key, f"no completion within {FRAGMENT_TIMEOUT_NS // 1_000_000_000} s")

    def _evict(self) -> None:
        while len(self._pending) > MAX_PENDING_DATAGRAMS or self._held > MAX_PENDING_FRAGMENT_BYTES:
            self._give_up(next(iter(self._pending)), "reassembly buffer full")

    def _give_up(self, key: tuple[object, ...], why: str) -> None:
        datagram = self._drop(key)
        self._anomalies.add(
            "unreassembled_fragments",
            datagram.first_frame,
            datagram.first_ts,
            detail=f"{len(datagram.pieces)} fragment(s): {why}",
        )

    def _drop(self, key: tuple[object, ...]) -> _Datagram:
        datagram = self._pending.pop(key)
        self._held -= datagram.size
        return datagram
