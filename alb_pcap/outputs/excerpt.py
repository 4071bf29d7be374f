"""The frames of chosen connections, read again from the captures, as one pcap for Wireshark.

Frames keep their original encapsulation (VXLAN, VLAN...) and their order in
time across the captures given together; mirror duplicates stay out, as they
were in the analysis. A connection is chosen by its flow, in either direction,
within its lifetime (a port reused later is another connection).
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass

import dpkt

from ..model import AnomalyLog, CaptureError, format_flow
from ..wire.capture import open_capture

SEC = 1_000_000_000
MARGIN_NS = SEC


@dataclass(frozen=True)
class Wanted:
    flow: str
    start_ns: int | None = None
    end_ns: int | None = None


def _chosen(path: str, wanted: dict[str, list[Wanted]]) -> set[int]:
    """Frame numbers of the wanted connections' segments."""
    frames = set()
    with open_capture(path, AnomalyLog()) as capture:
        for p in capture.packets():
            flow = format_flow(p.src, p.sport, p.dst, p.dport)
            spans = wanted.get(flow) or wanted.get("->".join(flow.split("->")[::-1]))
            if spans and any((w.start_ns is None or p.ts_ns >= w.start_ns - MARGIN_NS)
                             and (w.end_ns is None or p.ts_ns <= w.end_ns + MARGIN_NS) for w in spans):
                frames.add(p.frame)
    return frames


def _frames(path: str, chosen: set[int]):
    with open_capture(path, AnomalyLog()) as capture:
        for frame, ts_ns, linktype, data in capture.frames():
            if frame in chosen:
                yield ts_ns, linktype, data


def write_excerpt(paths: list[str], wanted: list[Wanted], out_path: str) -> int:
    """Write the wanted connections' frames to ``out_path``; returns how many. CaptureError if unusable."""
    if any(os.fspath(p) == "-" for p in paths):
        raise CaptureError("--write-pcap reads the captures again: give files, not standard input")
    by_flow: dict[str, list[Wanted]] = {}
    for w in wanted:
        by_flow.setdefault(w.flow, []).append(w)
    streams = [_frames(p, _chosen(p, by_flow)) for p in paths]
    written, linktype = 0, None
    with open(out_path, "wb") as out:
        writer = None
        for ts_ns, frame_linktype, data in heapq.merge(*streams, key=lambda r: r[0]):
            if writer is None:
                linktype = frame_linktype
                writer = dpkt.pcap.Writer(out, linktype=linktype, nano=True)
            if frame_linktype != linktype:
                continue  # a pcap holds one link type; the first one seen wins
            writer.writepkt(data, ts=ts_ns / SEC)
            written += 1
        if writer is None:
            dpkt.pcap.Writer(out, nano=True)  # an empty capture, still a valid file
    return written
