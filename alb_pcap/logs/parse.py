"""Parsers for proxy logs: functions over one line of text, no I/O.

Formats (``LogLine.format``):

* ``alb``: AWS Application Load Balancer access logs, space-separated with quoted fields, every
  field of the current format (type ... trace_id ... error_reason, target:port_list,
  target_status_code_list, classification, classification_reason, conn_trace_id, transformed_host,
  transformed_uri, request_transform_status) and older lines that stop earlier (at least up to the
  request). ``time`` is when the response was sent, ``request_creation_time`` when the request came.
* ``alb_connection``: ALB connection logs (time, client ip, client port, listener port, TLS fields,
  tls_verify_status, conn_trace_id).
* ``nginx_combined`` and ``nginx_upstream`` (combined plus ``$upstream_addr $upstream_status
  $upstream_response_time $request_time $remote_port $msec``); ``nginx_custom`` from a ``log_format``
  string; ``nginx_error`` (error.log: ``upstream prematurely closed connection``, ``upstream timed
  out``, ``recv() failed (104: Connection reset by peer)``... with client, request and upstream).
* ``haproxy_httplog`` (``option httplog``, with or without a syslog prefix) and ``haproxy_custom``
  from a ``log-format`` string.

Times without a zone (nginx error.log, HAProxy's dates, a syslog prefix) are read as UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone

from .model import LogLine

MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


# -- small helpers -----------------------------------------------------------------------------


def iso_ts(text: str) -> float | None:
    """``2025-12-15T17:17:48.637503Z`` -> epoch seconds; None if not such a time."""
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


_CLF = re.compile(r"(\d{1,2})/(\w{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(\.\d+)?(?: ([+-])(\d{2})(\d{2}))?")


def clf_ts(text: str) -> float | None:
    """``22/Nov/2026:03:16:04 +0000`` (nginx) or ``06/Feb/2009:12:14:14.655`` (HAProxy) -> epoch."""
    m = _CLF.fullmatch(text)
    if not m or m[2] not in MONTHS:
        return None
    day, _, year, hh, mm, ss, frac, sign, oh, om = m.groups()
    try:
        moment = datetime(int(year), MONTHS[m[2]], int(day), int(hh), int(mm), int(ss), tzinfo=timezone.utc)
    except ValueError:
        return None
    ts = moment.timestamp() + (float(frac) if frac else 0.0)
    if sign:
        offset = (int(oh) * 60 + int(om)) * 60
        ts -= offset if sign == "+" else -offset
    return ts


def split_request(request: str | None) -> tuple[str | None, str | None]:
    """``GET http://h:80/p?q HTTP/1.1`` -> (``GET``, ``/p?q``); ``- - -`` -> (None, None)."""
    if not request:
        return None, None
    parts = request.split(" ")
    if len(parts) < 2 or parts[0] in ("-", ""):
        return None, None
    method, uri = parts[0], parts[1] if len(parts) == 2 else " ".join(parts[1:-1])
    return method, origin_form(uri)


def origin_form(uri: str | None) -> str | None:
    if not uri or uri == "-":
        return None
    if "://" in uri:
        rest = uri.split("://", 1)[1]
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    return uri


def endpoint(text: str | None) -> str | None:
    return None if not text or text in ("-", "-:-") else text


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "-", "") else None
    except ValueError:
        return None


def _last_of_list(text: str | None) -> str | None:
    """nginx ``$upstream_addr`` ``a:1, b:2 : c:3`` -> the last one tried."""
    if not text or text == "-":
        return None
    return re.split(r", | : ", text)[-1].strip() or None


def _list(text: str | None) -> tuple[str, ...]:
    if not text or text == "-":
        return ()
    return tuple(s.strip() for s in re.split(r", | : ", text) if s.strip())


def trace_root(value: str | None) -> str | None:
    """The part of a request id both the log and the wire share: X-Amzn-Trace-Id's Root, lower case."""
    if not value or value == "-":
        return None
    for part in value.split(";"):
        part = part.strip()
        if part.lower().startswith("root="):
            return part[5:].lower()
    return value.strip().lower()


# -- ALB -----------------------------------------------------------------------------------------

ALB_FIELDS = (
    "type", "time", "elb", "client:port", "target:port", "request_processing_time",
    "target_processing_time", "response_processing_time", "elb_status_code", "target_status_code",
    "received_bytes", "sent_bytes", "request", "user_agent", "ssl_cipher", "ssl_protocol",
    "target_group_arn", "trace_id", "domain_name", "chosen_cert_arn", "matched_rule_priority",
    "request_creation_time", "actions_executed", "redirect_url", "error_reason", "target:port_list",
    "target_status_code_list", "classification", "classification_reason", "conn_trace_id",
    "transformed_host", "transformed_uri", "request_transform_status",
)
"""The ALB access log's fields in order (AWS's documented entry format)."""
ALB_TYPES = frozenset({"http", "https", "h2", "grpcs", "ws", "wss"})
ALB_MIN_FIELDS = 13  # up to the request: anything shorter is a truncated line
_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s"]+)')


def tokens(line: str) -> list[str] | None:
    """Space-separated fields, quoted ones unquoted; None when a quote is left open."""
    out = []
    pos, n = 0, len(line)
    while pos < n:
        if line[pos] in " \t":
            pos += 1
            continue
        m = _TOKEN.match(line, pos)
        if m is None:
            return None  # an unterminated quote
        out.append(m[1] if m[1] is not None else m[2])
        pos = m.end()
        if pos < n and line[pos] not in " \t":
            return None  # "a"b: not this format
    return out


def alb_fields(line: str) -> dict[str, str] | None:
    """Every field of an ALB access log line by its documented name; None if the line is not one."""
    parts = tokens(line.strip())
    if not parts or len(parts) < ALB_MIN_FIELDS or parts[0] not in ALB_TYPES:
        return None
    if iso_ts(parts[1]) is None or not re.fullmatch(r"-?[\d.]+", parts[5]):
        return None
    fields = dict(zip(ALB_FIELDS, parts))
    if len(parts) > len(ALB_FIELDS):
        fields["_extra"] = " ".join(parts[len(ALB_FIELDS):])  # fields added after this parser
    return fields


def parse_alb(text: str, file: str = "", line: int = 0) -> LogLine | None:
    f = alb_fields(text)
    if f is None:
        return None
    end = iso_ts(f["time"])
    start = iso_ts(f.get("request_creation_time", "-"))
    if start is None and end is not None:  # older lines: the three processing times, -1 for none
        spent = sum(t for t in (_num(f[k]) for k in ALB_FIELDS[5:8]) if t is not None and t > 0)
        start = end - spent
    method, uri = split_request(f["request"])
    statuses = _list(f.get("target_status_code_list")) or (f["target_status_code"],)
    return LogLine(
        file, line, "alb", end, "end", 0.000001, start, end, f["elb_status_code"],
        endpoint(f["client:port"]), endpoint(f["target:port"]), None, method, uri,
        None if f.get("trace_id", "-") == "-" else f["trace_id"],
        f.get("error_reason", "-"),
        tuple((k, f[k]) for k in ("request_processing_time", "target_processing_time", "response_processing_time")),
        statuses)


def parse_alb_connection(text: str, file: str = "", line: int = 0) -> LogLine | None:
    """``time client_ip client_port listener_port tls_protocol tls_cipher tls_handshake_latency
    leaf_client_cert_subject leaf_client_cert_validity leaf_client_cert_serial_number tls_verify_status
    conn_trace_id``."""
    parts = tokens(text.strip())
    if not parts or len(parts) < 6 or not parts[0].endswith("Z") or "T" not in parts[0]:
        return None
    ts = iso_ts(parts[0])
    if ts is None or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    ip = parts[1]
    client = f"[{ip}]:{parts[2]}" if ":" in ip else f"{ip}:{parts[2]}"
    verify = parts[-2] if parts[-1].startswith("TID_") else parts[-1]
    trace = parts[-1] if parts[-1].startswith("TID_") else None
    return LogLine(file, line, "alb_connection", ts, "start", 0.000001, ts, None, None, client, None, None,
                   None, None, trace, verify, (("tls_handshake_latency", parts[6]),) if len(parts) > 6 else ())


# -- nginx ---------------------------------------------------------------------------------------

NGINX_COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                  '"$http_referer" "$http_user_agent"')
NGINX_UPSTREAM = NGINX_COMBINED + " $upstream_addr $upstream_status $upstream_response_time $request_time " \
                                  "$remote_port $msec"
_NGINX_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_NGINX_LIST = r"[^\s,]+(?:(?:, | : )[^\s,]+)*"
_NGINX_PATTERNS = {
    "time_local": r"\d{1,2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}",
    "upstream_addr": _NGINX_LIST, "upstream_status": _NGINX_LIST, "upstream_response_time": _NGINX_LIST,
    "upstream_connect_time": _NGINX_LIST, "upstream_header_time": _NGINX_LIST,
    "request": r".+?",
}
NGINX_ID_VARS = ("request_id", "trace_id", "http_x_amzn_trace_id", "http_x_request_id", "sent_http_x_request_id")
NGINX_TIMERS = ("request_time", "upstream_connect_time", "upstream_header_time", "upstream_response_time")


class NginxFormat:
    """A parser built from an nginx ``log_format`` string: each ``$variable`` becomes a field."""

    def __init__(self, log_format: str, name: str = "nginx_custom") -> None:
        self.name = name
        self.log_format = log_format
        pattern, self.variables = [], []
        pos = 0
        for m in _NGINX_VAR.finditer(log_format):
            before = log_format[pos:m.start()]
            pattern.append(re.escape(before))
            var = m[1] or m[2]
            after = log_format[m.end():m.end() + 1]
            quoted = before.endswith('"') and after == '"'
            if quoted:
                group = r'(?:[^"\\]|\\.)*'
            else:
                group = _NGINX_PATTERNS.get(var, r"[^\s\"]*?")
            pattern.append(f"({group})")
            self.variables.append(var)
            pos = m.end()
        pattern.append(re.escape(log_format[pos:]))
        self.regex = re.compile("".join(pattern) + r"\s*")
        if not self.variables:
            raise ValueError("an nginx log_format needs $variables")

    def fields(self, text: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(text.rstrip("\r\n"))
        return None if m is None else dict(zip(self.variables, m.groups()))

    def __call__(self, text: str, file: str = "", line: int = 0) -> LogLine | None:
        v = self.fields(text)
        if v is None:
            return None
        end, resolution = None, 0.001
        if _num(v.get("msec")) is not None:
            end = float(v["msec"])
        elif "time_iso8601" in v:
            end, resolution = iso_ts(v["time_iso8601"]), 1.0
        elif "time_local" in v:
            end, resolution = clf_ts(v["time_local"]), 1.0
        if "time_local" in v and clf_ts(v["time_local"]) is None:
            return None
        took = _num(v.get("request_time"))
        start = end - took if end is not None and took is not None else None
        if "request" in v:
            method, uri = split_request(v["request"])
        else:
            method, uri = v.get("request_method") or None, origin_form(v.get("request_uri") or v.get("uri"))
        status = v.get("status")
        if status is not None and not re.fullmatch(r"\d{3}", status):
            return None
        addr = v.get("remote_addr")
        port = v.get("remote_port")
        client = (f"{addr}:{port}" if port and port != "-" else addr) if addr and addr != "-" else None
        trace = next((v[k] for k in NGINX_ID_VARS if v.get(k) not in (None, "", "-")), None)
        timers = tuple((k, v[k]) for k in NGINX_TIMERS if k in v)
        return LogLine(file, line, self.name, end, "end", resolution, start, end, status, client,
                       _last_of_list(v.get("upstream_addr")), None, method, uri, trace, None, timers,
                       _list(v.get("upstream_status")))


_ERROR_LOG = re.compile(r"(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2}) \[(\w+)\] (\d+)#(\d+): (?:\*(\d+) )?(.*)")
_ERROR_FIELD = re.compile(r', (client|server|request|upstream|host|referrer): ("(?:[^"\\]|\\.)*"|[^,]*)')
ERROR_LEVELS = ("error", "crit", "alert", "emerg")


def parse_nginx_error(text: str, file: str = "", line: int = 0) -> LogLine | None:
    m = _ERROR_LOG.fullmatch(text.rstrip("\r\n"))
    if m is None:
        return None
    try:
        ts = datetime(*(int(g) for g in m.groups()[:6]), tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    level, rest = m[7], m[11]
    first = _ERROR_FIELD.search(rest)
    message = rest[:first.start()] if first else rest
    fields = {k: v.strip('"') for k, v in _ERROR_FIELD.findall(rest)}
    method, uri = split_request(fields.get("request"))
    upstream = fields.get("upstream")
    target = None
    if upstream and "://" in upstream:
        target = upstream.split("://", 1)[1].split("/", 1)[0]
    return LogLine(file, line, "nginx_error", ts, "end", 1.0, None, ts, None, fields.get("client"), target,
                   None, method, uri, None, f"[{level}] {message}")


# -- HAProxy -------------------------------------------------------------------------------------

_HTTPLOG = re.compile(
    r"(?P<ci>\S+):(?P<cp>\d+) \[(?P<tr>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2}\.\d{3})\] (?P<ft>\S+) "
    r"(?P<b>[^/\s]+)/(?P<s>\S+) (?P<TR>-?\d+)/(?P<Tw>-?\d+)/(?P<Tc>-?\d+)/(?P<Tr>-?\d+)/(?P<Ta>\+?-?\d+) "
    r"(?P<ST>-?\d+) (?P<B>\+?\d+) (?P<CC>\S+) (?P<CS>\S+) (?P<tsc>[-A-Za-z]{4}) (?P<conns>[-+\d/]+) "
    r"(?P<queues>[-\d/]+)(?: \{[^}]*\})*(?: \"(?P<r>[^\"]*)\"?)?\s*")
HAPROXY_TIMERS = ("TR", "Tw", "Tc", "Tr", "Ta")


def parse_haproxy_httplog(text: str, file: str = "", line: int = 0) -> LogLine | None:
    """``option httplog``; a syslog prefix (``Feb  6 12:14:14 host haproxy[14389]: ``) is skipped."""
    text = text.rstrip("\r\n")
    for m in _HTTPLOG.finditer(text):
        if m.end() != len(text):
            continue
        start = clf_ts(m["tr"])
        if start is None:
            return None
        ta = int(m["Ta"].lstrip("+"))
        method, uri = split_request(m["r"])
        return LogLine(file, line, "haproxy_httplog", start, "start", 0.001, start,
                       start + ta / 1000 if ta >= 0 else None, m["ST"], f"{m['ci']}:{m['cp']}", None, None,
                       method, uri, None, m["tsc"], tuple((k, m[k]) for k in HAPROXY_TIMERS))
    return None


_HAPROXY_VAR = re.compile(r"%(?:\{([^}]*)\})?([A-Za-z]+)")
_HAPROXY_PATTERNS = {"r": r".+?", "tr": r"\S+", "t": r"\S+", "trg": r"\S+", "trl": r"\S+ [+-]\d{4}",
                     "T": r"\S+ [+-]\d{4}", "Tl": r"\S+ [+-]\d{4}"}


class HaproxyFormat:
    """A parser built from an HAProxy ``log-format`` string (``%ci:%cp [%tr] ... %{+Q}r``)."""

    def __init__(self, log_format: str, name: str = "haproxy_custom") -> None:
        self.name = name
        fmt = log_format.replace("\\ ", " ").replace('\\"', '"')
        pattern, self.variables = [], []
        pos = 0
        for m in _HAPROXY_VAR.finditer(fmt):
            pattern.append(re.escape(fmt[pos:m.start()]))
            options, var = m[1] or "", m[2]
            if "+Q" in options:
                group = r'"((?:[^"\\]|\\.)*)"'
            else:
                group = "(" + _HAPROXY_PATTERNS.get(var, r"\S+?") + ")"
            pattern.append(group)
            self.variables.append(var)
            pos = m.end()
        pattern.append(re.escape(fmt[pos:]))
        self.regex = re.compile("".join(pattern) + r"\s*")
        if not self.variables:
            raise ValueError("an HAProxy log-format needs %variables")

    def fields(self, text: str) -> dict[str, str] | None:
        text = text.rstrip("\r\n")
        m = self.regex.fullmatch(text) or self.regex.search(text)
        if m is None or m.end() < len(text.rstrip()):
            return None
        return dict(zip(self.variables, m.groups()))

    def __call__(self, text: str, file: str = "", line: int = 0) -> LogLine | None:
        v = self.fields(text)
        if v is None:
            return None
        timers = {k: v[k].lstrip("+") for k in ("Th", "Ti", "TR", "Tq", "Tw", "Tc", "Tr", "Ta", "Tt") if k in v}
        if any(not re.fullmatch(r"-?\d+", t) for t in timers.values()):
            return None
        start = None
        if "tr" in v:
            start = clf_ts(v["tr"])
        elif "Ts" in v and v["Ts"].isdigit():
            accept = int(v["Ts"]) + (int(v["ms"]) / 1000 if v.get("ms", "").isdigit() else 0)
            start = accept + sum(max(0, int(timers.get(k, 0))) for k in ("Th", "Ti")) / 1000
        elif "t" in v and clf_ts(v["t"]) is not None:
            start = clf_ts(v["t"]) + sum(max(0, int(timers.get(k, 0))) for k in ("Th", "Ti")) / 1000
        ta = int(timers["Ta"]) if "Ta" in timers else None
        method, uri = split_request(v.get("r")) if "r" in v else (v.get("HM"), origin_form(v.get("HU")))

        def ep(ip: str, port: str) -> str | None:
            return f"{v[ip]}:{v[port]}" if v.get(ip) not in (None, "-") and v.get(port) not in (None, "-") else None

        shown = tuple((k, timers[k]) for k in ("TR", "Tq", "Tw", "Tc", "Tr", "Ta") if k in timers)
        return LogLine(
            file, line, self.name, start, "start", 0.001, start,
            start + ta / 1000 if start is not None and ta is not None and ta >= 0 else None,
            v.get("ST"), ep("ci", "cp"), ep("si", "sp"), ep("bi", "bp"), method, uri,
            v.get("ID") if v.get("ID") not in (None, "-") else None, v.get("tsc"), shown)


# -- recognising the format ----------------------------------------------------------------------

Parser = Callable[[str, str, int], "LogLine | None"]


def custom_parser(log_format: str) -> Parser:
    """``--log-format``: nginx syntax (``$variables``) or HAProxy's (``%ci``...)."""
    if _NGINX_VAR.search(log_format):
        return NginxFormat(log_format)
    return HaproxyFormat(log_format)


BUILTIN: tuple[tuple[str, Parser], ...] = (
    ("alb", parse_alb),
    ("haproxy_httplog", parse_haproxy_httplog),
    ("nginx_upstream", NginxFormat(NGINX_UPSTREAM, "nginx_upstream")),
    ("nginx_combined", NginxFormat(NGINX_COMBINED, "nginx_combined")),
    ("nginx_error", parse_nginx_error),
    ("alb_connection", parse_alb_connection),
)


class LineParser:
    """Recognises each line's format (the last one that fitted first) and counts what fits none."""

    def __init__(self, log_format: str | None = None) -> None:
        self.parsers: list[Parser] = ([custom_parser(log_format)] if log_format else []) + [p for _, p in BUILTIN]
        self._last = 0
        self.unparsed = 0
        self.parsed = 0
        self.examples: list[tuple[str, int]] = []
        """(file, line) of the first few lines that fit no format."""

    def parse(self, text: str, file: str = "", line: int = 0) -> LogLine | None:
        if not text.strip() or text.lstrip().startswith("#"):
            return None
        order = [self._last] + [i for i in range(len(self.parsers)) if i != self._last]
        for i in order:
            try:
                record = self.parsers[i](text, file, line)
            except (ValueError, OverflowError, IndexError):
                record = None
            if record is not None:
                self._last = i
                self.parsed += 1
                return record
        self.unparsed += 1
        if len(self.examples) < 5:
            self.examples.append((file, line))
        return None
