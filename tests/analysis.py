"""Run the real pipeline over capture files and keep every record (tests only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from alb_pcap.model import Connection, Exchange
from alb_pcap.wire import pipeline


@dataclass
class Collected:
    connections: list[Connection] = field(default_factory=list)
    exchanges: list[tuple[Exchange, str]] = field(default_factory=list)

    def connection(self, conn: Connection) -> None:
        self.connections.append(conn)

    def exchange(self, exchange: Exchange, flow: str) -> None:
        self.exchanges.append((exchange, flow))


def run(*paths) -> tuple[pipeline.Summary, Collected]:
    sink = Collected()
    summary = pipeline.analyze([str(p) for p in paths], [sink])
    return summary, sink
