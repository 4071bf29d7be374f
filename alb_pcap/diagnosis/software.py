"""Which proxy it is, from what it writes on the wire, and its timers in its own words.

A proxy gives itself away in what it makes up: the ``Server`` header of its own
error responses (``awselb/2.0``, ``nginx/1.22.1``, ``Apache``, ``Caddy``), HAProxy's
lower-cased header names (HTX) on both the requests it sends and the errors it
answers, Apache's ``X-Forwarded-Server``, Envoy's ``x-envoy-*``. A response the
proxy only relayed carries the target's ``Server``, so that header counts only on
the statuses proxies make up. Each exchange yields at most one hint; a proxy is
named by the most common hint of its listeners and back addresses.
"""

from __future__ import annotations

from collections import Counter

SERVERS = (("awselb", "ALB"), ("nginx", "nginx"), ("apache", "Apache"), ("caddy", "Caddy"),
           ("envoy", "Envoy"), ("haproxy", "HAProxy"))
PROXY_MADE = frozenset({408, 460, 499, 502, 503, 504})


def from_response(headers: tuple[tuple[str, str], ...], status: int | None,
                  lowered: dict[str, str] | None = None) -> str | None:
    """The proxy named by a response it sent to a client (front side).

    ``lowered``: the headers by lower-cased name, when the caller has them already (``ref_of``).
    """
    if lowered is None:
        lowered = {n.lower(): v for n, v in headers}
    if any(n.startswith("x-envoy-") for n in lowered):
        return "Envoy"
    if status not in PROXY_MADE:
        return None  # a relayed response speaks for the target
    server = next((v.lower() for n, v in headers if n.lower() == "server"), None)  # the first one
    if server is None:
        return "HAProxy" if headers and all(n.islower() for n, _ in headers) else None
    return next((name for prefix, name in SERVERS if server.startswith(prefix)), None)


def from_request(headers: tuple[tuple[str, str], ...], ts_ns: int | None = None,
                 lowered: dict[str, str] | None = None) -> str | None:
    """The proxy named by a request it sent to a target (back side).

    ``lowered``: the headers by lower-cased name (the last value), when the caller has them already.
    """
    if lowered is None:
        lowered = {n.lower(): v for n, v in headers}
    if any(n.startswith("x-envoy-") for n in lowered):
        return "Envoy"
    if "x-forwarded-server" in lowered:
        return "Apache"
    if len(headers) >= 2 and all(n.islower() for n, _ in headers):
        return "HAProxy"
    if "x-forwarded-for" in lowered and _alb_trace(lowered.get("x-amzn-trace-id"), ts_ns):
        return "ALB"
    return None


def _alb_trace(value: str | None, ts_ns: int | None) -> bool:
    """An ALB's trace id: ``Root=1-<request time, 8 hex digits>-<24 hex digits>``."""
    if not value or ts_ns is None:
        return False
    root = next((p.strip()[5:] for p in value.split(";") if p.strip().lower().startswith("root=")), "")
    parts = root.split("-")
    if len(parts) != 3 or parts[0] != "1" or len(parts[1]) != 8 or len(parts[2]) != 24:
        return False
    try:
        return abs(int(parts[1], 16) - ts_ns // 1_000_000_000) < 86_400
    except ValueError:
        return False


class Hints:
    """Hints per address (a listener ip:port or a back address), bounded."""

    MAX = 4096
    ENOUGH = 256
    """Exchanges looked at per address: by then the software has said what it is, or will not."""

    def __init__(self) -> None:
        self._by_key: dict[str, Counter[str]] = {}
        self._seen: dict[str, int] = {}

    def hungry(self, *keys: str) -> bool:
        """Is another exchange worth reading for hints? Not once one of its addresses has shown enough."""
        return all(self._seen.get(key, 0) < self.ENOUGH for key in keys)

    def add(self, key: str, hint: str | None) -> None:
        if key not in self._seen and len(self._seen) >= self.MAX:
            return
        self._seen[key] = self._seen.get(key, 0) + 1
        if hint is not None:
            hints = self._by_key.get(key)
            if hints is None:  # (setdefault would build a Counter per exchange)
                hints = self._by_key[key] = Counter()
            hints[hint] += 1

    def name(self, keys: tuple[str, ...]) -> str | None:
        total: Counter[str] = Counter()
        for key in keys:
            total.update(self._by_key.get(key, {}))
        return total.most_common(1)[0][0] if total else None


# -- the settings behind each timer, per proxy --------------------------------------------------

GENERIC = {
    "proxy": "the proxy",
    "idle": "its idle timeout",
    "target_idle": "its idle timeout for target connections",
    "response": "its response timeout",
    "max_age": "its maximum client connection age",
    "fix_race": "Set the target's keep-alive timeout above the proxy's idle timeout for target connections "
                "(for an ALB's 60 s: 61-62 s), so the proxy, not the target, closes idle connections.",
    "fix_timeout": "Make the target answer within the proxy's response timeout, or raise that timeout above "
                   "the longest request.",
}

WORDS = {
    "ALB": {
        "proxy": "the ALB",
        "idle": "its idle timeout (idle_timeout.timeout_seconds, default 60 s)",
        "target_idle": "its idle timeout (idle_timeout.timeout_seconds, default 60 s)",
        "response": "its idle timeout (idle_timeout.timeout_seconds: the ALB answers 504 when the target is "
                    "silent that long)",
        "max_age": "its client keep-alive duration (client_keep_alive.seconds, default 3600 s)",
        "fix_race": "Set the target's keep-alive timeout above the ALB's idle_timeout.timeout_seconds (60 s "
                    "-> 61-62 s), so the ALB always closes idle connections first.",
        "fix_timeout": "Make the target answer within the ALB's idle_timeout.timeout_seconds, or raise it above "
                       "the longest request.",
    },
    "nginx": {
        "proxy": "nginx",
        "idle": "keepalive_timeout",
        "target_idle": "keepalive_timeout in the upstream block",
        "response": "proxy_read_timeout",
        "max_age": "keepalive_time",
        "fix_race": "Set the target's keep-alive timeout above nginx's upstream keepalive_timeout (the upstream "
                    "block's, default 60 s), so nginx closes idle upstream connections first.",
        "fix_timeout": "Make the target answer within nginx's proxy_read_timeout, or raise it above the longest "
                       "request.",
    },
    "HAProxy": {
        "proxy": "HAProxy",
        "idle": "timeout http-keep-alive (else timeout client)",
        "target_idle": "pool-purge-delay (idle server connections are purged in halves, not on an idle timer)",
        "response": "timeout server",
        "max_age": "no maximum client connection age",
        "fix_race": "Set the target's keep-alive timeout above HAProxy's pool-purge-delay and timeout server, "
                    "or lower pool-purge-delay, so HAProxy drops idle server connections first.",
        "fix_timeout": "Make the target answer within HAProxy's timeout server, or raise it above the longest "
                       "request.",
    },
    "Apache": {
        "proxy": "Apache httpd",
        "idle": "KeepAliveTimeout",
        "target_idle": "ProxyPass ttl= (pooled backend connections)",
        "response": "ProxyTimeout (else Timeout); Apache answers it with 502, not 504",
        "max_age": "MaxKeepAliveRequests (Apache limits requests, not age)",
        "fix_race": "Set ProxyPass ... ttl= below the target's keep-alive timeout (or the target's timeout above "
                    "it), so Apache retires pooled connections first.",
        "fix_timeout": "Make the target answer within Apache's ProxyTimeout, or raise it above the longest "
                       "request.",
    },
    "Caddy": {
        "proxy": "Caddy",
        "idle": "servers { timeouts { idle } } (default 5 m)",
        "target_idle": "reverse_proxy transport http { keepalive } (idle connections, default 2 m)",
        "response": "reverse_proxy transport http { response_header_timeout }",
        "max_age": "no maximum client connection age",
        "fix_race": "Set the target's keep-alive timeout above Caddy's transport keepalive (default 2 m), or "
                    "lower that, so Caddy closes idle upstream connections first.",
        "fix_timeout": "Make the target answer within Caddy's response_header_timeout, or raise it.",
    },
    "Envoy": {
        "proxy": "Envoy",
        "idle": "the HTTP connection manager's common_http_protocol_options.idle_timeout (default 1 h)",
        "target_idle": "the cluster's common_http_protocol_options.idle_timeout (default 1 h)",
        "response": "the route's timeout (default 15 s)",
        "max_age": "max_connection_duration",
        "fix_race": "Set the cluster's common_http_protocol_options.idle_timeout below the target's keep-alive "
                    "timeout, so Envoy closes idle upstream connections first.",
        "fix_timeout": "Make the target answer within the route's timeout, or raise it.",
    },
}


# What an ALB answers the client, by the kind of failure (its documentation, the seed KB article).
ALB_ANSWERS = {"keepalive_race": 502, "target_reset": 502, "gateway_timeout": 504, "client_abort": 460,
               "target_connect_refused": 502, "target_connect_timeout": 504}


def words(software: str | None) -> dict[str, str]:
    return WORDS.get(software or "", GENERIC)
