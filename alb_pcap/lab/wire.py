"""Connection open/close times from the lab's plain (not mirrored) captures, for ground truth only.

The proxy's log says what happened to a request but not when an idle connection was closed, nor by
whom: nothing is logged for an idle close. This reads the SYN, FIN and RST times of each TCP
connection, and counts TCP keep-alive probes, from the front and back interface captures. It is
deliberately not alb-pcap's analysis: no HTTP parsing, no pairing, no classification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dpkt


@dataclass
class Conn:
    opener: str
    """ip:port of the SYN sender."""
    acceptor: str
    syn_ts: float
    fin: dict[str, float] = field(default_factory=dict)
    """First FIN time per sender (ip:port)."""
    rst: dict[str, float] = field(default_factory=dict)
    keepalive_probes: dict[str, int] = field(default_factory=dict)
    _next_seq: dict[str, int] = field(default_factory=dict)

    @property
    def flow(self) -> str:
        return f"{self.opener}->{self.acceptor}"

    def first_close(self) -> tuple[float, str, str] | None:
        """(ts, sender, "FIN"|"RST") of the first FIN or RST."""
        closes = [(ts, who, "FIN") for who, ts in self.fin.items()]
        closes += [(ts, who, "RST") for who, ts in self.rst.items()]
        return min(closes) if closes else None


def read_conns(path: Path) -> list[Conn]:
    """Connections in the capture that start with a SYN, in SYN order."""
    conns: dict[frozenset[str], Conn] = {}
    done: list[Conn] = []
    with open(path, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            segment = _tcp(buf)
            if segment is not None:
                _account(conns, done, float(ts), *segment)
    return sorted(done + list(conns.values()), key=lambda c: c.syn_ts)


def _tcp(buf: bytes) -> tuple[str, str, dpkt.tcp.TCP] | None:
    eth = dpkt.ethernet.Ethernet(buf)
    ip = eth.data
    if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
        return None
    tcp = ip.data
    src = f"{_ip(ip.src)}:{tcp.sport}"
    dst = f"{_ip(ip.dst)}:{tcp.dport}"
    return src, dst, tcp


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _account(conns: dict[frozenset[str], Conn], done: list[Conn], ts: float, src: str, dst: str,
             tcp: dpkt.tcp.TCP) -> None:
    key = frozenset((src, dst))
    if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK:
        if key in conns:
            done.append(conns.pop(key))  # the port pair is reused by a new connection
        conns[key] = Conn(opener=src, acceptor=dst, syn_ts=ts)
    conn = conns.get(key)
    if conn is None:
        return
    if _is_keepalive_probe(conn, src, tcp):
        conn.keepalive_probes[src] = conn.keepalive_probes.get(src, 0) + 1
    else:
        syn_fin = 1 if tcp.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0
        conn._next_seq[src] = (tcp.seq + len(tcp.data) + syn_fin) & 0xFFFFFFFF
    if tcp.flags & dpkt.tcp.TH_FIN:
        conn.fin.setdefault(src, ts)
    if tcp.flags & dpkt.tcp.TH_RST:
        conn.rst.setdefault(src, ts)


def _is_keepalive_probe(conn: Conn, src: str, tcp: dpkt.tcp.TCP) -> bool:
    # RFC 9293 §3.8.4: a probe is an ACK with seq one below the next sequence number, 0 or 1 byte.
    flags_only_ack = tcp.flags & ~dpkt.tcp.TH_PUSH == dpkt.tcp.TH_ACK
    expected = conn._next_seq.get(src)
    return flags_only_ack and len(tcp.data) <= 1 and (tcp.seq + 1) & 0xFFFFFFFF == expected
