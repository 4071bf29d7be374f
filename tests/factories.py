"""Builders for stage-level tests: TCP conversations as model.Packet tuples."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from alb_pcap.model import TH_ACK, TH_FIN, TH_PUSH, TH_RST, TH_SYN, Packet

CLIENT = ipaddress.ip_address("198.18.0.10").packed
SERVER = ipaddress.ip_address("198.18.3.11").packed
SEC = 1_000_000_000


@dataclass
class Conversation:
    """A client and a server talking; every call appends the packet it sends."""

    cport: int = 40000
    sport: int = 80
    cisn: int = 1000
    sisn: int = 5000
    t: int = 1_700_000_000 * SEC
    packets: list[Packet] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seq = {0: self.cisn, 1: self.sisn}

    def _emit(self, side: int, flags: int, payload: bytes = b"", seq: int | None = None,
              dt: float = 0.001, win: int = 65535, missing: int = 0) -> Packet:
        self.t += int(dt * SEC)
        src, sp, dst, dp = (CLIENT, self.cport, SERVER, self.sport) if side == 0 else (
            SERVER, self.sport, CLIENT, self.cport)
        s = self.seq[side] if seq is None else seq
        ack = self.seq[1 - side] if flags & TH_ACK else 0
        pkt = Packet(len(self.packets) + 1, self.t, src, dst, sp, dp, s % 2**32, ack % 2**32,
                     flags, win, payload, missing, None)
        self.packets.append(pkt)
        if seq is None:
            self.seq[side] += len(payload) + missing + (1 if flags & (TH_SYN | TH_FIN) else 0)
        return pkt

    def handshake(self) -> "Conversation":
        self._emit(0, TH_SYN)
        self._emit(1, TH_SYN | TH_ACK)
        self._emit(0, TH_ACK)
        return self

    def send(self, side: int, data: bytes, mss: int = 1460, dt: float = 0.001) -> list[Packet]:
        out = []
        for i in range(0, len(data), mss):
            out.append(self._emit(side, TH_ACK | TH_PUSH, data[i:i + mss], dt=dt))
        return out

    def ack(self, side: int, dt: float = 0.001) -> Packet:
        return self._emit(side, TH_ACK, dt=dt)

    def fin(self, side: int, dt: float = 0.001) -> Packet:
        return self._emit(side, TH_FIN | TH_ACK, dt=dt)

    def rst(self, side: int, dt: float = 0.001) -> Packet:
        return self._emit(side, TH_RST | TH_ACK, dt=dt)

    def probe(self, side: int, dt: float = 1.0) -> Packet:
        """A TCP keep-alive probe: no data, seq one below the next byte."""
        return self._emit(side, TH_ACK, seq=self.seq[side] - 1, dt=dt)

    def close_both(self) -> "Conversation":
        self.fin(0)
        self.fin(1)
        self.ack(0)
        return self
