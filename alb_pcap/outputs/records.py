"""The diagnosis as plain records: what the JSON, NDJSON and CSV outputs are made of.

Each finding gets an ``id`` (``F1``, ``F2``... in time order), the ``transaction``
it is about (``T<conn>.<n>``: the connection and exchange number of its client
side, else of its target side), the request id(s) to search the proxy's logs for,
its method and URI, and a Wireshark display filter that shows its connections.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from typing import IO

from ..diagnosis.connect import address_counts_dict, flood_counts_dict
from ..diagnosis.correlate import Transaction
from ..diagnosis.detect import Finding, Timer
from ..diagnosis.diagnose import DiagnosisResult
from ..diagnosis.refs import SEC, ExchangeRef, host_of, port_of, split_flow
from ..diagnosis.roles import Proxy


def _sec(ns: int | None) -> float | None:
    return None if ns is None else round(ns / SEC, 6)


def transaction_id(tx: Transaction) -> str:
    ref = (tx.front or tx.backs[0]).exchange
    return f"T{ref.conn_id}.{ref.index}"


def wireshark_filter(*flows: str | None) -> str:
    """``(ip.addr==a && tcp.port==1 && ip.addr==b && tcp.port==2) || ...``: a flow's frames, either way."""
    parts = []
    for flow in filter(None, flows):
        clauses = []
        for endpoint in split_flow(flow):
            host = host_of(endpoint)
            field = "ipv6.addr" if ":" in host else "ip.addr"
            clauses += [f"{field}=={host}", f"tcp.port=={port_of(endpoint)}"]
        parts.append("(" + " && ".join(clauses) + ")")
    return " || ".join(parts)


class Index:
    """Findings' transactions, looked up once per result."""

    def __init__(self, result: DiagnosisResult) -> None:
        self.by_key: dict[tuple[int, int], Transaction] = {}
        for tx in result.transactions:
            for leg in (tx.front, *tx.backs):
                if leg is not None:
                    self.by_key[leg.exchange.key] = tx

    def transaction(self, f: Finding) -> Transaction | None:
        return self.by_key.get(f.exchange) if f.exchange else None


def finding_dict(f: Finding, number: int = 0, index: Index | None = None) -> dict:
    tx = index.transaction(f) if index else None
    about = _exchange(tx, f)
    ids = _request_ids(tx)
    return {
        "id": f"F{number}" if number else None, "kind": f.kind, "severity": f.severity, "ts": _sec(f.ts_ns),
        "side": f.side, "client_flow": f.client_flow, "target_flow": f.target_flow, "status": f.status,
        "status_inferred": f.status_inferred,
        "transaction": transaction_id(tx) if tx else None,
        "request_id": ids[0][1] if ids else None, "request_ids": [{"header": n, "value": v} for n, v in ids],
        "method": about.method if about else None, "uri": about.uri if about else None,
        "wireshark_filter": wireshark_filter(f.client_flow, f.target_flow),
        "summary": f.summary,
        "evidence": [{"frame": e.frame, "ts": _sec(e.ts_ns), "side": e.side, "what": e.what} for e in f.evidence],
        "recommendation": f.recommendation,
    }


def _exchange(tx: Transaction | None, f: Finding) -> ExchangeRef | None:
    if tx is None:
        return None
    legs = [leg.exchange for leg in (tx.front, *tx.backs) if leg is not None]
    return next((ref for ref in legs if ref.key == f.exchange), legs[0])


def _request_ids(tx: Transaction | None) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for leg in (tx.front, *tx.backs) if tx else ():
        for name, value in leg.exchange.request_ids if leg else ():
            seen.setdefault(value, name)
    return [(name, value) for value, name in seen.items()]


def exchange_ref_dict(ref: ExchangeRef) -> dict:
    return {"flow": ref.flow, "index": ref.index, "method": ref.method, "uri": ref.uri, "status": ref.status,
            "ended": ref.ended, "request_start": _sec(ref.request_start_ns), "request_frame": ref.request_frame,
            "response_start": _sec(ref.response_start_ns), "response_frame": ref.response_frame}


def transaction_dict(tx: Transaction) -> dict:
    def leg(leg_) -> dict:
        d = exchange_ref_dict(leg_.exchange)
        cut = leg_.cut
        d["cut"] = None if cut is None else {"by": cut.by, "how": cut.close.how, "ts": _sec(cut.close.ts_ns),
                                             "frame": cut.close.frame, "idle_before": _sec(cut.idle_before_ns)}
        return d

    return {"id": transaction_id(tx), "client": leg(tx.front) if tx.front else None,
            "targets": [leg(b) for b in tx.backs], "paired_by": tx.paired_by,
            "request_ids": [{"header": n, "value": v} for n, v in _request_ids(tx)]}


def timer_dict(t: Timer) -> dict:
    return {"name": t.name, "subject": t.subject, "seconds": t.seconds, "observations": t.observations,
            "total": t.total, "low": t.low, "high": t.high}


def proxy_dict(p: Proxy) -> dict:
    return {"name": p.name, "software": p.software, "listeners": list(p.listeners),
            "back_addresses": list(p.back_addresses), "targets": list(p.targets), "paired": p.paired,
            "found_by": p.found_by, "paired_by": dict(p.paired_by)}


def finding_dicts(r: DiagnosisResult) -> list[dict]:
    index = Index(r)
    return [finding_dict(f, n, index) for n, f in enumerate(r.findings, 1)]


def _not_listed(r: DiagnosisResult) -> dict[str, int]:
    """Per kind, findings counted but not listed (beyond 200 of a kind; ``--all`` lists every one)."""
    listed: dict[str, int] = {}
    for f in r.findings:
        listed[f.kind] = listed.get(f.kind, 0) + 1
    return {kind: n - listed.get(kind, 0) for kind, n in r.finding_counts if n > listed.get(kind, 0)}


def result_dict(r: DiagnosisResult) -> dict:
    """The diagnosis part of ``analyze --json``: merge into the document's top level."""
    c = r.counts
    return {
        "proxies": [proxy_dict(p) for p in r.proxies],
        "timers": [timer_dict(t) for t in r.timers],
        "verdict": list(r.verdict),
        "findings": finding_dicts(r),
        "finding_counts": dict(r.finding_counts),
        "findings_not_listed": _not_listed(r),
        "transactions": [transaction_dict(tx) for tx in r.transactions],
        "connect_failures": [address_counts_dict(a) for a in r.connect_failures],
        "syn_floods": [flood_counts_dict(f) for f in r.syn_floods],
        "transaction_counts": {"total": c.transactions, "paired": c.paired, "kept": len(r.transactions),
                               "healthy_not_kept": c.healthy_dropped, "unpaired_client": c.unpaired_front,
                               "unpaired_target": c.unpaired_back, "retried": c.retried,
                               "unanswered_not_kept": c.unanswered_not_kept},
    }


CSV_COLUMNS = ("id", "kind", "severity", "time", "side", "status", "status_inferred", "client_flow",
               "target_flow", "transaction", "request_id", "method", "uri", "summary", "recommendation",
               "wireshark_filter", "log")


def write_ndjson(r: DiagnosisResult, out: IO[str], logs: list[dict | None] | None = None) -> None:
    """One finding a line, for jq and log pipelines. ``logs``: per finding, its proxy log line (``--log``)."""
    for d in _with_logs(finding_dicts(r), logs):
        out.write(json.dumps(d, separators=(",", ":")) + "\n")


def write_csv(r: DiagnosisResult, out: IO[str], logs: list[dict | None] | None = None) -> None:
    """One finding a row; times in ISO 8601 (UTC) for spreadsheets; ``log`` empty unless logs were given."""
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for d in _with_logs(finding_dicts(r), logs):
        row = dict(d, time=_iso(d["ts"]))
        if logs is not None:
            row["log"] = log_text(d["log"])
        writer.writerow(row)


def _with_logs(dicts: list[dict], logs: list[dict | None] | None) -> list[dict]:
    if logs is not None:
        for d, log in zip(dicts, logs):
            d["log"] = log
    return dicts


def log_text(log: dict | None) -> str:
    """``access.log:3 502 SH--`` or ``not logged``: a finding's log line in one cell."""
    return "not logged" if log is None else f"{log['file']}:{log['line']} {log['says']}"


def _iso(ts: float | None) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds") if ts is not None else ""
    except (ValueError, OverflowError, OSError):
        return str(ts)
