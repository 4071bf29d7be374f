"""Summary and diagnosis -> rich renderables for the terminal. Prints nothing itself."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .detect import Finding
from .diagnose import DiagnosisResult
from .model import ORIG, Connection
from .pipeline import Summary

SEC = 1_000_000_000
IDLE_LABEL_NS = SEC // 2  # a pause this long between two moments gets its own line
SYN_LOOKBACK_NS = 2 * SEC  # show a connection's SYN when it opened this soon before the story starts
_CONNECTION_WORDS = re.compile(r" on the (client|target) connection( \S+->\S+)?")
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _counter_table(title: str, label: str, counts: dict) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, min_width=30)
    table.add_column(label)
    table.add_column("count", justify="right")
    for key, n in counts.items():
        table.add_row(str(key), str(n))
    return table


def captures_table(summary: Summary) -> Table:
    table = Table(title="Captures", title_justify="left", show_edge=False)
    for col in ("file", "format", "frames", "decoded", "duplicate", "skipped", "truncated", "tunnels"):
        table.add_column(col, justify="right" if col in ("frames", "decoded", "duplicate", "truncated") else "left",
                         overflow="fold")
    for c in summary.captures:
        skipped = ", ".join(f"{n} {reason}" for reason, n in c.skipped.most_common()) or "0"
        tunnels = ", ".join(f"{name}: {n}" for name, n in c.tunnels.most_common()) or "none"
        table.add_row(c.path, c.format, str(c.frames), str(c.decoded), str(c.duplicates),
                      skipped, str(c.truncated), tunnels)
    return table


def summary_view(summary: Summary) -> Group:
    parts: list[RenderableType] = [
        captures_table(summary),
        Text.from_markup(
            f"\n[bold]{summary.connections}[/] TCP connections, [bold]{summary.exchanges}[/] HTTP "
            f"exchanges, {summary.keepalive_probes} TCP keep-alive probes"
            + (f", {summary.cross_capture_duplicates} segments seen in two captures (counted once)"
               if summary.cross_capture_duplicates else "")
            + "".join(f"; the clock of {c.path} was {off / 1e6:+.1f} ms off the first capture's (corrected)"
                      for c, off in zip(summary.captures, summary.clock_offsets_ns) if off) + "\n"),
        _counter_table("Connections (Zeek conn_state)", "state", dict(summary.conn_states.most_common())),
        _counter_table("Exchanges by status", "status", dict(summary.statuses.most_common())),
        _counter_table("Exchanges by ending", "ended", dict(summary.endings.most_common())),
    ]
    if summary.anomalies.counts:
        parts.append(_counter_table("Anomalies", "name", dict(summary.anomalies.counts.most_common())))
    return Group(*parts)


# -- diagnosis ---------------------------------------------------------------------


def diagnosis_view(result: DiagnosisResult, findings: tuple[Finding, ...], max_timelines: int) -> Group:
    """Roles, timers and verdict, findings by kind, then a timeline per failing finding."""
    parts: list[RenderableType] = [_roles(result), _timers(result), _verdict(result), _kinds(result)]
    shown = [f for f in findings if f.severity == "error"] or list(findings)
    for finding in shown[:max_timelines]:
        parts.append(timeline(finding, result))
    if len(shown) > max_timelines:
        parts.append(Text(f"\n{len(shown) - max_timelines} more finding(s) not drawn: narrow with "
                          "--kind, --flow or --around, or raise --max-timelines.", style="dim"))
    return Group(*parts)


def _roles(result: DiagnosisResult) -> RenderableType:
    if not result.proxies:
        return Text("\nNo proxy found (give --proxy IP or --listener PORT if there is one).", style="dim")
    table = Table(title="\nProxies", title_justify="left", show_edge=False)
    for col in ("proxy", "clients connect to", "opens target connections from", "targets", "paired", "found by"):
        table.add_column(col)
    for p in result.proxies:
        table.add_row(p.name, ", ".join(p.listeners), ", ".join(p.back_addresses), ", ".join(p.targets),
                      str(p.paired), p.found_by)
    return table


def _timers(result: DiagnosisResult) -> RenderableType:
    table = Table(title="\nTimers seen on the wire", title_justify="left", show_edge=False)
    for col in ("timer", "whose", "seconds", "seen"):
        table.add_column(col, justify="right" if col in ("seconds", "seen") else "left")
    for t in result.timers:
        spread = "" if t.low == t.high else f" ({t.low:g}-{t.high:g})"
        table.add_row(t.name.replace("_", " "), t.subject, f"{t.seconds:g}{spread}", f"{t.observations}/{t.total}")
    return table if result.timers else Text("\nNo timer could be inferred from this capture.", style="dim")


def _verdict(result: DiagnosisResult) -> RenderableType:
    lines = [Text("\nVerdict", style="bold")]
    lines += [Text(f"  • {line}") for line in result.verdict] or [Text("  • nothing wrong seen")]
    return Group(*lines)


def _kinds(result: DiagnosisResult) -> RenderableType:
    if not result.finding_counts:
        return Text("\nNo findings.", style="green")
    return _counter_table("\nFindings", "kind", dict(result.finding_counts))


@dataclass(frozen=True, slots=True)
class _Moment:
    ts_ns: int
    side: str
    frame: int | None
    text: str


def timeline(finding: Finding, result: DiagnosisResult) -> RenderableType:
    """Both connections side by side in time, as the seed article walks through a capture."""
    moments = _moments(finding, result)
    start = moments[0].ts_ns if moments else finding.ts_ns
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    table.add_column("t (s)", justify="right", style="dim")
    table.add_column("frame", justify="right", style="dim")
    table.add_column("client ⇄ proxy", ratio=1)
    table.add_column("proxy ⇄ target", ratio=1)
    previous = None
    for m in moments:
        if previous is not None and m.ts_ns - previous >= IDLE_LABEL_NS:
            idle = Text(f"⋮ {(m.ts_ns - previous) / SEC:.3f} s pass", style="dim italic")
            table.add_row("", "", idle, idle)
        cells = (m.text, "") if m.side == "client" else ("", m.text)
        table.add_row(f"{(m.ts_ns - start) / SEC:+.6f}", str(m.frame or ""), *cells)
        previous = m.ts_ns
    status = f" → client got {finding.status}" if finding.status is not None else ""
    head = Text.assemble(("\n" + finding.kind, SEVERITY_STYLE.get(finding.severity, "")),
                         f"{status}  at {_clock(finding.ts_ns)}  ({finding.side} side)")
    flows = Text(f"client ⇄ proxy: {finding.client_flow or '(not captured)'}    "
                 f"proxy ⇄ target: {finding.target_flow or '(not captured)'}", style="dim")
    return Group(head, Text(finding.summary), flows, table,
                 Text.assemble(("Fix: ", "bold"), finding.recommendation))


def _moments(finding: Finding, result: DiagnosisResult) -> list[_Moment]:
    moments = {(e.frame, e.ts_ns): _Moment(e.ts_ns, e.side or finding.side, e.frame, _CONNECTION_WORDS.sub("", e.what))
               for e in finding.evidence}
    for m in _idle_starts(finding, result):
        moments.setdefault((m.frame, m.ts_ns), m)
    if moments:
        lo = min(m.ts_ns for m in moments.values())
        hi = max(m.ts_ns for m in moments.values())
    else:
        lo = hi = finding.ts_ns
    for side, flow in (("client", finding.client_flow), ("target", finding.target_flow)):
        conn = result.connection(flow)
        if conn is None:
            continue
        for m in _connection_moments(conn, side):
            in_story = lo <= m.ts_ns <= hi or (m.text.startswith("SYN") and lo - SYN_LOOKBACK_NS <= m.ts_ns <= hi)
            if in_story and not any(o.frame == m.frame and m.frame for o in moments.values()):
                moments.setdefault((m.frame, m.ts_ns), m)
    return sorted(moments.values(), key=lambda m: (m.ts_ns, m.frame or 0))


def _idle_starts(finding: Finding, result: DiagnosisResult) -> list[_Moment]:
    """Where the silence before a cut request began: the article's "idle for 5 s"."""
    tx = next((t for t in result.transactions
               if any(leg.exchange.key == finding.exchange for leg in (t.front, *t.backs) if leg)), None)
    if tx is None:
        return []
    out = []
    for leg, side in [(tx.front, "client")] + [(b, "target") for b in tx.backs]:
        if leg and leg.cut and leg.cut.idle_before_ns >= IDLE_LABEL_NS:
            out.append(_Moment(leg.exchange.start_ns - leg.cut.idle_before_ns, side, None,
                               "last HTTP data on this connection, then idle"))
    return out


def _connection_moments(conn: Connection, side: str) -> list[_Moment]:
    opener, acceptor = ("client", "proxy") if side == "client" else ("proxy", "target")
    who = {ORIG: opener, 1: acceptor}
    out = []
    if conn.syn_seen:
        out.append(_Moment(conn.start_ns, side, conn.syn_frame, f"SYN from the {opener} (connection opens)"))
    out += [_Moment(p.ts_ns, side, p.frame, f"TCP keep-alive probe from the {who[p.direction]}")
            for p in conn.probes]
    out += [_Moment(f.ts_ns, side, f.frame, f"FIN from the {who[f.by]}") for f in conn.fins]
    if conn.rst is not None:
        out.append(_Moment(conn.rst.ts_ns, side, conn.rst.frame, f"RST from the {who[conn.rst.by]}"))
    return out


def _clock(ts_ns: int) -> str:
    """UTC wall-clock time; a time no calendar date can hold (a damaged pcapng's) as epoch seconds."""
    try:
        return datetime.fromtimestamp(ts_ns / SEC, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    except (ValueError, OverflowError, OSError):
        return f"{ts_ns / SEC:.6f} s since the epoch (out of the calendar's range)"
