"""One parsed proxy log line: the few fields the join with the wire needs, whatever the format."""

from __future__ import annotations

from dataclasses import dataclass

ERROR_STATUSES = frozenset({460, 499})
"""Client-gave-up statuses (ALB 460, nginx 499) count as errors, as every 5xx does."""


@dataclass(frozen=True, slots=True)
class LogLine:
    file: str
    line: int
    """1-based line number in its file."""
    format: str
    """alb, alb_connection, nginx_combined, nginx_upstream, nginx_custom, nginx_error, haproxy_httplog,
    haproxy_custom."""
    ts: float | None
    """The line's own time stamp (epoch seconds, UTC unless the format has no zone)."""
    ts_is: str
    """"start" (the request arrived: HAProxy's %tr, the ALB's request_creation_time) or "end" (the
    response was sent or the error met: the ALB's time, nginx's $time_local and $msec, error.log)."""
    ts_resolution: float = 0.001
    """Seconds: 1.0 for nginx's $time_local and error.log, whose stamps have no fraction."""
    start: float | None = None
    """When the request arrived, where the line says it (directly or as end minus a duration)."""
    end: float | None = None
    status: str | None = None
    """As logged (``502``, ``-``); for nginx error.log lines None."""
    client: str | None = None
    """ip:port (or ip alone where only that is logged) of the client connection."""
    target: str | None = None
    """ip:port of the target (the last one tried where several are logged)."""
    backend_src: str | None = None
    """ip:port the proxy opened the target connection from (HAProxy %bi:%bp)."""
    method: str | None = None
    uri: str | None = None
    """Origin form (``/path?q``): an absolute URI's scheme and authority are dropped."""
    trace_id: str | None = None
    """The request id as logged (the ALB's ``Root=...``, HAProxy's %ID, nginx's $request_id)."""
    termination: str | None = None
    """HAProxy's termination state (``SH--``), the ALB's error_reason, nginx error.log's message."""
    timers: tuple[tuple[str, str], ...] = ()
    """(name, value as logged): HAProxy TR/Tw/Tc/Tr/Ta, the ALB's processing times, nginx's times."""
    upstream_statuses: tuple[str, ...] = ()
    """Every target status logged (nginx $upstream_status, the ALB's target_status_code_list)."""

    @property
    def code(self) -> int | None:
        try:
            return int(self.status) if self.status else None
        except ValueError:
            return None

    @property
    def error(self) -> bool:
        """5xx, 460/499, an abnormal termination state, a target 5xx behind a retry, an error.log line."""
        if self.format == "nginx_error":  # "[error] upstream timed out ...": error level and worse
            return (self.termination or "")[1:].split("]")[0] in ("error", "crit", "alert", "emerg")
        code = self.code
        if code is not None and (code >= 500 or code in ERROR_STATUSES):
            return True
        if self.termination and self.format.startswith("haproxy") and self.termination[:2] != "--":
            return True
        return any(s[:1] == "5" for s in self.upstream_statuses)

    def describe(self) -> str:
        """``502 SH-- Tc=0 Tr=-1``: what the timeline shows."""
        parts = [self.status or ("error.log" if self.format == "nginx_error" else "-")]
        if self.format == "alb":
            parts.append(f"target_status_code={','.join(self.upstream_statuses) or '-'}")
        if self.termination and self.termination != "-":
            parts.append(self.termination)
        parts += [f"{k}={v}" for k, v in self.timers]
        if self.upstream_statuses and self.format.startswith("nginx") and self.upstream_statuses != (self.status,):
            parts.append("upstream_status=" + ",".join(self.upstream_statuses))
        return " ".join(parts)
