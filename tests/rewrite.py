"""Rewrite header bytes in a capture, length for length, so the TCP stream stays intact.

Turns a lab capture taken with forwarding headers into what the same proxy would have sent in its
default configuration (no X-Forwarded-*), or with its request id under another name.
"""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

import dpkt

FORWARDING = re.compile(rb"\r\nX-Forwarded-(?:For|Port|Proto): [^\r]*", re.IGNORECASE)
TRACE_HEADER = re.compile(rb"\r\nX-Amzn-Trace-Id: [^\r]*", re.IGNORECASE)
TRACE = re.compile(rb"\r\nX-Amzn-Trace-Id: ", re.IGNORECASE)


def _filler(match: re.Match) -> bytes:
    """A header of the same length the proxy might add anyway, whose value crosses nothing."""
    size = len(match.group(0)) - len(b"\r\nX-Pad: ")
    rng = random.Random(match.group(0))
    return b"\r\nX-Pad: " + bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(max(size, 0)))


def rewrite(src: Path, dst: Path, strip_forwarding: bool = True, strip_trace: bool = False,
            trace_name: bytes | None = None) -> Path:
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rb") as f, open(dst, "wb") as out:
        reader = dpkt.pcap.Reader(f)
        writer = dpkt.pcap.Writer(out, snaplen=reader.snaplen, linktype=reader.datalink())
        for ts, buf in reader:
            if strip_forwarding:
                buf = FORWARDING.sub(_filler, buf)
            if strip_trace:
                buf = TRACE_HEADER.sub(_filler, buf)
            if trace_name is not None:  # same length, so sequence numbers still hold
                trace_name = trace_name[:15].ljust(15, b"-")
                buf = TRACE.sub(b"\r\n" + trace_name + b": ", buf)
            writer.writepkt(buf, ts)
    return dst


def shift(src: Path, dst: Path, seconds: float) -> Path:
    """The same capture stamped by a clock ``seconds`` ahead (a second mirror session's host)."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rb") as f, open(dst, "wb") as out:
        reader = dpkt.pcap.Reader(f)
        writer = dpkt.pcap.Writer(out, snaplen=reader.snaplen, linktype=reader.datalink(), nano=True)
        for ts, buf in reader:
            writer.writepkt(buf, ts + seconds)
    return dst


def only_host(src: Path, dst: Path, host: str) -> Path:
    """The packets to or from ``host``: what a mirror session on that instance alone would hold."""
    import socket

    packed = socket.inet_aton(host)
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rb") as f, open(dst, "wb") as out:
        reader = dpkt.pcap.Reader(f)
        writer = dpkt.pcap.Writer(out, snaplen=reader.snaplen, linktype=reader.datalink())
        for ts, buf in reader:
            if packed in buf[:80]:  # an IPv4 header of an untunnelled Ethernet frame holds both addresses
                writer.writepkt(buf, ts)
    return dst
