"""Records -> the JSON document of ``analyze --json`` (schema documented in README.md).

Connections and exchanges are written to spool files as they arrive and the
document is assembled at the end, so a capture of any length exports in
constant memory.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import IO

from ..model import ORIG, Anomaly, CaptureStats, Close, Connection, Exchange
from ..wire.pipeline import Summary

SCHEMA = "alb-pcap/1"
_compact = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(.., separators=..) builds one a call
_SIDE = {ORIG: "orig", 1: "resp"}


def seconds(ts_ns: int | None) -> float | None:
    return None if ts_ns is None else round(ts_ns / 1e9, 6)


def close_dict(close: Close | None) -> dict | None:
    if close is None:
        return None
    return {"by": _SIDE[close.by], "how": close.how, "ts": seconds(close.ts_ns),
            "frame": close.frame, "state": close.state}


def connection_dict(conn: Connection) -> dict:
    return {
        "id": conn.id,
        "flow": conn.flow,
        "conn_state": conn.conn_state,
        "history": conn.history,
        "start": seconds(conn.start_ns),
        "end": seconds(conn.end_ns),
        "duration": round((conn.end_ns - conn.start_ns) / 1e9, 6),
        "syn_seen": conn.syn_seen,
        "syn_frame": conn.syn_frame,
        "closed_by": None if conn.first_close is None else _SIDE[conn.first_close.by],
        "close": close_dict(conn.first_close),
        "fins": [close_dict(f) for f in conn.fins],
        "rst": close_dict(conn.rst),
        "orig_bytes": conn.orig_bytes,
        "resp_bytes": conn.resp_bytes,
        "missed_bytes": conn.missed_bytes,
        "orig_pkts": conn.orig_pkts,
        "resp_pkts": conn.resp_pkts,
        "keepalive_probes": {
            "orig": conn.probe_counts[0],
            "resp": conn.probe_counts[1],
            "first": [{"by": _SIDE[p.direction], "ts": seconds(p.ts_ns), "frame": p.frame}
                      for p in conn.probes],
        },
        "zero_windows": {"orig": conn.zero_windows[0], "resp": conn.zero_windows[1]},
        "retransmits": {"orig": conn.retransmits[0], "resp": conn.retransmits[1]},
        "gaps": {"orig": conn.gaps[0], "resp": conn.gaps[1]},
        "vni": conn.vni,
    }


def exchange_dict(ex: Exchange, flow: str) -> dict:
    return {
        "flow": flow,
        "conn_id": ex.conn_id,
        "index": ex.index,
        "method": ex.method,
        "uri": ex.uri,
        "version": ex.version,
        "host": ex.host,
        "status": ex.status,
        "reason": ex.reason,
        "interim": ex.interim,  # tuples are JSON arrays: no copies
        "request_body_len": ex.request_body_len,
        "response_body_len": ex.response_body_len,
        "request_start": seconds(ex.request_start_ns),
        "request_end": seconds(ex.request_end_ns),
        "response_start": seconds(ex.response_start_ns),
        "response_end": seconds(ex.response_end_ns),
        "request_frame": ex.request_frame,
        "response_frame": ex.response_frame,
        "ended": ex.ended,
        "request_headers": ex.request_headers,
        "response_headers": ex.response_headers,
    }


def capture_dict(stats: CaptureStats) -> dict:
    return {
        "path": stats.path,
        "format": stats.format,
        "frames": stats.frames,
        "counts": {"decoded": stats.decoded, "duplicate": stats.duplicates,
                   "skipped": dict(sorted(stats.skipped.items()))},
        "truncated": stats.truncated,
        "link_types": dict(stats.link_types),
        "tunnels": dict(stats.tunnels),
        "first_ts": seconds(stats.first_ts_ns),
        "last_ts": seconds(stats.last_ts_ns),
    }


def anomaly_dict(a: Anomaly) -> dict:
    return {"name": a.name, "frame": a.frame, "ts": seconds(a.ts_ns), "flow": a.flow, "detail": a.detail}


class JsonExport:
    """A Sink that spools records and writes the whole document in ``finish``."""

    def __init__(self, detail: str = "all") -> None:
        """``detail``: "all" spools every connection and exchange; "findings" keeps the document to the
        diagnosis and the counts (the sink then need not be given to the pipeline at all)."""
        self.detail = detail
        names = ("connections", "exchanges") if detail == "all" else ()
        self._spools = {name: tempfile.TemporaryFile("w+") for name in names}
        self._counts = dict.fromkeys(names, 0)

    def connection(self, conn: Connection) -> None:
        self._spool("connections", connection_dict(conn))

    def exchange(self, exchange: Exchange, flow: str) -> None:
        self._spool("exchanges", exchange_dict(exchange, flow))

    def _spool(self, name: str, record: dict) -> None:
        spool = self._spools[name]
        if self._counts[name]:
            spool.write(",\n")
        spool.write(_compact(record))
        self._counts[name] += 1

    def finish(self, summary: Summary, out: IO[str], diagnosis: dict | None = None) -> None:
        """``diagnosis``: ``diagnose.result_dict`` of the run (findings, proxies, timers...)."""
        head = {
            "schema": SCHEMA,
            "detail": self.detail,
            "captures": [dict(capture_dict(c), clock_offset=round(off / 1e9, 6))
                         for c, off in zip(summary.captures, summary.clock_offsets_ns or [0] * len(summary.captures))],
            "summary": {
                "connections": summary.connections,
                "conn_states": dict(summary.conn_states.most_common()),
                "exchanges": summary.exchanges,
                "statuses": dict(summary.statuses.most_common()),
                "exchange_endings": dict(summary.endings.most_common()),
                "keepalive_probes": summary.keepalive_probes,
                "cross_capture_duplicates": summary.cross_capture_duplicates,
                "expired_attempts": summary.expired_attempts,
                "expired_connections": summary.expired_connections,
                "anomalies": dict(summary.anomalies.counts.most_common()),
            },
            "anomalies": [anomaly_dict(a) for a in summary.anomalies.kept],
            "findings": [],
        }
        head.update(diagnosis or {})
        text = json.dumps(head, indent=1)
        out.write(text[:-2])  # reopen the object to append the spooled arrays
        for name, spool in self._spools.items():
            out.write(f',\n "{name}": [\n')
            spool.seek(0)
            shutil.copyfileobj(spool, out)
            out.write("\n ]")
            spool.close()
        out.write("\n}\n")
