"""The HTML report (``analyze --html FILE``): one self-contained page, built as a string.

Nothing here reads or writes files: ``build_html`` returns the page and the CLI writes it.
The page loads nothing (no network, no CDN, no fonts): CSS, JavaScript and SVG are inline.
Everything that comes from the capture (flows, methods, URIs, statuses, the findings'
sentences, file names) goes through ``html.escape``.

Sections, the answer first:

* the summary: 502/504/460-type counts, the verdict, the proxies and their software;
* the timers as a figure: each quiet connection's idle time before it was closed, one row
  per closer (proxy, target, client), against the inferred timeouts as vertical lines, so a
  target keep-alive timeout shorter than the proxy's idle timeout shows as a shaded band
  with the races in it;
* the findings as a table sorted by a click on a header and filtered by text and kind;
* a ladder diagram per failing finding (client | proxy | target, time downward), drawn
  from the same data as the terminal timeline: the findings' evidence, the transaction's
  legs and cuts, and the kept connections' SYN/FIN/RST/keep-alive probes.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from .. import __version__
from ..diagnosis.correlate import Leg, Transaction
from ..diagnosis.detect import Finding, Timer
from ..diagnosis.diagnose import DiagnosisResult
from ..model import ORIG, Connection
from .records import log_text

SEC = 1_000_000_000
GAP_NS = SEC // 2
"""A pause this long between two moments of a ladder is compressed into a labelled gap."""
SYN_LOOKBACK_NS = 2 * SEC
MAX_LADDERS = 50
MAX_LABEL = 64

# what the client sees for each kind: the load balancer's status
STATUS_TYPE = {
    "keepalive_race": "502", "target_reset": "502", "target_connect_refused": "502",
    "gateway_timeout": "504", "target_connect_timeout": "504",
    "client_abort": "460",
}
IDLE_TIMERS = {
    "proxy_idle_timeout": ("proxy", "proxy idle timeout (client side)"),
    "proxy_target_idle_timeout": ("proxy", "proxy idle timeout (target side)"),
    "target_keepalive_timeout": ("target", "target keep-alive timeout"),
    "client_keepalive_duration": ("proxy", "client keep-alive duration (upper bound)"),
}
CLOSER_COLOUR = {"proxy": "#2563eb", "target": "#ea580c", "client": "#6b7280"}


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _flow(flow: str | None, missing: str = "") -> str:
    """A flow, escaped, that may wrap only after its arrow."""
    return f"<code>{esc(flow)}</code>".replace("-&gt;", "-&gt;<wbr>") if flow else esc(missing)


def _clip(text: str, n: int = MAX_LABEL) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _clock(ts_ns: int) -> str:
    try:
        return datetime.fromtimestamp(ts_ns / SEC, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    except (ValueError, OverflowError, OSError):
        return f"{ts_ns / SEC:.6f} (epoch s)"


def _dur(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms" if seconds < 0.1 else f"{seconds:.3f} s"


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g}"


# -- the page ----------------------------------------------------------------------------------


def build_html(result: DiagnosisResult, summary=None, *, title: str = "alb-pcap report",
               max_ladders: int = MAX_LADDERS, logs: list[dict | None] | None = None) -> str:
    """The whole report as one HTML document. ``summary`` is the pipeline's ``Summary`` (optional);
    ``logs``: per finding, its proxy log line (``--log``; ``records.finding_logs``), a column of its own."""
    ladders, ladder_of, more = _ladders(result, max_ladders)
    body = [
        _header(result, summary, title),
        _answer(result),
        _timers_section(result),
        _findings_section(result, ladder_of, logs),
        _ladders_section(ladders, more, result),
        f'<footer>Written by alb-pcap {esc(__version__)}. This page loads nothing from the network.</footer>',
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + f"\n</main>\n<script>{_JS}</script>\n</body>\n</html>\n"
    )


def _header(result: DiagnosisResult, summary, title: str) -> str:
    parts = [f"<header><h1>{esc(title)}</h1>"]
    if summary is not None:
        files = []
        for c in summary.captures:
            span = ""
            if c.first_ts_ns is not None and c.last_ts_ns is not None:
                span = f", {esc(_clock(c.first_ts_ns))} → {esc(_clock(c.last_ts_ns))}"
            files.append(f"<li><code>{esc(c.path)}</code>: {c.frames:,} frames{span}</li>")
        parts.append(f"<ul class=\"captures\">{''.join(files)}</ul>")
        parts.append(f"<p class=\"dim\">{summary.connections:,} TCP connections, {summary.exchanges:,} HTTP "
                     f"exchanges, {summary.keepalive_probes:,} TCP keep-alive probes.</p>")
    parts.append("</header>")
    return "\n".join(parts)


def _answer(result: DiagnosisResult) -> str:
    counts = dict(result.finding_counts)
    by_type = {"502": 0, "504": 0, "460": 0}
    for kind, n in counts.items():
        if kind in STATUS_TYPE:
            by_type[STATUS_TYPE[kind]] += n
    others = sum(n for k, n in counts.items() if k not in STATUS_TYPE)
    cards = []
    for status, label in (("502", "502-type"), ("504", "504-type"), ("460", "460-type (client left)")):
        kinds = ", ".join(k for k in counts if STATUS_TYPE.get(k) == status)
        cls = "card bad" if by_type[status] else "card ok"
        cards.append(f'<div class="{cls}" data-status="{status}"><b>{by_type[status]:,}</b><span>{esc(label)}'
                     f'</span><small>{esc(kinds)}</small></div>')
    cards.append(f'<div class="card info"><b>{others:,}</b><span>other findings</span>'
                 f'<small>idle closes, keep-alive closes, probes</small></div>')
    verdict = "".join(f"<li>{esc(line)}</li>" for line in result.verdict) or "<li>nothing wrong seen</li>"
    return (f'<section id="answer"><h2>The answer</h2><div class="cards">{"".join(cards)}</div>'
            f'<h3>Verdict</h3><ul class="verdict">{verdict}</ul>{_proxies(result)}</section>')


def _proxies(result: DiagnosisResult) -> str:
    if not result.proxies:
        return "<p class=\"dim\">No proxy found (give --proxy IP or --listener PORT if there is one).</p>"
    rows = "".join(
        f"<tr><td><code>{esc(p.name)}</code></td><td>{esc(p.software or 'unknown')}</td>"
        f"<td>{esc(', '.join(p.listeners))}</td><td>{esc(', '.join(p.back_addresses))}</td>"
        f"<td>{esc(', '.join(p.targets))}</td><td class=\"num\">{p.paired:,}</td><td>{esc(p.found_by)}</td>"
        f"<td>{esc(', '.join(f'{how}: {n}' for how, n in p.paired_by))}</td></tr>"
        for p in result.proxies)
    return ("<h3>Proxies</h3><table class=\"plain\"><thead><tr><th>proxy</th><th>software</th>"
            "<th>clients connect to</th><th>opens target connections from</th><th>targets</th><th>paired</th>"
            f"<th>found by</th><th>paired by</th></tr></thead><tbody>{rows}</tbody></table>")


# -- the timers figure ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Dot:
    idle_s: float
    by: str  # "proxy", "target", "client"
    side: str  # "client" or "target" connection
    flow: str
    race: bool = False


def _dots(result: DiagnosisResult) -> list[_Dot]:
    dots = [_Dot(idle, by, side, flow) for idle, by, side, flow in result.idle_closes]
    for f in result.findings:
        if f.kind != "keepalive_race":
            continue
        tx = _transaction_of(result, f)
        for leg in tx.backs if tx else ():
            cut = leg.cut
            if cut is not None and cut.by == "acceptor":
                idle = (cut.close.ts_ns - (leg.exchange.start_ns - cut.idle_before_ns)) / SEC
                dots.append(_Dot(idle, "target", "target", leg.exchange.flow, race=True))
    return dots


def _timers_section(result: DiagnosisResult) -> str:
    table = "".join(
        f"<tr><td>{esc(t.name.replace('_', ' '))}</td><td><code>{esc(t.subject)}</code></td>"
        f"<td class=\"num\">{t.seconds:g}" + ("" if t.low == t.high else f" ({t.low:g}–{t.high:g})")
        + f"</td><td class=\"num\">{t.observations}/{t.total}</td></tr>"
        for t in result.timers)
    table = ("<table class=\"plain\"><thead><tr><th>timer</th><th>whose</th><th>seconds</th><th>seen</th></tr>"
             f"</thead><tbody>{table}</tbody></table>") if table else \
        "<p class=\"dim\">No timer could be inferred from this capture.</p>"
    dots = _dots(result)
    note = ""
    if result.idle_closes_total > len(result.idle_closes):
        note = (f"<p class=\"dim\">The first {len(result.idle_closes):,} of {result.idle_closes_total:,} idle closes "
                "are plotted.</p>")
    return ("<section id=\"timers\"><h2>Timers</h2><p>Each dot is a connection closed while idle: how long it had "
            "carried no HTTP data when it was closed, and by whom. Vertical lines are the timeouts inferred from "
            "the wire. A target that closes before the proxy does (the shaded band) races the proxy's next "
            "request: ✕ marks a request that crossed the target's FIN.</p>"
            + timers_svg(dots, result.timers) + note + table + "</section>")


def _scale(values: list[float]):
    """x mapping for seconds: linear, or logarithmic when the values span more than 30x."""
    positive = [v for v in values if v > 0] or [1.0]
    lo, hi = min(positive), max(positive)
    if hi / max(lo, 1e-3) > 30:
        a = 10 ** math.floor(math.log10(max(lo, 1e-3) * 0.8))
        b = 10 ** math.ceil(math.log10(hi * 1.25))
        ticks = [m * 10 ** e for e in range(int(math.log10(a)), int(math.log10(b)) + 1) for m in (1, 2, 5)
                 if a <= m * 10 ** e <= b]
        return (lambda v: (math.log10(max(v, a)) - math.log10(a)) / (math.log10(b) - math.log10(a))), ticks, "log"
    top = hi * 1.2
    step = 10 ** math.floor(math.log10(top / 5))
    for m in (1, 2, 5, 10):
        if top / (m * step) <= 8:
            step *= m
            break
    b = math.ceil(top / step) * step
    ticks = [i * step for i in range(int(round(b / step)) + 1)]
    return (lambda v: max(0.0, v) / b), ticks, "linear"


def timers_svg(dots: list[_Dot], timers: tuple[Timer, ...]) -> str:
    lines = [t for t in timers if t.name in IDLE_TIMERS]
    width, left, right = 1000, 150, 30
    top = 30 + 16 * len(lines)
    rows = ["proxy", "target", "client"]
    row_h = 64
    height = top + row_h * len(rows) + 46
    values = [d.idle_s for d in dots] + [t.seconds for t in lines]
    frac, ticks, kind = _scale(values or [1.0])
    px = lambda v: left + frac(v) * (width - left - right)  # noqa: E731
    out = [f'<svg class="timers" role="img" aria-label="idle closes against the timers" viewBox="0 0 {width} {height}"'
           f' width="{width}" height="{height}" data-scale="{kind}">']
    # the misalignment: a target keep-alive timeout below the proxy's idle timeout
    proxy_idle = max((t.seconds for t in lines if t.name in ("proxy_idle_timeout", "proxy_target_idle_timeout")),
                     default=None)
    races = [d for d in dots if d.race]
    for t in (t for t in lines if t.name == "target_keepalive_timeout"):
        end = proxy_idle if proxy_idle is not None and proxy_idle > t.seconds else None
        if end is None and proxy_idle is None and races:
            end = ticks[-1]  # the proxy kept connections longer than this: how long is not seen
        if end is not None:
            x1, x2 = px(t.seconds), px(end)
            out.append(f'<rect class="danger" x="{x1:.1f}" y="{top - 6}" width="{max(x2 - x1, 3):.1f}" '
                       f'height="{row_h * len(rows) + 6}" fill="#fee2e2"/>')
            out.append(f'<text x="{(x1 + x2) / 2:.1f}" y="{top + row_h * len(rows) - 6}" class="band" '
                       f'text-anchor="middle">target closes first: 502 risk</text>')
    # rows
    for i, row in enumerate(rows):
        y = top + i * row_h
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y + row_h / 2}" y2="{y + row_h / 2}" '
                   f'stroke="#e5e7eb"/>')
        out.append(f'<text x="{left - 10}" y="{y + row_h / 2 + 4}" text-anchor="end" class="row" '
                   f'fill="{CLOSER_COLOUR[row]}">closed by {row}</text>')
    # axis
    ybase = top + row_h * len(rows)
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{ybase}" y2="{ybase}" stroke="#374151"/>')
    for tick in ticks:
        x = px(tick)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ybase}" y2="{ybase + 5}" stroke="#374151"/>'
                   f'<text x="{x:.1f}" y="{ybase + 18}" text-anchor="middle" class="tick">{_fmt_s(tick)}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{ybase + 38}" text-anchor="middle" class="axis">'
               f'idle time before the close (s{", log scale" if kind == "log" else ""})</text>')
    # timer lines
    for j, t in enumerate(lines):
        whose, label = IDLE_TIMERS[t.name]
        x = px(t.seconds)
        colour = CLOSER_COLOUR[whose]
        y0 = 18 + 16 * j
        out.append(f'<line class="timer" data-timer="{esc(t.name)}" x1="{x:.1f}" x2="{x:.1f}" y1="{y0 + 4}" '
                   f'y2="{ybase}" stroke="{colour}" stroke-width="2" stroke-dasharray="6 4"/>')
        anchor = "end" if x > width * 0.6 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(f'<text x="{x + dx:.1f}" y="{y0}" text-anchor="{anchor}" class="tlabel" fill="{colour}">'
                   f'{esc(label)} {t.seconds:g} s · {esc(t.subject)} ({t.observations} seen)</text>')
    # dots
    for n, d in enumerate(dots):
        row = rows.index(d.by) if d.by in rows else 0
        y = top + row * row_h + row_h / 2 + ((n * 37) % 33 - 16) * 0.8
        x = px(d.idle_s)
        colour = CLOSER_COLOUR.get(d.by, "#000")
        tip = f"{d.flow}: {'a request crossed the FIN after' if d.race else 'closed after'} {d.idle_s:.3f} s idle" \
              f" ({d.side} connection, by the {d.by})"
        if d.race:
            out.append(f'<g class="dot race"><title>{esc(tip)}</title><path d="M{x - 6:.1f},{y - 6:.1f}L{x + 6:.1f},'
                       f'{y + 6:.1f}M{x - 6:.1f},{y + 6:.1f}L{x + 6:.1f},{y - 6:.1f}" stroke="#dc2626" '
                       'stroke-width="3"/></g>')
        else:
            fill = colour if d.side == "target" else "#fff"
            out.append(f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" stroke="{colour}" '
                       f'stroke-width="2" fill-opacity="0.8"><title>{esc(tip)}</title></circle>')
    if not dots:
        out.append(f'<text x="{(left + width) / 2}" y="{top + row_h * 1.5}" text-anchor="middle" class="dim">'
                   'no connection was closed idle in this capture</text>')
    out.append("</svg>")
    legend = ('<p class="legend"><span class="sw" style="background:#ea580c"></span>filled: proxy ⇄ target '
              'connection <span class="sw hollow"></span>hollow: client ⇄ proxy connection '
              '<span class="x">✕</span> a request crossed the target\'s keep-alive FIN (race)</p>')
    return "".join(out) + legend


# -- the findings table ----------------------------------------------------------------------------


def _findings_section(result: DiagnosisResult, ladder_of: dict[int, str], logs: list[dict | None] | None) -> str:
    findings = result.findings
    kinds = sorted({f.kind for f in findings})
    options = "".join(f'<option value="{esc(k)}">{esc(k)}</option>' for k in kinds)
    rows = []
    for i, f in enumerate(findings, 1):
        status = "" if f.status is None else f"{f.status}{' (inferred)' if f.status_inferred else ''}"
        ladder = ladder_of.get(id(f))
        link = f'<a href="#{ladder}">ladder</a>' if ladder else ""
        rows.append(
            f'<tr data-kind="{esc(f.kind)}" data-severity="{esc(f.severity)}">'
            f'<td class="num" data-v="{i}">{i}</td>'
            f'<td data-v="{f.ts_ns}">{esc(_clock(f.ts_ns))}</td>'
            f'<td><span class="kind {esc(f.severity)}">{esc(f.kind)}</span></td>'
            f'<td data-v="{ {"error": 0, "warning": 1}.get(f.severity, 2)}">{esc(f.severity)}</td>'
            f'<td class="num" data-v="{f.status if f.status is not None else -1}">{esc(status)}</td>'
            f'<td>{esc(f.side)}</td><td>{_flow(f.client_flow)}</td>'
            f'<td>{_flow(f.target_flow)}</td><td class="what">{esc(f.summary)}</td>'
            + ("" if logs is None else f'<td class="log">{esc(log_text(logs[i - 1]))}</td>')
            + f'<td>{link}</td></tr>')
    counted = sum(n for _, n in result.finding_counts)
    note = ""
    if counted > len(findings):
        note = (f"<p class=\"dim\">{len(findings):,} of {counted:,} findings are listed (the rest are counted "
                "above: beyond 200 of a kind, or left out by --kind/--flow/--around).</p>")
    heads = [("#", "num"), ("time (UTC)", "num"), ("kind", "text"), ("severity", "num"), ("status", "num"),
             ("side", "text"), ("client ⇄ proxy", "text"), ("proxy ⇄ target", "text"), ("what happened", "text"),
             *([] if logs is None else [("proxy log", "text")]), ("", "text")]
    thead = "".join(f'<th data-type="{t}" title="click to sort">{esc(h)}</th>' for h, t in heads)
    return (
        '<section id="findings-section"><h2>Findings</h2>'
        '<div class="controls"><label>Filter <input id="f-text" type="search" placeholder="flow, URI, words…">'
        f'</label> <label>Kind <select id="f-kind"><option value="">all kinds</option>{options}</select></label> '
        f'<span id="f-count" class="dim">{len(findings)} of {len(findings)} shown</span></div>{note}'
        f'<table id="findings" class="findings"><thead><tr>{thead}</tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table></section>")


# -- ladders ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Event:
    ts_ns: int
    frame: int | None
    side: str  # the connection: "client" (client ⇄ proxy) or "target" (proxy ⇄ target)
    kind: str  # syn fin rst req resp probe idle note
    sender: str | None  # "client", "proxy", "target"; None for a mark on the connection
    label: str
    cls: str = ""


_EVIDENCE = [
    (re.compile(r"^(SYN|FIN|RST) from the (client|proxy|target)"), "close"),
    (re.compile(r"^last response \((\d{3}) to (.*)\)"), "last"),
    (re.compile(r"^(\d{3}) response"), "resp"),
    (re.compile(r"^(\S+) (.*?) on the (?:client|target) connection.*?(\(request #\d+\))?$"), "req"),
]
_CONNECTION_WORDS = re.compile(r" on the (client|target) connection( \S+->\S+)?")


def _ends(side: str) -> tuple[str, str]:
    return ("client", "proxy") if side == "client" else ("proxy", "target")


def _transaction_of(result: DiagnosisResult, f: Finding) -> Transaction | None:
    if f.exchange is None:
        return None
    for tx in result.transactions:
        if any(leg.exchange.key == f.exchange for leg in (tx.front, *tx.backs) if leg):
            return tx
    return None


def _ladders(result: DiagnosisResult, limit: int) -> tuple[list[tuple[str, Finding, Transaction | None]],
                                                            dict[int, str], int]:
    """Which findings get a ladder: those with a transaction first (errors first), then connection closes."""
    candidates = []
    seen_tx: set[int] = set()
    for f in result.findings:
        tx = _transaction_of(result, f)
        if tx is not None:
            if id(tx) in seen_tx:
                continue
            seen_tx.add(id(tx))
            candidates.append((0 if f.severity == "error" else 1, f.ts_ns, f, tx))
        elif result.connection(f.client_flow) or result.connection(f.target_flow) or f.evidence:
            candidates.append((2 if f.severity != "info" else 3, f.ts_ns, f, None))
    candidates.sort(key=lambda c: (c[0], c[1]))
    chosen = [(f"ladder-{i + 1}", f, tx) for i, (_, _, f, tx) in enumerate(candidates[:limit])]
    return chosen, {id(f): name for name, f, _ in chosen}, max(0, len(candidates) - limit)


def _ladders_section(ladders, more: int, result: DiagnosisResult) -> str:
    if not ladders:
        return '<section id="ladders"><h2>Ladder diagrams</h2><p class="dim">No finding to draw.</p></section>'
    parts = ['<section id="ladders"><h2>Ladder diagrams</h2><p>Time runs downward; each arrow is a packet from one '
             'party to another as the capture saw it, and pauses of half a second or more are compressed '
             '(<i>⋮ 1.90 s idle</i>). The FIN that crossed a request in a keep-alive race is drawn in red.</p>']
    for name, f, tx in ladders:
        parts.append(ladder(name, f, tx, result))
    if more:
        parts.append(f'<p class="more">{more:,} more finding(s) not drawn (at most {len(ladders)} ladders); narrow '
                     'with --kind, --flow or --around to draw others.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def ladder_events(f: Finding, tx: Transaction | None, result: DiagnosisResult) -> list[_Event]:
    """The moments of one finding: its transaction's legs, its evidence, its connections' TCP events."""
    events: dict[tuple, _Event] = {}

    def add(e: _Event) -> None:
        key = (e.frame, e.kind) if e.frame else (e.ts_ns, e.kind, e.side)
        if e.frame and any(o.frame == e.frame for o in events.values()):
            return
        events.setdefault(key, e)

    cut_frames: dict[int, str] = {}
    legs: list[tuple[Leg, str]] = []
    if tx is not None:
        legs = ([(tx.front, "client")] if tx.front else []) + [(b, "target") for b in tx.backs]
    for leg, side in legs:
        ex = leg.exchange
        opener, acceptor = _ends(side)
        if leg.cut is not None:
            crossing = (f.kind == "keepalive_race" and side == "target" and leg.cut.by == "acceptor")
            cut_frames[leg.cut.close.frame] = "crossing" if crossing else "cut"
            if leg.cut.idle_before_ns >= GAP_NS:
                add(_Event(ex.start_ns - leg.cut.idle_before_ns, None, side, "idle", None,
                           f"last HTTP data, then idle {_dur(leg.cut.idle_before_ns / SEC)}"))
        if ex.request_start_ns is not None:
            add(_Event(ex.request_start_ns, ex.request_frame, side, "req", opener,
                       f"{ex.method or '?'} {ex.uri or ''} (request #{ex.index})"))
        if ex.response_start_ns is not None:
            add(_Event(ex.response_start_ns, ex.response_frame, side, "resp", acceptor,
                       f"{ex.status} response", "bad" if (ex.status or 0) >= 500 else ""))
    told: list[_Event] = []
    for e in f.evidence:
        side = e.side or f.side
        opener, acceptor = _ends(side)
        what = _CONNECTION_WORDS.sub("", e.what)
        for pattern, kind in _EVIDENCE:
            m = pattern.match(what)
            if not m:
                continue
            if kind == "close":
                told.append(_Event(e.ts_ns, e.frame, side, m.group(1).lower(), m.group(2), what))
            elif kind == "last":
                told.append(_Event(e.ts_ns, e.frame, side, "resp", acceptor,
                                   f"last response: {m.group(1)} to {m.group(2)}"))
            elif kind == "resp":
                told.append(_Event(e.ts_ns, e.frame, side, "resp", acceptor, what,
                                   "bad" if int(m.group(1)) >= 500 else ""))
            else:
                told.append(_Event(e.ts_ns, e.frame, side, "req", opener, what))
            break
        else:
            told.append(_Event(e.ts_ns, e.frame, side, "note", None, what))
    times = [e.ts_ns for e in (*events.values(), *told)]
    lo, hi = (min(times), max(times)) if times else (f.ts_ns, f.ts_ns)
    for side, flow in (("client", f.client_flow), ("target", f.target_flow)):
        conn = result.connection(flow)
        if conn is None:
            continue
        for e in _connection_events(conn, side):
            in_story = lo <= e.ts_ns <= hi or (e.kind == "syn" and lo - SYN_LOOKBACK_NS <= e.ts_ns <= hi)
            if in_story:
                add(e)
    for e in told:  # what the connection records do not already show
        add(e)
    out = sorted(events.values(), key=lambda e: (e.ts_ns, e.frame or 0))
    for e in out:
        if e.frame in cut_frames and e.kind in ("fin", "rst"):
            e.cls = cut_frames[e.frame]
    if f.kind == "keepalive_race" and not any(e.cls == "crossing" for e in out):
        # no transaction (one side only): the target's first FIN after a request is the crossing one
        req = next((e for e in out if e.kind == "req" and e.side == "target"), None)
        fin = next((e for e in out if e.kind == "fin" and e.sender == "target"
                    and (req is None or e.ts_ns >= req.ts_ns)), None)
        if fin is not None:
            fin.cls = "crossing"
    return out


def _connection_events(conn: Connection, side: str) -> list[_Event]:
    opener, acceptor = _ends(side)
    who = {ORIG: opener, 1: acceptor}
    out = []
    if conn.syn_seen:
        out.append(_Event(conn.start_ns, conn.syn_frame, side, "syn", opener, f"SYN from the {opener}"))
    out += [_Event(p.ts_ns, p.frame, side, "probe", who[p.direction], "TCP keep-alive probe") for p in conn.probes]
    out += [_Event(c.ts_ns, c.frame, side, "fin", who[c.by], f"FIN from the {who[c.by]}") for c in conn.fins]
    if conn.rst is not None:
        out.append(_Event(conn.rst.ts_ns, conn.rst.frame, side, "rst", who[conn.rst.by],
                          f"RST from the {who[conn.rst.by]}"))
    return out


LANE_X = {"client": 260, "proxy": 560, "target": 860}
ROW_H = 34
GAP_H = 40
SLANT = 14
ARROW_COLOUR = {"req": "#2563eb", "resp": "#15803d", "syn": "#4b5563", "fin": "#7c3aed", "rst": "#c2410c",
                "probe": "#9ca3af"}


def ladder(name: str, f: Finding, tx: Transaction | None, result: DiagnosisResult) -> str:
    events = ladder_events(f, tx, result)
    status = f" → client got {f.status}" if f.status is not None else ""
    inferred = " (inferred)" if f.status is not None and f.status_inferred else ""
    head = (f'<section class="ladder" id="{name}" data-kind="{esc(f.kind)}"'
            + (f' data-transaction="{f.exchange[0]}:{f.exchange[1]}"' if tx is not None and f.exchange else "")
            + f'><h3><span class="kind {esc(f.severity)}">{esc(f.kind)}</span>{esc(status)}{esc(inferred)} '
            f'<small>at {esc(_clock(f.ts_ns))} ({esc(f.side)} side)</small></h3>'
            f'<p>{esc(f.summary)}</p><p class="flows">client ⇄ proxy: {_flow(f.client_flow, "(not captured)")}'
            f' · proxy ⇄ target: {_flow(f.target_flow, "(not captured)")}</p>')
    return head + ladder_svg(events) + f'<p class="fix"><b>Fix:</b> {esc(f.recommendation)}</p></section>'


def ladder_svg(events: list[_Event]) -> str:
    width = 1000
    top = 44
    y = top
    start = events[0].ts_ns if events else 0
    placed: list[tuple[float, _Event]] = []
    gaps: list[tuple[float, str]] = []
    previous = None
    open_requests = 0
    for e in events:
        if previous is not None and e.ts_ns - previous >= GAP_NS:
            word = "waiting" if open_requests > 0 else "idle"
            gaps.append((y, f"⋮ {_dur((e.ts_ns - previous) / SEC)} {word}"))
            y += GAP_H
        placed.append((y, e))
        y += ROW_H
        if e.kind == "req":
            open_requests += 1
        elif e.kind == "resp" and open_requests:
            open_requests -= 1
        previous = e.ts_ns
    height = y + 16
    out = [f'<svg class="ladder-svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           'aria-label="ladder diagram">']
    out.append('<text x="8" y="20" class="lh">t (s)</text><text x="96" y="20" class="lh">frame</text>')
    # lanes, broken across compressed gaps
    segments, last = [], top - 8
    for gy, _ in gaps:
        segments.append((last, gy + 4))
        last = gy + GAP_H - 4
    segments.append((last, height - 6))
    for lane, x in LANE_X.items():
        out.append(f'<text x="{x}" y="20" text-anchor="middle" class="lane">{lane}</text>')
        for a, b in segments:
            out.append(f'<line x1="{x}" x2="{x}" y1="{a}" y2="{b}" stroke="#9ca3af" stroke-width="2"/>')
        for gy, _ in gaps:
            out.append(f'<line x1="{x}" x2="{x}" y1="{gy + 6}" y2="{gy + GAP_H - 6}" stroke="#9ca3af" '
                       'stroke-width="2" stroke-dasharray="2 5"/>')
    for gy, label in gaps:
        out.append(f'<text x="{LANE_X["proxy"]}" y="{gy + GAP_H / 2 + 8}" text-anchor="middle" class="gap">'
                   f'{esc(label)}</text>')
    request_y: dict[str, float] = {}
    for ey, e in placed:
        if e.kind == "req":
            request_y[e.side] = ey
        out.append(f'<text x="8" y="{ey + 10}" class="t">{(e.ts_ns - start) / SEC:+.6f}</text>'
                   f'<text x="96" y="{ey + 10}" class="t">{esc(e.frame or "")}</text>')
        a, b = _ends(e.side)
        if e.sender is None:  # a mark on the connection: last data before idling, a note
            x1, x2 = LANE_X[a], LANE_X[b]
            out.append(f'<g class="mark {esc(e.kind)}"><line x1="{x1}" x2="{x2}" y1="{ey + 6}" y2="{ey + 6}" '
                       'stroke="#6b7280" stroke-dasharray="1 4" stroke-width="2"/>'
                       f'<text x="{(x1 + x2) / 2}" y="{ey + 2}" text-anchor="middle" class="note">'
                       f'{esc(_clip(e.label, 80))}</text></g>')
            continue
        receiver = b if e.sender == a else a
        x1, x2 = LANE_X.get(e.sender, LANE_X[a]), LANE_X[receiver]
        y1, y2 = ey, ey + SLANT
        if e.cls == "crossing" and e.side in request_y:
            y1 = request_y[e.side]  # drawn in flight while the request was: the two arrows cross
        colour = "#dc2626" if e.cls in ("crossing", "bad") else ARROW_COLOUR.get(e.kind, "#111")
        if e.cls == "cut":
            colour = "#b45309"
        widthpx = 4 if e.cls == "crossing" else 2
        dash = ' stroke-dasharray="5 4"' if e.kind == "probe" else ""
        label = e.label + ("  ✕ crosses the request" if e.cls == "crossing" else "")
        classes = " ".join(c for c in ("arrow", e.kind, e.cls) if c)
        attrs = f' data-frame="{esc(e.frame or "")}"'
        if e.cls == "crossing":
            attrs += ' data-crossing="true"'
        halo = (f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#fecaca" stroke-width="12" '
                'stroke-linecap="round"/>') if e.cls == "crossing" else ""
        direction = 1 if x2 > x1 else -1
        head = (f"{x2},{y2} {x2 - direction * 11},{y2 - 7.5} {x2 - direction * 9},{y2 + 2.5}")
        tx_ = (x1 + x2) / 2
        weight = ' font-weight="bold"' if e.cls == "crossing" else ""
        out.append(f'<g class="{classes}"{attrs}><title>{esc(e.label)}</title>{halo}'
                   f'<line x1="{x1}" y1="{y1}" x2="{x2 - direction * 6}" y2="{y2 - 0.5}" stroke="{colour}" '
                   f'stroke-width="{widthpx}"{dash}/><polygon points="{head}" fill="{colour}"/>'
                   f'<text x="{tx_}" y="{ey - 2}" text-anchor="middle" fill="{colour}" class="al"{weight}>'
                   f'{esc(_clip(label))}</text></g>')
    out.append("</svg>")
    return "".join(out)


_CSS = """
:root{--fg:#111827;--dim:#6b7280;--line:#e5e7eb;--bad:#dc2626;--warn:#b45309;--info:#0369a1}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
background:#f9fafb}
main{max-width:1200px;margin:0 auto;padding:16px 24px 40px;background:#fff}
h1{font-size:22px;margin:4px 0 6px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line);
padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
code{font:12px/1.3 ui-monospace,"DejaVu Sans Mono",monospace;white-space:nowrap}
.dim{color:var(--dim)}.captures{margin:4px 0;padding-left:20px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1 1 180px;border:1px solid var(--line);border-radius:8px;padding:10px 14px;display:flex;flex-direction:column}
.card b{font-size:28px}.card small{color:var(--dim)}.card.bad{border-color:#fca5a5;background:#fef2f2}
.card.bad b{color:var(--bad)}.card.ok b{color:#15803d}.card.info b{color:var(--info)}
.verdict li{margin:4px 0}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600;white-space:nowrap}td.num,th.num{text-align:right}
table.findings th{cursor:pointer;user-select:none}
table.findings th[aria-sort=ascending]::after{content:" ▲"}table.findings th[aria-sort=descending]::after{content:" ▼"}
table.findings td{font-size:13px}td.what{min-width:300px}
.kind{font-weight:600}.kind.error{color:var(--bad)}.kind.warning{color:var(--warn)}.kind.info{color:var(--info)}
.controls{display:flex;gap:14px;align-items:center;margin:6px 0}
.controls input{width:260px;padding:3px 6px}
svg{display:block;max-width:100%;height:auto;font-family:system-ui,"DejaVu Sans",sans-serif}
svg text{font-size:12px}svg .t,svg .lh{fill:#6b7280;font-family:ui-monospace,"DejaVu Sans Mono",monospace}
svg .lane{font-weight:700;font-size:14px}svg .gap{fill:#374151;font-style:italic;font-size:13px}
svg .note{fill:#4b5563;font-style:italic}svg .band{fill:#b91c1c;font-size:12px;font-weight:600}
svg .row{font-weight:600}svg .tick{fill:#374151}svg .axis{fill:#374151}svg .tlabel{font-size:12px;font-weight:600}
.legend{color:var(--dim);font-size:12px}.sw{display:inline-block;width:10px;height:10px;border-radius:50%;
margin:0 4px 0 10px;border:2px solid #ea580c}.sw.hollow{background:#fff;border-color:#6b7280}
.legend .x{color:#dc2626;font-weight:700;margin:0 4px 0 10px}
.ladder{border-top:1px solid var(--line);margin-top:18px}.flows{color:var(--dim)}
.fix{background:#f0fdf4;border-left:3px solid #16a34a;padding:6px 10px}.more{font-style:italic}
footer{color:var(--dim);font-size:12px;margin-top:30px}
"""

_JS = """
(function () {
  "use strict";
  var table = document.getElementById("findings");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var text = document.getElementById("f-text");
  var kind = document.getElementById("f-kind");
  var count = document.getElementById("f-count");
  function filter() {
    var q = text.value.toLowerCase(), k = kind.value, shown = 0;
    rows.forEach(function (r) {
      var ok = (!k || r.getAttribute("data-kind") === k) && (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " shown";
  }
  function value(row, i, numeric) {
    var cell = row.cells[i], v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent; }
    return numeric ? parseFloat(v) : v.toLowerCase();
  }
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, i) {
    th.tabIndex = 0;
    function sort() {
      var numeric = th.getAttribute("data-type") === "num";
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      rows.sort(function (a, b) {
        var x = value(a, i, numeric), y = value(b, i, numeric);
        return x < y ? -dir : x > y ? dir : 0;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      table.setAttribute("data-sorted-by", String(i));
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
  });
  text.addEventListener("input", filter);
  kind.addEventListener("change", filter);
  filter();
  table.setAttribute("data-sortable", "ready");
  document.documentElement.setAttribute("data-report", "ready");
})();
"""
