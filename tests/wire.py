"""Conversations built segment by segment, run through the real TCP stage or written as a pcap."""

from __future__ import annotations

import ipaddress

from alb_pcap.model import (
    TH_ACK,
    TH_FIN,
    TH_PUSH,
    TH_RST,
    TH_SYN,
    AnomalyLog,
    Connection,
    Packet,
)
from alb_pcap.wire.tcp import TcpTracker

from .capture_builders import ethernet, ipv4, pcap, tcp

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


class _Closed:
    """A StreamListener keeping only the Connection records."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []

    def on_open(self, *a) -> None: ...
    def on_data(self, *a) -> None: ...
    def on_gap(self, *a) -> None: ...
    def on_end(self, *a) -> None: ...

    def on_close(self, conn: Connection) -> None:
        self.connections.append(conn)


class Wire:
    """Segments of several connections in time order (seconds from T0); ``tracked()`` runs the TCP stage."""

    def __init__(self) -> None:
        self.segments: list[tuple[float, str, int, str, int, int, int, int, bytes]] = []

    def add(self, t: float, src: str, sport: int, dst: str, dport: int, flags: int, seq: int = 1000,
            ack: int = 0, payload: bytes = b"") -> Wire:
        self.segments.append((t, src, sport, dst, dport, flags, seq, ack, payload))
        return self

    # conversations --------------------------------------------------------------------------

    def refused(self, src: str, sport: int, dst: str, dport: int, at: float = 0.0,
                retries: tuple[float, ...] = ()) -> Wire:
        for t in (at, *(at + r for r in retries)):
            self.add(t, src, sport, dst, dport, TH_SYN)
        last = at + (retries[-1] if retries else 0)
        return self.add(last + 0.0004, dst, dport, src, sport, TH_RST | TH_ACK, seq=0, ack=1001)

    def unanswered(self, src: str, sport: int, dst: str, dport: int, at: float = 0.0,
                   retries: tuple[float, ...] = ()) -> Wire:
        for t in (at, *(at + r for r in retries)):
            self.add(t, src, sport, dst, dport, TH_SYN)
        return self

    def answered(self, src: str, sport: int, dst: str, dport: int, at: float = 0.0) -> Wire:
        """A whole connection: handshake, a few bytes each way, FINs."""
        (self.add(at, src, sport, dst, dport, TH_SYN, seq=1000)
             .add(at + 0.001, dst, dport, src, sport, TH_SYN | TH_ACK, seq=5000, ack=1001)
             .add(at + 0.002, src, sport, dst, dport, TH_ACK, seq=1001, ack=5001)
             .add(at + 0.003, src, sport, dst, dport, TH_ACK | TH_PUSH, seq=1001, ack=5001, payload=b"ping")
             .add(at + 0.004, dst, dport, src, sport, TH_ACK | TH_PUSH, seq=5001, ack=1005, payload=b"pong")
             .add(at + 0.005, src, sport, dst, dport, TH_FIN | TH_ACK, seq=1005, ack=5005)
             .add(at + 0.006, dst, dport, src, sport, TH_FIN | TH_ACK, seq=5005, ack=1006)
             .add(at + 0.007, src, sport, dst, dport, TH_ACK, seq=1006, ack=5006))
        return self

    # outputs --------------------------------------------------------------------------------

    def ordered(self):
        return sorted(self.segments, key=lambda s: s[0])

    def tracked(self) -> list[Connection]:
        sink = _Closed()
        tracker = TcpTracker(sink, AnomalyLog())
        for frame, (t, src, sport, dst, dport, flags, seq, ack, payload) in enumerate(self.ordered(), 1):
            tracker.feed(Packet(frame, T0 + round(t * SEC), _packed(src), _packed(dst), sport, dport, seq, ack,
                                flags, 65535, payload, 0, None))
        tracker.finish()
        return sink.connections

    def pcap_bytes(self) -> bytes:
        frames = []
        for ident, (t, src, sport, dst, dport, flags, seq, ack, payload) in enumerate(self.ordered(), 1):
            frame = ethernet(ipv4(tcp(payload, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags),
                                  src=src, dst=dst, ident=ident))
            frames.append((T0 + round(t * SEC), frame))
        return pcap(frames)
