"""Summary -> rich renderables for the terminal. Prints nothing itself."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from .pipeline import Summary


def _counter_table(title: str, label: str, counts: dict) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column(label)
    table.add_column("count", justify="right")
    for key, n in counts.items():
        table.add_row(str(key), str(n))
    return table


def captures_table(summary: Summary) -> Table:
    table = Table(title="Captures", title_justify="left", show_edge=False)
    for col in ("file", "format", "frames", "decoded", "duplicate", "skipped", "truncated"):
        table.add_column(col, justify="left" if col in ("file", "format") else "right")
    for c in summary.captures:
        skipped = ", ".join(f"{n} {reason}" for reason, n in c.skipped.most_common()) or "0"
        table.add_row(c.path, c.format, str(c.frames), str(c.decoded), str(c.duplicates),
                      skipped, str(c.truncated))
    return table


def summary_view(summary: Summary) -> Group:
    parts = [
        captures_table(summary),
        f"\n[bold]{summary.connections}[/] TCP connections, [bold]{summary.exchanges}[/] HTTP "
        f"exchanges, {summary.keepalive_probes} TCP keep-alive probes\n",
        _counter_table("Connections by state (Zeek conn_state)", "state",
                       dict(summary.conn_states.most_common())),
        _counter_table("Exchanges by status", "status", dict(summary.statuses.most_common())),
        _counter_table("Exchanges by ending", "ended", dict(summary.endings.most_common())),
    ]
    if summary.anomalies.counts:
        parts.append(_counter_table("Anomalies", "name", dict(summary.anomalies.counts.most_common())))
    return Group(*parts)
