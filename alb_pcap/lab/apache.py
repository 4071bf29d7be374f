"""Apache httpd (mod_proxy_http behind mod_proxy_balancer) as an ALB-like proxy, and its log parser.

Like the other proxies: one idle timeout for client idleness (`KeepAliveTimeout`, `Timeout`,
mod_reqtimeout), target idleness (the workers' `ttl=`) and waiting for a response (`ProxyTimeout`);
keep-alive and reuse towards the targets (the default for balancer workers: pooled connections,
`disablereuse=Off`); `ProxySourceAddress` for the back address. One child process
(`ServerLimit 1`) so there is one connection pool, as an ALB node has.

What Apache cannot do like an ALB: there is no maximum client connection age (`MaxKeepAliveRequests`
counts requests, not seconds), so the client keep-alive duration scenario is skipped; and it cannot
log the local port of its target connection (neither the access log nor `proxy:trace` error-log
lines give it), so target flows come from the target's log, joined by time (expected.py).

Header configurations: "forwarding" adds X-Forwarded-For/-Host/-Server (`ProxyAddHeaders On`, the
default), X-Forwarded-Port/-Proto and a trace id `X-Amzn-Trace-Id: Root=1-<32 hex>` (mod_headers
cannot cut a string, so the id is the md5 of mod_unique_id's id, not the ALB's 8-24 shape); "none"
turns `ProxyAddHeaders Off` and sends no id. mod_unique_id's id is logged in both, as the proxy's
own request id: it never crosses the proxy in "none".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODULES = (
    "mpm_event", "authz_core", "headers", "unique_id", "reqtimeout", "slotmem_shm",
    "proxy", "proxy_http", "proxy_balancer", "lbmethod_byrequests",
)
MODULE_DIR = "/usr/lib/apache2/modules"

# One JSON object per request. begin/end are the request's start and the log time; %D is µs;
# %k counts earlier requests on the client connection; %X is how the client connection ended
# (X aborted, + kept alive, - closed); BALANCER_WORKER_NAME is the target worker that served it.
APACHE_LOG_FORMAT = (
    '{"begin":%{begin:sec}t.%{begin:msec_frac}t,"end":%{end:sec}t.%{end:msec_frac}t,'
    '"client":"%a:%{remote}p","frontend":"%A:%{local}p","keepalive_requests":%k,'
    '"request":"%r","status":%>s,"duration_us":%D,"conn_status":"%X",'
    '"upstream":"%{BALANCER_WORKER_NAME}e","request_id":"%{UNIQUE_ID}e",'
    '"trace_id":"%{X-Amzn-Trace-Id}i"}'
)


def apache_config(setup: Any, run_dir: Path) -> str:
    """`setup` is a proxies.ProxySetup."""
    idle = _whole(setup.idle_timeout_s)
    forwarding = setup.headers == "forwarding"
    port = setup.listen.rsplit(":", 1)[1]
    # retry=0: a worker that failed once is not put in error state for 60 s (the default would
    # turn one target FIN into 503s for everyone, as nginx's max_fails does; an ALB does not).
    members = "\n".join(
        f"    BalancerMember http://{t} ttl={idle} retry=0 keepalive=On" for t in setup.targets
    )
    # maxattempts=0: no second target after a failed one (Apache's only retry across workers).
    retries = "" if setup.retries else "    ProxySet maxattempts=0\n"
    headers = (
        "ProxyAddHeaders On\n"
        f'RequestHeader set X-Forwarded-Port "{port}"\n'
        "RequestHeader set X-Forwarded-Proto http\n"
        'RequestHeader set X-Amzn-Trace-Id "expr=Root=1-%{md5:%{reqenv:UNIQUE_ID}}"\n'
        if forwarding
        else "ProxyAddHeaders Off\n"
    )
    loads = "\n".join(f"LoadModule {m}_module {MODULE_DIR}/mod_{m}.so" for m in MODULES)
    return f"""ServerRoot {run_dir}
ServerName lab-proxy
{loads}
PidFile {run_dir}/apache.pid
DefaultRuntimeDir {run_dir}
Mutex file:{run_dir} default
ScoreBoardFile {run_dir}/apache.scoreboard
ErrorLog {run_dir}/apache-error.log
LogLevel warn proxy:debug proxy_http:debug proxy_balancer:debug
LogFormat '{APACHE_LOG_FORMAT}' lab
CustomLog {run_dir}/apache-access.log lab
User www-data
Group www-data
Listen {setup.listen}

# One child process: one pool of target connections, as one ALB node has.
StartServers 1
ServerLimit 1
ThreadsPerChild 64
ThreadLimit 64
MinSpareThreads 1
MaxSpareThreads 64
MaxRequestWorkers 64

KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout {idle}
Timeout {idle}
RequestReadTimeout header={idle} body={idle}
ProxyTimeout {idle}
ProxySourceAddress {setup.source_ip}
ProxyPreserveHost On
{headers}
<Proxy "balancer://targets">
{members}
    ProxySet lbmethod=byrequests
{retries}</Proxy>
ProxyPass "/" "balancer://targets/"
"""


def _whole(seconds: float) -> str:
    """ttl=, ProxyTimeout and RequestReadTimeout take whole seconds."""
    if seconds != int(seconds):
        raise ValueError(f"Apache needs a whole number of seconds here, not {seconds}")
    return str(int(seconds))


def parse_apache_log(text: str) -> list[dict[str, Any]]:
    """One dict per request: `request_ts` = begin, `end_ts` = begin + %D; `upstream` = ip:port."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        record["request_ts"] = round(record["begin"], 6)
        record["end_ts"] = round(record["begin"] + record["duration_us"] / 1e6, 6)
        upstream = record.get("upstream") or "-"
        record["upstream"] = None if upstream == "-" else upstream.split("://", 1)[-1].rstrip("/")
        for key in ("trace_id", "request_id"):
            if record.get(key) == "-":
                record[key] = None
        records.append(record)
    return records
