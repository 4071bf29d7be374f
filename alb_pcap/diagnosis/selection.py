"""What the user asked to see: findings of some kinds, statuses, flows, near a time.

One selection applies to everything printed and exported (the findings, their
counts, the verdict's lines, the transactions kept), so it is handed to the
diagnosis rather than applied to its output. Times are parsed in the formats an
engineer copies from elsewhere: ISO 8601, epoch seconds, the proxies' log
formats, or seconds from the capture's start (``+12.5``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from .detect import Finding

SEC = 1_000_000_000
LOG_TIME_FORMATS = (
    "%d/%b/%Y:%H:%M:%S %z",  # nginx $time_local, Apache %t: 22/Nov/2026:03:16:04 +0000
    "%d/%b/%Y:%H:%M:%S.%f",  # HAProxy's accept date: 22/Nov/2026:03:16:04.123 (local time: read as UTC)
    "%d/%b/%Y:%H:%M:%S",
)


class BadTime(ValueError):
    """A time in none of the accepted formats."""


def parse_time(text: str) -> tuple[str, int]:
    """``("abs", epoch ns)`` or ``("rel", ns from the capture's start)``."""
    text = text.strip().strip("[]")
    if text.startswith("+"):
        try:
            return "rel", round(float(text[1:]) * SEC)
        except ValueError:
            raise BadTime(text) from None
    try:
        return "abs", round(float(text) * SEC)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return "abs", _ns(when)
    except ValueError:
        pass
    for fmt in LOG_TIME_FORMATS:
        try:
            return "abs", _ns(datetime.strptime(text, fmt))
        except ValueError:
            continue
    raise BadTime(text)


def _ns(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return round(when.timestamp() * SEC)


def _endpoint_matches(part: str, endpoint: str) -> bool:
    """``1.2.3.4:80`` matches itself, ``1.2.3.4`` and ``:80``."""
    host, _, port = endpoint.rpartition(":")
    return part in (endpoint, host, host.strip("[]"), f":{port}")


def flow_matches(pattern: str, flow: str | None) -> bool:
    """An address, an endpoint, or ``a->b`` in either direction."""
    if not flow:
        return False
    ends = flow.split("->")
    parts = [p.strip() for p in pattern.split("->") if p.strip()]
    if len(parts) == 2:
        return any(_endpoint_matches(parts[0], x) and _endpoint_matches(parts[1], y)
                   for x, y in (ends, ends[::-1]))
    return any(_endpoint_matches(parts[0], e) for e in ends) if parts else True


@dataclass(frozen=True)
class Selection:
    kinds: tuple[str, ...] = ()
    statuses: tuple[int, ...] = ()
    errors_only: bool = False
    flow: str | None = None
    around: tuple[str, int] | None = None
    """From ``parse_time``: absolute, or relative to the capture's start."""
    window_ns: int = 60 * SEC

    @property
    def active(self) -> bool:
        return bool(self.kinds or self.statuses or self.errors_only or self.flow or self.around)

    def wants(self, f: Finding, start_ns: int = 0, final: bool = True) -> bool:
        """``final=False``: a status not known yet (inferred at the end) does not exclude."""
        if self.kinds and f.kind not in self.kinds:
            return False
        if self.errors_only and f.severity != "error":
            return False
        if self.statuses and f.status not in self.statuses and (final or f.status is not None):
            return False
        if self.flow and not (flow_matches(self.flow, f.client_flow) or flow_matches(self.flow, f.target_flow)):
            return False
        if self.around is None:
            return True
        how, ns = self.around
        at = ns + start_ns if how == "rel" else ns
        return abs(f.ts_ns - at) <= self.window_ns

    def describe(self) -> str:
        """``--kind keepalive_race, --status 502``: what is active, in the options' words."""
        parts = [f"--kind {k}" for k in self.kinds] + [f"--status {s}" for s in self.statuses]
        if self.errors_only:
            parts.append("--errors-only")
        if self.flow:
            parts.append(f"--flow {self.flow}")
        if self.around:
            how, ns = self.around
            at = f"+{ns / SEC:g} s" if how == "rel" else datetime.fromtimestamp(ns / SEC, timezone.utc).isoformat()
            parts.append(f"--around {at} --window {self.window_ns / SEC:g}")
        return ", ".join(parts)
