"""Caddy (reverse_proxy) as an ALB-like proxy, and its log parser.

Like the other proxies: one idle timeout for client idleness (the server's `idle_timeout` and
`read_header_timeout`), target idleness (the transport's `keep_alive.idle_timeout`) and waiting for a
response (`response_header_timeout`); keep-alive and reuse towards the targets (Go's http.Transport
pool). The config is Caddy's native JSON, so nothing depends on Caddyfile adapters.

What Caddy cannot do like an ALB: no maximum client connection age (the client keep-alive duration
scenario is skipped); no source address for target connections in Caddy 2.6 (the route in the proxy
namespace makes it the back address anyway); no way to turn off Go's own retry of an idempotent
request whose reused connection failed (`retries=False` only sets `lb_try_duration` 0, the default).

Ground truth: the access log (`http.log.access`: client ip:port, status, duration) and, at DEBUG,
reverse_proxy's `upstream roundtrip` lines (target address, duration, status or error) for each
attempt, joined to the access line by the client ip:port and the request's URI and time. Caddy logs
neither the target connection's local port nor a connection id.

Header configurations: "forwarding" keeps Caddy's X-Forwarded-For/-Proto/-Host and adds
X-Forwarded-Port and `X-Amzn-Trace-Id: Root=1-<uuid>` (`{http.request.uuid}`); "none" deletes
Caddy's X-Forwarded-* in `headers.request.delete` and sends no id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORWARDED = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host")


def caddy_config(setup: Any, run_dir: Path) -> str:
    """`setup` is a proxies.ProxySetup; returns Caddy's JSON config."""
    idle = _dur(setup.idle_timeout_s)
    port = setup.listen.rsplit(":", 1)[1]
    if setup.headers == "forwarding":
        request_headers: dict[str, Any] = {"set": {
            "X-Forwarded-Port": [port],
            "X-Amzn-Trace-Id": ["Root=1-{http.request.uuid}"],
        }}
    else:
        request_headers = {"delete": list(FORWARDED)}
    proxy: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": t} for t in setup.targets],
        "load_balancing": {"selection_policy": {"policy": "round_robin"}, "try_duration": "0s"},
        "headers": {"request": request_headers},
        "transport": {
            "protocol": "http",
            "dial_timeout": "2s",
            "response_header_timeout": idle,
            "keep_alive": {"enabled": True, "idle_timeout": idle, "max_idle_conns_per_host": 16},
        },
    }
    config = {
        "admin": {"disabled": True},
        "storage": {"module": "file_system", "root": str(run_dir / "caddy-data")},
        "logging": {"logs": {"default": {
            "writer": {"output": "file", "filename": str(run_dir / "caddy.log")},
            "encoder": {"format": "json", "time_format": "unix_seconds_float"},
            "level": "DEBUG",
        }}},
        "apps": {"http": {"servers": {"alb": {
            "listen": [setup.listen],
            "idle_timeout": idle,
            "read_header_timeout": idle,
            "automatic_https": {"disable": True},
            "logs": {},
            "routes": [{"handle": [proxy]}],
        }}}},
    }
    return json.dumps(config, indent=2)


def _dur(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def parse_caddy_log(text: str) -> list[dict[str, Any]]:
    """One dict per request from the access log, with its reverse_proxy attempts attached.

    `request_ts` = log time - duration, `end_ts` = log time; `attempts` = the `upstream roundtrip`
    lines (target address, status or error) of the same client ip:port and URI in that interval;
    `upstream` = the last attempt's target.
    """
    lines = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    roundtrips = [e for e in lines if e.get("msg") == "upstream roundtrip"]
    records = []
    for e in lines:
        if not e.get("logger", "").startswith("http.log.access"):
            continue
        request = e.get("request", {})
        client = f"{request.get('remote_ip')}:{request.get('remote_port')}"
        end = float(e["ts"])
        start = end - float(e.get("duration", 0))
        attempts = [
            {"ts": r["ts"], "upstream": r.get("upstream"), "duration": r.get("duration"),
             "status": r.get("status"), "error": r.get("error")}
            for r in roundtrips
            if _client_of(r) == client and r.get("request", {}).get("uri") == request.get("uri")
            and start - 0.001 <= float(r["ts"]) <= end + 0.001
        ]
        headers = request.get("headers", {})
        records.append({
            "ts": end, "request_ts": round(start, 6), "end_ts": round(end, 6), "client": client,
            "frontend": request.get("host_listen") or None,
            "request": f"{request.get('method')} {request.get('uri')} {request.get('proto')}",
            "status": e.get("status"), "duration": e.get("duration"), "size": e.get("size"),
            "upstream": attempts[-1]["upstream"] if attempts else None, "attempts": attempts,
            "trace_id": None, "client_headers": sorted(headers),
        })
    return records


def _client_of(entry: dict[str, Any]) -> str:
    request = entry.get("request", {})
    return f"{request.get('remote_ip')}:{request.get('remote_port')}"
