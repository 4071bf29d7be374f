"""Summary and diagnosis -> rich renderables for the terminal. Prints nothing itself."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ..diagnosis.detect import Finding
from ..diagnosis.diagnose import DiagnosisResult
from ..diagnosis.selection import Selection
from ..model import ORIG, Connection
from ..wire.pipeline import Summary
from .records import wireshark_filter

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


def captures_view(summary: Summary) -> Group:
    """One entry per capture, as lines that wrap: a table would cut a long path at width 80."""
    lines: list[RenderableType] = [Text("Captures", style="bold")]
    for c in summary.captures:
        skipped = ", ".join(f"{n:,} {reason}" for reason, n in c.skipped.most_common())
        tunnels = ", ".join(f"{name}: {n:,}" for name, n in c.tunnels.most_common())
        lines.append(Padding(Text.assemble(
            (c.path, "bold"), f"  {c.format}, {c.frames:,} frames: {c.decoded:,} decoded, "
            f"{c.duplicates:,} mirror duplicates, {skipped or 'none'} skipped, {c.truncated:,} truncated"
            + (f"; tunnels {tunnels}" if tunnels else "")), (0, 0, 0, 2), expand=False))
    return Group(*lines)


def summary_view(summary: Summary) -> Group:
    parts: list[RenderableType] = [
        captures_view(summary),
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


# -- the answer first ---------------------------------------------------------------


def _span(summary: Summary) -> int:
    firsts = [c.first_ts_ns for c in summary.captures if c.first_ts_ns is not None]
    lasts = [c.last_ts_ns for c in summary.captures if c.last_ts_ns is not None]
    return max(lasts) - min(firsts) if firsts and lasts else 0


def _duration(ns: int) -> str:
    s = ns / SEC
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _what_clients_got(findings: tuple[Finding, ...]) -> str:
    """``3 x 502, 1 x 504, 1 x 460``: what the failing requests looked like from the client."""
    got: Counter[str] = Counter()
    for f in findings:
        if f.severity != "error":
            continue
        if f.kind == "client_abort":
            got["460"] += 1
        elif f.status is not None:
            got[str(f.status) + ("?" if f.status_inferred else "")] += 1
        elif f.kind in ("keepalive_race", "target_reset", "gateway_timeout"):
            got["no response"] += 1
    return ", ".join(f"{n} x {what}" for what, n in got.most_common())


def answer(summary: Summary, result: DiagnosisResult, selection: Selection) -> RenderableType:
    """One sentence with the answer, then the verdict: what a person on call reads first."""
    span = _duration(_span(summary))
    got = _what_clients_got(result.findings)
    cause = _cause(result)
    if got:
        head = f"{got} in {span}" + (f": {cause}" if cause else "")
    elif result.findings:
        head = f"No failed request in {span}, but {len(result.findings)} finding(s) to look at" + (
            f": {cause}" if cause else "")
    else:
        head = f"No 502, 504 or 460 cause found in {summary.exchanges:,} HTTP exchanges over {span}."
    parts: list[RenderableType] = [Text(head, style="bold")]
    if selection.active:
        note = f"Showing only {selection.describe()}."
        if not result.findings:
            note += f" Nothing matched in the capture ({_clock(_first(summary))} to {_clock(_last(summary))})."
        parts.append(Text(note, style="yellow"))
    if summary.anomalies.counts:
        seen = ", ".join(f"{name} {n:,}" for name, n in summary.anomalies.counts.most_common(4))
        more = len(summary.anomalies.counts) - 4
        parts.append(Text(f"Capture anomalies: {seen}" + (f" and {more} more" if more > 0 else "")
                          + " (-v lists them).", style="dim"))
    parts.extend(_not_read(summary))
    parts.append(_verdict(result))
    return Group(*parts)


LINK_CHATTER = frozenset({"arp", "icmp"})
"""Skipped frames no one misses; any other reason may be traffic the analysis never saw."""


def _not_read(summary: Summary) -> list[Text]:
    """Per capture, frames skipped for a reason that may hide HTTP (an unread link type, tunnel, UDP port)."""
    lines = []
    for c in summary.captures:
        reasons = [(r, n) for r, n in c.skipped.most_common() if r not in LINK_CHATTER]
        if reasons:
            what = ", ".join(f"{n:,} {r}" for r, n in reasons)
            lines.append(Text(f"Not read in {c.path}: {what} (of {c.frames:,} frames; -v has the counts).",
                              style="yellow"))
    return lines


def _first(summary: Summary) -> int:
    return min((c.first_ts_ns for c in summary.captures if c.first_ts_ns is not None), default=0)


def _last(summary: Summary) -> int:
    return max((c.last_ts_ns for c in summary.captures if c.last_ts_ns is not None), default=0)


def _verdict(result: DiagnosisResult) -> RenderableType:
    # padded, so a wrapped bullet continues under its text, not in column 0
    lines = [Padding(Text(f"• {line}"), (0, 0, 0, 2), expand=False) for line in result.verdict or ("nothing wrong seen",)]
    return Group(Text("\nVerdict", style="bold"), *lines)


def _cause(result: DiagnosisResult) -> str:
    """The verdict's first line cut to its cause: "target X closes idle connections after 5.0 s, the ALB keeps them longer"."""
    if not result.verdict:
        return ""
    cause = re.split(r": expect|; if |\. (?=[A-Z])", result.verdict[0])[0]
    return re.sub(r" \(\d+ (?:seen|races? seen)\)", "", cause)


# -- findings ---------------------------------------------------------------------------

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def findings_view(result: DiagnosisResult, max_timelines: int | None, log_report=None) -> Group:
    """The findings by kind, then timelines: every kind drawn at least once, errors first.

    ``max_timelines`` None draws every finding kept; ``log_report`` (``logs.join.LogReport``) adds each
    finding's log line to its timeline.
    """
    if not result.finding_counts:
        return Group(Text("\nNo findings.", style="green"))
    parts: list[RenderableType] = [_kinds(result)]
    by_kind: dict[str, list[Finding]] = {}
    for f in sorted(result.findings, key=lambda f: (_SEVERITY_ORDER.get(f.severity, 3), f.ts_ns)):
        by_kind.setdefault(f.kind, []).append(f)
    budget = max(max_timelines, len(by_kind)) if max_timelines is not None else None
    drawn: dict[str, int] = {}
    for kind, items in by_kind.items():  # one of each kind first
        drawn[kind] = 1 if budget is None or budget > 0 else 0
    left = None if budget is None else budget - sum(drawn.values())
    for kind, items in by_kind.items():
        more = len(items) - drawn[kind] if left is None else min(left, len(items) - drawn[kind])
        drawn[kind] += more
        if left is not None:
            left -= more
    for kind, items in by_kind.items():
        for finding in items[:drawn[kind]]:
            parts.append(timeline(finding, result, _log_note(finding, result, log_report)))
    notes = []
    counts = dict(result.finding_counts)
    for kind, items in by_kind.items():
        hidden = counts.get(kind, len(items)) - drawn[kind]
        if hidden > 0:
            notes.append(f"{hidden:,} more {kind} finding{'' if hidden == 1 else 's'} not drawn: "
                         f"--kind {kind} --all draws every one.")
    parts += [Text(note, style="dim") for note in notes]
    return Group(*parts)


def details_view(summary: Summary, result: DiagnosisResult) -> Group:
    """The statistics behind the answer (``-v``)."""
    return Group(summary_view(summary), _roles(result), _timers(result))


def _roles(result: DiagnosisResult) -> RenderableType:
    if not result.proxies:
        return Text("\nNo proxy found (give --proxy IP or --listener PORT if there is one).", style="dim")
    lines: list[RenderableType] = [Text("\nProxies", style="bold")]
    for p in result.proxies:
        ways = ", ".join(f"{how} ({n:,})" for how, n in p.paired_by)
        lines.append(Padding(Text.assemble(
            (p.name, "bold"), f" ({p.software or 'software not told'}): clients connect to "
            f"{', '.join(p.listeners) or '?'}; it opens target connections from {', '.join(p.back_addresses) or '?'} "
            f"to {', '.join(p.targets) or '?'}; {p.paired:,} requests paired" + (f" by {ways}" if ways else "")
            + f"; found by {p.found_by}"), (0, 0, 0, 2), expand=False))
    return Group(*lines)


def _timers(result: DiagnosisResult) -> RenderableType:
    table = Table(title="\nTimers seen on the wire", title_justify="left", show_edge=False)
    for col in ("timer", "whose", "seconds", "seen"):
        table.add_column(col, justify="right" if col in ("seconds", "seen") else "left", no_wrap=True)
    for t in result.timers:
        spread = "" if t.low == t.high else f" ({t.low:g}-{t.high:g})"
        table.add_row(t.name.replace("_", " "), t.subject, f"{t.seconds:g}{spread}", f"{t.observations}/{t.total}")
    return table if result.timers else Text("\nNo timer could be inferred from this capture.", style="dim")


def _kinds(result: DiagnosisResult) -> RenderableType:
    table = Table(title="\nFindings", title_justify="left", show_edge=False, min_width=30)
    table.add_column("kind", no_wrap=True)
    table.add_column("count", justify="right")
    for kind, n in result.finding_counts:
        table.add_row(kind, f"{n:,}")
    return table


@dataclass(frozen=True, slots=True)
class _Moment:
    ts_ns: int
    side: str
    frame: int | None
    text: str


def logs_view(log_report, result: DiagnosisResult) -> RenderableType:
    """Counts by category: error lines explained or not (and why), findings logged or not."""
    lines = [Text("\nProxy logs", style="bold")]
    errors = sum(1 for j in log_report.lines if j.record.error)
    formats = ", ".join(f"{name} {n:,}" for name, n in log_report.formats.most_common())
    lines.append(Text(f"  {log_report.parsed:,} line(s) parsed from {len(log_report.files)} file(s) ({formats or 'none'}); "
                      f"{errors:,} error line(s)" + (f"; {log_report.unparsed:,} line(s) in no known format, e.g. "
                      + ", ".join(f"{f}:{n}" for f, n in log_report.unparsed_examples[:3])
                      if log_report.unparsed else "")))
    for category, n in sorted(log_report.categories().items(), key=lambda kv: (kv[0] != "explained", kv[0])):
        if category == "explained":
            kinds = Counter(result.findings[j.finding].kind for j in log_report.lines
                            if j.record.error and j.finding is not None)
            detail = ", ".join(f"{k} {c}" for k, c in kinds.most_common())
            lines.append(Text(f"  • {n:,} explained by the wire ({detail})"))
        else:
            lines.append(Text(f"  • {n:,} {category}", style="yellow"))
    logged = len(log_report.finding_lines)
    if result.findings:
        lines.append(Text(f"  • findings: {logged:,} with their log line, {len(result.findings) - logged:,} not logged"))
    return Group(*lines)


def _log_note(finding: Finding, result: DiagnosisResult, log_report) -> Text | None:
    if log_report is None:
        return None
    n = next((i for i, f in enumerate(result.findings) if f is finding), None)
    joined = log_report.finding_lines.get(n) if n is not None else None
    if joined is None:
        return Text("log: not logged", style="dim")
    r = joined.record
    return Text(f"log: {r.describe()}  ({r.file}:{r.line})", style="magenta")


def timeline(finding: Finding, result: DiagnosisResult, log_note: Text | None = None) -> RenderableType:
    """Both connections side by side in time, as the seed article walks through a capture."""
    moments = _moments(finding, result)
    start = moments[0].ts_ns if moments else finding.ts_ns
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    table.add_column("t (s)", justify="right", style="dim")
    table.add_column("frame", justify="right", style="dim")
    table.add_column("client ⇄ proxy")
    table.add_column("proxy ⇄ target")
    previous = None
    for m in moments:
        if previous is not None and m.ts_ns - previous >= IDLE_LABEL_NS:
            idle = Text(f"⋮ {(m.ts_ns - previous) / SEC:.3f} s pass", style="dim italic")
            table.add_row("", "", idle, idle)
        cells = (m.text, "") if m.side == "client" else ("", m.text)
        table.add_row(f"{(m.ts_ns - start) / SEC:+.6f}", str(m.frame or ""), *cells)
        previous = m.ts_ns
    got = "" if finding.status is None else f" → client got {finding.status}" + (
        " (inferred)" if finding.status_inferred else "")
    if finding.status is None and finding.client_flow and finding.kind in ("keepalive_race", "target_reset",
                                                                             "gateway_timeout"):
        got = " → client got no response"
    number = next((n for n, f in enumerate(result.findings, 1) if f is finding), None)
    head = Text.assemble(f"\nF{number} " if number else "\n", (finding.kind, SEVERITY_STYLE.get(finding.severity, "")),
                         f"{got}  at {_clock(finding.ts_ns)}  ({finding.side} side)")
    flows = Text(f"client ⇄ proxy: {finding.client_flow or '(not captured)'}    "
                 f"proxy ⇄ target: {finding.target_flow or '(not captured)'}", style="dim")
    ids = _request_ids(finding, result)
    lines = [head, Text(finding.summary), flows]
    if ids:
        lines.append(Text("request id: " + ", ".join(f"{name}: {value}" for name, value in ids), style="dim"))
    lines.append(Text(f"wireshark: {wireshark_filter(finding.client_flow, finding.target_flow)}", style="dim"))
    if log_note is not None:
        lines.append(log_note)
    return Group(*lines, table, Text.assemble(("Fix: ", "bold"), finding.recommendation))


def _request_ids(finding: Finding, result: DiagnosisResult) -> list[tuple[str, str]]:
    """The ids to search the proxy's and the target's logs for (X-Amzn-Trace-Id's Root, X-Request-Id...)."""
    tx = _transaction(finding, result)
    seen: dict[str, str] = {}
    for leg in (tx.front, *tx.backs) if tx else ():
        for name, value in leg.exchange.request_ids if leg else ():
            seen.setdefault(value, name)
    return [(name, value) for value, name in seen.items()]


def _transaction(finding: Finding, result: DiagnosisResult):
    return next((t for t in result.transactions
                 if any(leg.exchange.key == finding.exchange for leg in (t.front, *t.backs) if leg)), None)


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
    tx = _transaction(finding, result)
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
    """ISO 8601 in UTC; a time no calendar date can hold (a damaged pcapng's) as epoch seconds."""
    try:
        return datetime.fromtimestamp(ts_ns / SEC, tz=timezone.utc).isoformat(timespec="microseconds")
    except (ValueError, OverflowError, OSError):
        return f"{ts_ns / SEC:.6f} s since the epoch (out of the calendar's range)"
