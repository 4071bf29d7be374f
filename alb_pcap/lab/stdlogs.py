"""The lab proxies' access logs in the standard formats users have: HAProxy ``option httplog`` and nginx
``combined`` plus ``$upstream_addr $upstream_status $upstream_response_time $request_time $remote_port $msec``.

The lab's proxies log key=value (HAProxy) and JSON (nginx) lines with more fields than the standard
formats, for ground truth (``proxies.py``); these functions render each of those records as the standard
line carrying the same values, so ``alb-pcap analyze --log`` can be tried on every lab run. Apache and
Caddy have none here (None). nginx's own error.log ships as written, cut to its default level.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def httplog_line(r: dict[str, Any]) -> str:
    """``option httplog`` with a syslog prefix; ``%tr`` is the request's start (the record's request_ts)."""
    start = datetime.fromtimestamp(r["request_ts"], timezone.utc)
    date = start.strftime("%d/%b/%Y:%H:%M:%S") + f".{round(r['request_ts'] * 1000) % 1000:03d}"
    prefix = f"{start:%b} {start.day:2d} {start:%H:%M:%S}"  # syslog's space-padded day
    return (f"{prefix} lab haproxy[1]: {r['client']} [{date}] alb targets/t1 "
            f"{r['TR']}/{r['Tw']}/{r['Tc']}/{r['Tr']}/{r['Ta']} {r['status']} {r['bytes_read']} - - {r['tsc']} "
            f"1/1/0/0/{r['retries']} 0/0 \"{r['request']}\"")


def nginx_upstream_line(r: dict[str, Any]) -> str:
    """nginx combined + ``$upstream_addr $upstream_status $upstream_response_time $request_time
    $remote_port $msec`` (``$upstream_response_time`` from the header time: the lab logs no other)."""
    end = datetime.fromtimestamp(r["ts"], timezone.utc)
    ip, port = r["client"].rsplit(":", 1)

    def value(v: Any) -> str:
        return str(v) if v not in (None, "") else "-"

    return (f"{ip} - - [{end.strftime('%d/%b/%Y:%H:%M:%S +0000')}] \"{r['request']}\" {r['status']} 0 \"-\" "
            f"\"-\" {value(r.get('upstream_addr'))} {value(r.get('upstream_status'))} "
            f"{value(r.get('upstream_header_time'))} {r['request_time']:.3f} {port} {r['ts']:.3f}")


# nginx's default error_log level is `error`: what a user's error.log holds. The lab logs at `info`
# for its own ground truth (the client-closed lines), which would be noise a user never sees.
ERROR_LEVELS = ("[error]", "[crit]", "[alert]", "[emerg]")


def error_level_lines(text: str) -> str:
    """An nginx error.log written at `info`, cut to what the default level `error` would have written."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if any(level in line[:40] for level in ERROR_LEVELS))


STANDARD = {"haproxy": httplog_line, "nginx": nginx_upstream_line}


def standard_access_log(proxy: str, records: list[dict[str, Any]]) -> str | None:
    """The proxy's access log in its standard format, one line per request record; None for others."""
    line = STANDARD.get(proxy)
    return None if line is None else "".join(line(r) + "\n" for r in records)
