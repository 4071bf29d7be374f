"""Proxy and target configurations for the lab, and parsers for the logs they write.

Both proxies are set up like an ALB: one idle timeout for client-side idleness, target-side idleness
and waiting for a response; keep-alive and connection reuse towards the targets; X-Forwarded-For,
X-Forwarded-Port/Proto; a trace-id header shaped like X-Amzn-Trace-Id (`Root=1-<8 hex>-<24 hex>`).
Each request is logged with the fields that give ground truth. What a proxy cannot do is said where
its config is rendered.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .apache import APACHE_LOG_FORMAT, apache_config, parse_apache_log  # noqa: F401 (re-exported)
from .caddy import caddy_config, parse_caddy_log  # noqa: F401 (re-exported)

PROXIES = ("haproxy", "nginx", "apache", "caddy")
HEADERS = ("forwarding", "none")
"""Header configurations: "forwarding" adds X-Forwarded-For/-Port/-Proto and an X-Amzn-Trace-Id;
"none" is the proxy's default as far as the request's identity goes: no X-Forwarded-*, no request id
(Apache and Caddy add X-Forwarded-* by default; the lab turns them off)."""


@dataclass(frozen=True)
class ProxySetup:
    listen: str
    """The client-facing listener, ip:port (the ALB's front address)."""
    source_ip: str
    """The address the proxy opens target connections from (the ALB's back address)."""
    targets: tuple[str, ...]
    idle_timeout_s: float
    client_keepalive_duration_s: float | None = None
    """ALB `client_keep_alive.seconds`; nginx `keepalive_time`. HAProxy has no equivalent."""
    retries: bool = True
    """False turns off the proxy's own retries, which otherwise hide some 502s."""
    reuse: str = "always"
    """HAProxy `http-reuse`; `always` is closest to an ALB, which multiplexes freely."""
    headers: str = "forwarding"
    """"forwarding" or "none" (see HEADERS)."""


# HAProxy's log line: key=value pairs, the request quoted. %bi:%bp is the source of the target
# connection, which nginx cannot log. %Ts.%ms is the accept date; Th+Ti+TR later the request is in.
HAPROXY_LOG_FORMAT = (
    "accept=%Ts.%ms client=%ci:%cp frontend=%fi:%fp backend_src=%bi:%bp target=%si:%sp"
    " status=%ST tsc=%tsc Th=%Th Ti=%Ti TR=%TR Tw=%Tw Tc=%Tc Tr=%Tr Ta=%Ta Tt=%Tt"
    " retries=%rc bytes_read=%B request=%{+Q}r trace_id=%ID"
)


def haproxy_config(setup: ProxySetup) -> str:
    idle = _ms(setup.idle_timeout_s)
    servers = "\n".join(
        # pool-purge-delay is HAProxy's nearest thing to an idle timeout for target connections:
        # every period it closes *half* of the idle ones, so idle closes come in waves.
        f"    server t{i} {t} pool-purge-delay {idle}"
        for i, t in enumerate(setup.targets, 1)
    )
    retries = "" if setup.retries else "    retries 0\n    retry-on none\n"
    # "none": the unique id is still made and logged (the proxy's own request id) but not sent.
    forwarding = setup.headers == "forwarding"
    forwardfor = "    option forwardfor\n" if forwarding else ""
    id_header = "    unique-id-header X-Amzn-Trace-Id\n" if forwarding else ""
    set_headers = (
        "    http-request set-header X-Forwarded-Port %[dst_port]\n"
        "    http-request set-header X-Forwarded-Proto http\n" if forwarding else ""
    )
    return f"""global
    log stdout format raw local0
    maxconn 4096

defaults
    mode http
    log global
    log-format "{HAPROXY_LOG_FORMAT}"
    option http-keep-alive
{forwardfor}    http-reuse {setup.reuse}
    timeout connect 2s
    timeout client {idle}
    timeout server {idle}
    timeout http-request {idle}
    timeout http-keep-alive {idle}
{retries}    # A random 24-hex id after the hex epoch, as in X-Amzn-Trace-Id.
    unique-id-format "Root=1-%{{+X}}Ts-%[uuid,regsub(-,,g),bytes(0,24)]"
{id_header}
frontend alb
    bind {setup.listen}
{set_headers}    default_backend targets

backend targets
    balance roundrobin
    source {setup.source_ip}
{servers}
"""


NGINX_PROXY_LOG_FORMAT = (
    '{"ts":$msec,"client":"$remote_addr:$remote_port","frontend":"$server_addr:$server_port",'
    '"connection":$connection,"connection_requests":$connection_requests,"request":"$request",'
    '"status":$status,"request_time":$request_time,"upstream_addr":"$upstream_addr",'
    '"upstream_status":"$upstream_status","upstream_connect_time":"$upstream_connect_time",'
    '"upstream_header_time":"$upstream_header_time","trace_id":"$trace_id"}'
)


def nginx_proxy_config(setup: ProxySetup, run_dir: Path) -> str:
    idle = _s(setup.idle_timeout_s)
    duration = _s(setup.client_keepalive_duration_s) if setup.client_keepalive_duration_s else "1h"
    # max_fails=0: no passive health checks. By default one 502/504 marks a target down for 10 s
    # and every request meanwhile gets an instant 502 "no live upstreams"; an ALB does not do that.
    servers = "\n".join(f"        server {t} max_fails=0;" for t in setup.targets)
    # proxy_next_upstream off: no second attempt; otherwise a failure on a reused connection
    # is retried without using up a try, and the client never sees that 502.
    retries = "" if setup.retries else "            proxy_next_upstream off;\n"
    # "none": nginx's defaults (Host: the upstream's name, no X-Forwarded-*, no id); $request_id
    # is still logged as the proxy's own request id.
    headers = (
        "            proxy_set_header Host $host;\n"
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "            proxy_set_header X-Forwarded-Port $server_port;\n"
        "            proxy_set_header X-Forwarded-Proto $scheme;\n"
        "            proxy_set_header X-Amzn-Trace-Id $trace_id;\n"
        if setup.headers == "forwarding" else ""
    )
    return f"""{_nginx_main(run_dir, "proxy")}
http {{
    log_format lab escape=json '{NGINX_PROXY_LOG_FORMAT}';
    access_log {run_dir}/proxy-access.log lab;
{_nginx_temp_paths(run_dir)}
    keepalive_timeout {idle};
    keepalive_time {duration};
    client_header_timeout {idle};
    client_body_timeout {idle};
    send_timeout {idle};
    # nginx cannot print the epoch in hex: the first 8 hex digits are random, not the time.
    map $request_id $trace_id {{
        "~^(?<a>.{{8}})(?<b>.{{24}})$" "Root=1-$a-$b";
    }}
    upstream targets {{
{servers}
        keepalive 16;
        keepalive_timeout {idle};
    }}
    server {{
        listen {setup.listen};
        location / {{
            proxy_pass http://targets;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{headers}            proxy_bind {setup.source_ip};
            proxy_connect_timeout 2s;
            proxy_read_timeout {idle};
            proxy_send_timeout {idle};
{retries}        }}
    }}
}}
"""


NGINX_TARGET_LOG_FORMAT = (
    '{"ts":$msec,"event":"response","peer":"$remote_addr:$remote_port",'
    '"local":"$server_addr:$server_port","connection":$connection,'
    '"connection_requests":$connection_requests,"request":"$request","status":$status,'
    '"trace_id":"$http_x_amzn_trace_id","xff":"$http_x_forwarded_for"}'
)


def nginx_target_config(listen: str, keepalive_timeout_s: float, run_dir: Path) -> str:
    """A plain keep-alive target; keepalive_timeout 0 turns keep-alive off."""
    return f"""{_nginx_main(run_dir, "target")}
http {{
    log_format lab escape=json '{NGINX_TARGET_LOG_FORMAT}';
    access_log {run_dir}/target-access.log lab;
{_nginx_temp_paths(run_dir)}
    keepalive_timeout {_s(keepalive_timeout_s)};
    default_type text/plain;
    server {{
        listen {listen};
        location / {{
            return 200 "ok\\n";
        }}
    }}
}}
"""


def _nginx_main(run_dir: Path, role: str) -> str:
    # root workers: the run directory is root's; a lab, not a deployment.
    return f"""user root;
worker_processes 1;
daemon off;
pid {run_dir}/{role}-nginx.pid;
error_log {run_dir}/{role}-error.log info;
events {{
    worker_connections 1024;
}}"""


def _nginx_temp_paths(run_dir: Path) -> str:
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    return "\n".join(f"    {k}_temp_path {run_dir}/tmp-{k};" for k in kinds)


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _s(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms" if seconds != int(seconds) else f"{int(seconds)}s"


def parse_haproxy_log(text: str) -> list[dict[str, Any]]:
    """One dict per request line; timers as ints (ms, -1 = never happened), times as epoch floats.

    `request_ts` = accept + Th + Ti (when the request started), `end_ts` = request_ts + Ta.
    """
    records = []
    for line in text.splitlines():
        if not line.startswith("accept="):
            continue  # HAProxy's own notices share stdout
        fields = dict(item.partition("=")[::2] for item in shlex.split(line))
        record: dict[str, Any] = dict(fields)
        for timer in ("Th", "Ti", "TR", "Tw", "Tc", "Tr", "Ta", "Tt", "status", "retries"):
            record[timer] = int(fields[timer].lstrip("+"))
        record["accept"] = float(fields["accept"])
        record["request_ts"] = round(record["accept"] + (record["Th"] + record["Ti"]) / 1000, 3)
        record["end_ts"] = round(record["request_ts"] + max(record["Ta"], 0) / 1000, 3)
        records.append(record)
    return records


def parse_nginx_log(text: str) -> list[dict[str, Any]]:
    """One dict per request; `request_ts` = the log time ($msec) minus $request_time."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        record["end_ts"] = record["ts"]
        record["request_ts"] = round(record["ts"] - record.get("request_time", 0), 3)
        records.append(record)
    return records


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    """The Python target's and client's logs."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
