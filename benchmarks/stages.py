#!/usr/bin/env python3
"""Time alb-pcap's stages on one capture, each run adding one stage to the last.

    python3 benchmarks/stages.py CAPTURE [--only read,tcp,http,refs,diagnosis,json]

Prints, per run: CPU seconds (process time: the machine may be shared), packets/s, and the cost of the stage it adds (difference with the run
before it) in µs per packet and per exchange. One process per run would be fairer to the
allocator; the runs here share one, in the order given (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alb_pcap.diagnosis.diagnose import Diagnosis  # noqa: E402
from alb_pcap.diagnosis.refs import ref_of  # noqa: E402
from alb_pcap.model import AnomalyLog  # noqa: E402
from alb_pcap.outputs import export  # noqa: E402
from alb_pcap.outputs.records import result_dict  # noqa: E402
from alb_pcap.wire import pipeline  # noqa: E402
from alb_pcap.wire.capture import open_capture  # noqa: E402
from alb_pcap.wire.tcp import TcpTracker  # noqa: E402


class _Null:
    def on_open(self, *a): pass
    def on_data(self, *a): pass
    def on_gap(self, *a): pass
    def on_end(self, *a): pass
    def on_close(self, *a): pass


class _Refs:
    def connection(self, conn): pass
    def exchange(self, ex, flow): ref_of(ex, flow)


def read(path):
    c = open_capture(path, AnomalyLog())
    n = sum(1 for _ in c.packets())
    c.close()
    return n


def tcp(path):
    c = open_capture(path, AnomalyLog())
    t = TcpTracker(_Null(), AnomalyLog())
    for p in c.packets():
        t.feed(p)
    t.finish()
    c.close()


def http(path):
    return pipeline.analyze([path]).exchanges


def refs(path):
    pipeline.analyze([path], [_Refs()])


def diagnosis(path):
    d = Diagnosis()
    pipeline.analyze([path], [d])
    result_dict(d.finish())


def json_(path):
    d, j = Diagnosis(), export.JsonExport()
    summary = pipeline.analyze([path], [d, j])
    j.finish(summary, io.StringIO(), result_dict(d.finish()))


RUNS = {"read": read, "tcp": tcp, "http": http, "refs": refs, "diagnosis": diagnosis, "json": json_}
ADDS = {"read": "capture decoding", "tcp": "TCP", "http": "HTTP", "refs": "ref_of (ExchangeRef)",
        "diagnosis": "pairing + detection", "json": "JSON export"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture")
    ap.add_argument("--only", default=",".join(RUNS))
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    packets = read(args.capture)
    exchanges = http(args.capture)
    print(f"{args.capture}: {packets} packets, {exchanges} exchanges")
    print(f"{'run':10} {'seconds':>8} {'packets/s':>10}  {'stage added':22} {'µs/packet':>9} {'µs/exchange':>11}")
    before = 0.0
    for name in args.only.split(","):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.process_time()
            RUNS[name](args.capture)
            best = min(best, time.process_time() - t0)
        stage = best - before
        print(f"{name:10} {best:8.2f} {packets / best:10.0f}  {ADDS[name]:22} "
              f"{stage / packets * 1e6:9.2f} {stage / max(exchanges, 1) * 1e6:11.2f}")
        times[name] = best
        before = best


times: dict[str, float] = {}

if __name__ == "__main__":
    main()
