"""Hostile captures, built at a chosen scale: what an attacker (or a damaged mirror) can put on the wire.

Each builder yields ``(ts_ns, frame)`` in capture order, made with the repository's
frame builders (``capture_builders``); ``write_pcap`` streams them to a file, so a
capture of millions of frames is written in constant memory. The tests run them
small; ``benchmarks/hostile.py`` runs them at full size and records peak RSS.

* ``syn_flood(n)``: ``n`` half-open connections, one SYN each, from many source
  addresses and ports to one proxy listener (a SYN flood), or from one source to
  ``n`` ports (``scan=True``: a port scan), among a few healthy exchanges.
* ``pipelined(n)``: one connection carrying ``n`` pipelined requests that are never
  answered (the server only acknowledges them).
* ``sequence_hole(jump)``: request/response pairs on one connection, then the
  client's sequence numbers jump ``jump`` bytes (bytes the capture never saw, the
  server acknowledging them), then more request/response pairs.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterable, Iterator

from alb_pcap.model import TH_ACK, TH_FIN, TH_PUSH, TH_SYN

from .capture_builders import T0_NS, ethernet, ipv4, tcp

Frame = tuple[int, bytes]

PROXY = "10.1.0.10"
PORT = 80
CLIENT = "10.2.0.5"
MS = 1_000_000
SEC = 1_000_000_000


def _seg(ts: int, src: str, sport: int, dst: str, dport: int, flags: int, seq: int, ack: int,
         payload: bytes = b"") -> Frame:
    return ts, ethernet(ipv4(tcp(payload, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags),
                             src=src, dst=dst))


def exchange(ts: int, client: str, cport: int, server: str = PROXY, sport: int = PORT, path: str = "/",
             status: int = 200) -> list[Frame]:
    """A whole healthy connection: handshake, one request and its response, FINs (about 7 ms)."""
    req = f"GET {path} HTTP/1.1\r\nHost: example\r\n\r\n".encode()
    body = b"ok"
    resp = f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    c, s = 1000, 5000
    return [
        _seg(ts, client, cport, server, sport, TH_SYN, c, 0),
        _seg(ts + 1 * MS, server, sport, client, cport, TH_SYN | TH_ACK, s, c + 1),
        _seg(ts + 2 * MS, client, cport, server, sport, TH_ACK, c + 1, s + 1),
        _seg(ts + 3 * MS, client, cport, server, sport, TH_ACK | TH_PUSH, c + 1, s + 1, req),
        _seg(ts + 4 * MS, server, sport, client, cport, TH_ACK | TH_PUSH, s + 1, c + 1 + len(req), resp),
        _seg(ts + 5 * MS, client, cport, server, sport, TH_FIN | TH_ACK, c + 1 + len(req), s + 1 + len(resp)),
        _seg(ts + 6 * MS, server, sport, client, cport, TH_FIN | TH_ACK, s + 1 + len(resp), c + 2 + len(req)),
        _seg(ts + 7 * MS, client, cport, server, sport, TH_ACK, c + 2 + len(req), s + 2 + len(resp)),
    ]


def flood_source(i: int) -> tuple[str, int]:
    """The i-th flooding SYN's source: 256 addresses per /24 over 10.100.0.0/14, ports 1024-65535."""
    return f"10.{100 + (i >> 16) % 4}.{(i >> 8) & 0xFF}.{i & 0xFF}", 1024 + (i * 7919) % 64512


def syn_flood(n: int, *, scan: bool = False, gap_ns: int = 10_000, healthy: int = 3) -> Iterator[Frame]:
    """``n`` SYNs never answered, ``gap_ns`` apart, with ``healthy`` answered exchanges before and after.

    Flood: SYN i comes from ``flood_source(i)`` to PROXY:PORT. Scan (``scan=True``): every
    SYN comes from 10.9.9.9:40000 to PROXY, port ``1 + i % 65535`` (a new ISN each lap).
    """
    ts = T0_NS
    for k in range(healthy):
        yield from exchange(ts, CLIENT, 30000 + k)
        ts += 10 * MS
    for i in range(n):
        if scan:
            yield _seg(ts, "10.9.9.9", 40000, PROXY, 1 + i % 65535, TH_SYN, 7000 + i // 65535, 0)
        else:
            src, sport = flood_source(i)
            yield _seg(ts, src, sport, PROXY, PORT, TH_SYN, 7000 + i, 0)
        ts += gap_ns
    for k in range(healthy):
        ts += 10 * MS
        yield from exchange(ts, CLIENT, 31000 + k)


def pipelined(n: int, *, gap_ns: int = 10_000) -> Iterator[Frame]:
    """One connection, ``n`` pipelined GETs, each acknowledged and never answered; the client then leaves."""
    ts = T0_NS
    c, s = 1000, 5000
    yield _seg(ts, CLIENT, 40000, PROXY, PORT, TH_SYN, c, 0)
    yield _seg(ts + MS, PROXY, PORT, CLIENT, 40000, TH_SYN | TH_ACK, s, c + 1)
    yield _seg(ts + 2 * MS, CLIENT, 40000, PROXY, PORT, TH_ACK, c + 1, s + 1)
    seq = c + 1
    ts += 3 * MS
    for i in range(n):
        req = f"GET /p/{i} HTTP/1.1\r\nHost: example\r\n\r\n".encode()
        yield _seg(ts, CLIENT, 40000, PROXY, PORT, TH_ACK | TH_PUSH, seq, s + 1, req)
        seq = (seq + len(req)) % (1 << 32)
        if i % 16 == 15:
            yield _seg(ts + gap_ns // 2, PROXY, PORT, CLIENT, 40000, TH_ACK, s + 1, seq)
        ts += gap_ns
    yield _seg(ts, CLIENT, 40000, PROXY, PORT, TH_FIN | TH_ACK, seq, s + 1)
    yield _seg(ts + MS, PROXY, PORT, CLIENT, 40000, TH_FIN | TH_ACK, s + 1, (seq + 1) % (1 << 32))
    yield _seg(ts + 2 * MS, CLIENT, 40000, PROXY, PORT, TH_ACK, (seq + 1) % (1 << 32), s + 2)


def slowloris(n: int, *, gap_ns: int = 10_000, healthy: int = 3) -> Iterator[Frame]:
    """``n`` connections opened (full handshake) that each send part of a request head and then nothing
    (slowloris), ``gap_ns`` apart, from ``flood_source(i)``, none closed, among ``healthy`` exchanges."""
    ts = T0_NS
    for k in range(healthy):
        yield from exchange(ts, CLIENT, 30000 + k)
        ts += 10 * MS
    part = b"GET /slow HTTP/1.1\r\nHost: example\r\nX-a: "
    for i in range(n):
        src, sport = flood_source(i)
        c, s = 7000 + i, 9000 + i
        yield _seg(ts, src, sport, PROXY, PORT, TH_SYN, c, 0)
        yield _seg(ts + 1000, PROXY, PORT, src, sport, TH_SYN | TH_ACK, s, c + 1)
        yield _seg(ts + 2000, src, sport, PROXY, PORT, TH_ACK | TH_PUSH, c + 1, s + 1, part)
        yield _seg(ts + 3000, PROXY, PORT, src, sport, TH_ACK, s + 1, c + 1 + len(part))
        ts += gap_ns
    for k in range(healthy):
        ts += 10 * MS
        yield from exchange(ts, CLIENT, 31000 + k)


def sequence_hole(jump: int, *, before: int = 3, after: int = 3, answered: bool = True) -> Iterator[Frame]:
    """``before`` request/response pairs, a client sequence hole of ``jump`` bytes, ``after`` more pairs.

    The hole is bytes the capture missed: ``answered`` (a mirror losing segments), they were one
    request (a POST of ``jump`` bytes, head and body lost) whose response, 201 with body "lost",
    was captured; not ``answered``, the client's sequence numbers merely jump (no response for
    them). Either way the server's ACKs cover the hole. Requests are GET /before/i and GET
    /after/i, answered 200 with body "ok", 10 ms apart.
    """
    ts = T0_NS
    mod = 1 << 32
    c, s = 1000, 5000
    yield _seg(ts, CLIENT, 40000, PROXY, PORT, TH_SYN, c, 0)
    yield _seg(ts + MS, PROXY, PORT, CLIENT, 40000, TH_SYN | TH_ACK, s, c + 1)
    yield _seg(ts + 2 * MS, CLIENT, 40000, PROXY, PORT, TH_ACK, c + 1, s + 1)
    cseq, sseq = c + 1, s + 1
    ts += 10 * MS
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    for phase, count in (("before", before), ("after", after)):
        if phase == "after":
            cseq = (cseq + jump) % mod
            if answered:
                lost = b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nlost"
                yield _seg(ts, PROXY, PORT, CLIENT, 40000, TH_ACK | TH_PUSH, sseq, cseq, lost)
                sseq = (sseq + len(lost)) % mod
                ts += 10 * MS
        for i in range(count):
            req = f"GET /{phase}/{i} HTTP/1.1\r\nHost: example\r\n\r\n".encode()
            yield _seg(ts, CLIENT, 40000, PROXY, PORT, TH_ACK | TH_PUSH, cseq, sseq, req)
            cseq = (cseq + len(req)) % mod
            yield _seg(ts + MS, PROXY, PORT, CLIENT, 40000, TH_ACK | TH_PUSH, sseq, cseq, ok)
            sseq = (sseq + len(ok)) % mod
            yield _seg(ts + 2 * MS, CLIENT, 40000, PROXY, PORT, TH_ACK, cseq, sseq)
            ts += 10 * MS
    yield _seg(ts, CLIENT, 40000, PROXY, PORT, TH_FIN | TH_ACK, cseq, sseq)
    yield _seg(ts + MS, PROXY, PORT, CLIENT, 40000, TH_FIN | TH_ACK, sseq, (cseq + 1) % mod)
    yield _seg(ts + 2 * MS, CLIENT, 40000, PROXY, PORT, TH_ACK, (cseq + 1) % mod, (sseq + 1) % mod)


def write_pcap(out: BinaryIO, frames: Iterable[Frame]) -> int:
    """Stream ``frames`` to ``out`` as a microsecond libpcap file (Ethernet); returns the frame count."""
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    pack = struct.Struct("<IIII").pack
    n = 0
    for ts_ns, frame in frames:
        sec, rest = divmod(ts_ns, SEC)
        out.write(pack(sec, rest // 1000, len(frame), len(frame)))
        out.write(frame)
        n += 1
    return n


def pcap_bytes(frames: Iterable[Frame]) -> bytes:
    import io

    buf = io.BytesIO()
    write_pcap(buf, frames)
    return buf.getvalue()
