"""Small shared types passed between the pipeline stages.

Times are integer nanoseconds since the epoch (``ts_ns``) inside the pipeline:
pcapng may carry nanoseconds, and floats make golden files flaky. Exports turn
them into float seconds. Addresses stay packed (4 or 16 bytes) on the hot path
and are formatted only when a record leaves the pipeline.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

# TCP flag bits, dpkt's names.
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PUSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20

# Direction of a segment within a connection: from the side that opened it
# (Zeek's "orig") or from the side that accepted it ("resp").
ORIG = 0
RESP = 1


class Packet(NamedTuple):
    """The innermost TCP segment of one captured frame."""

    frame: int  # 1-based frame number in its capture file, as Wireshark counts
    ts_ns: int
    src: bytes  # packed IPv4 (4 bytes) or IPv6 (16 bytes) address
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int  # TH_* bits
    win: int
    payload: bytes  # what the capture holds of the TCP payload
    missing: int  # payload bytes on the wire but cut by the snap length
    vni: int | None  # VXLAN/Geneve VNI of the tunnel it came in, if any


@functools.lru_cache(maxsize=4096)  # a capture has few addresses; ip_address() costs ~2 µs a call
def format_addr(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def format_endpoint(addr: bytes, port: int) -> str:
    """``1.2.3.4:80`` or ``[2001:db8::1]:80``."""
    text = format_addr(addr)
    return f"[{text}]:{port}" if len(addr) == 16 else f"{text}:{port}"


def format_flow(src: bytes, sport: int, dst: bytes, dport: int) -> str:
    """A connection as ``opener->acceptor``, the notation of the JSON export."""
    return f"{format_endpoint(src, sport)}->{format_endpoint(dst, dport)}"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something malformed or surprising in the capture (Zeek's weird.log)."""

    name: str  # stable id, Zeek's where one exists (truncated_IP, bad_HTTP_reply)
    frame: int | None
    ts_ns: int | None
    flow: str | None = None
    detail: str = ""


class AnomalyLog:
    """Counts every anomaly; keeps the first few of each name.

    Keeping all of them would make memory grow with a damaged capture's length.
    """

    def __init__(self, keep_per_name: int = 100) -> None:
        self.keep_per_name = keep_per_name
        self.counts: Counter[str] = Counter()
        self.kept: list[Anomaly] = []

    def add(self, name: str, frame: int | None, ts_ns: int | None,
            flow: str | None = None, detail: str = "") -> None:
        self.counts[name] += 1
        if self.counts[name] <= self.keep_per_name:
            self.kept.append(Anomaly(name, frame, ts_ns, flow, detail))


@dataclass(slots=True)
class CaptureStats:
    """How every frame of one capture file was accounted for.

    ``frames == decoded + duplicates + sum(skipped.values())`` always holds.
    """

    path: str
    format: str = ""  # "pcap", "pcapng", with "+gzip" when compressed
    frames: int = 0
    decoded: int = 0  # TCP segments handed to the TCP stage
    duplicates: int = 0  # mirror copies dropped
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> frames
    truncated: int = 0  # decoded frames cut by the snap length (kept)
    link_types: Counter[str] = field(default_factory=Counter)
    tunnels: Counter[str] = field(default_factory=Counter)  # "vxlan vni=7" -> frames
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None


class CaptureError(Exception):
    """The input cannot be analysed at all (missing, empty, not a capture)."""


class Probe(NamedTuple):
    """A TCP keep-alive probe (Wireshark's rule: 0 or 1 byte at next seq - 1)."""

    direction: int  # ORIG or RESP
    ts_ns: int
    frame: int


@dataclass(frozen=True, slots=True)
class Close:
    """The first FIN or RST of a connection: who sent it, when, in what state."""

    by: int  # ORIG or RESP
    how: str  # "fin" or "rst"
    ts_ns: int
    frame: int
    state: str  # TCP state when sent: "handshake", "established" or "half_closed" (peer's FIN seen)


@dataclass(frozen=True, slots=True)
class Connection:
    """One TCP connection, summarised in Zeek's vocabulary when it ends."""

    id: int  # unique within an analysis, in order of first packet
    orig: bytes  # the side that opened it (SYN sender, else guessed)
    orig_port: int
    resp: bytes
    resp_port: int
    start_ns: int
    end_ns: int
    history: str  # Zeek letters: upper case from orig, lower case from resp
    conn_state: str  # Zeek's S0 S1 SF REJ S2 S3 RSTO RSTR RSTOS0 RSTRH SH SHR OTH
    syn_seen: bool
    orig_bytes: int  # from sequence numbers, as Zeek counts
    resp_bytes: int
    missed_bytes: int  # bytes never seen (gaps), both directions
    orig_pkts: int
    resp_pkts: int
    first_close: Close | None  # who closed first, and how
    fins: tuple[Close, ...]  # every direction's FIN (half-close shows as one)
    rst: Close | None  # first RST
    probes: tuple[Probe, ...]  # keep-alive probes (first 64 per direction)
    probe_counts: tuple[int, int]  # all keep-alive probes, (orig, resp)
    zero_windows: tuple[int, int]
    retransmits: tuple[int, int]
    gaps: tuple[int, int]  # number of gaps per direction
    vni: int | None
    syn_frame: int | None = None  # the opener's first SYN

    @property
    def flow(self) -> str:
        return format_flow(self.orig, self.orig_port, self.resp, self.resp_port)


from_fields = tuple.__new__
"""``from_fields(Exchange, (every field, in order))``: the NamedTuple without its generated ``__new__``,
which runs in the interpreter even in the compiled build; for the records built once per exchange."""


class Exchange(NamedTuple):
    """One HTTP request and its response on one connection (mitmproxy's HTTPFlow).

    A NamedTuple, not a frozen dataclass: one is built per exchange, and a frozen
    dataclass of this size costs ten times as much to construct (2.4 µs vs 0.2 µs).

    A response may be missing (``status is None``) and the exchange may have been
    cut short; ``ended`` says how: "complete", "fin", "rst", "gap", "open"
    (still running at capture end) or "tunnel" (CONNECT/101: bytes after the
    head are opaque).
    """

    conn_id: int
    index: int  # 1-based position on its connection (Zeek's trans_depth)
    method: str | None
    uri: str | None
    version: str | None
    request_headers: tuple[tuple[str, str], ...]  # in order, duplicates kept
    status: int | None
    reason: str | None
    response_headers: tuple[tuple[str, str], ...]
    interim: tuple[int, ...]  # 1xx statuses before the final one
    request_body_len: int  # decoded body bytes (chunk framing removed)
    response_body_len: int
    request_start_ns: int | None
    request_end_ns: int | None
    response_start_ns: int | None
    response_end_ns: int | None
    request_frame: int | None  # frame of the request's first byte
    response_frame: int | None  # frame of the final response's first byte
    ended: str

    def header(self, name: str, response: bool = False) -> str | None:
        """The last value of a header (case-insensitive), or None."""
        wanted = name.lower()
        headers = self.response_headers if response else self.request_headers
        for key, value in reversed(headers):
            if key.lower() == wanted:
                return value
        return None

    @property
    def host(self) -> str | None:
        return self.header("host")
