"""Ground truth for a lab capture: `<scenario>-<proxy>.expected.json`, written without alb-pcap.

Sources, strongest first: the proxy's own access log (status, client address, HAProxy's termination
state and target source port, the trace id), the Python target's log (when it closed which
connection and why, with the request outstanding or unread), the client's log (when it gave up),
and the SYN/FIN/RST times of the plain front and back captures (`wire.py`), which are the only
record of idle closes because no proxy logs those. Kinds follow issue 4; each rule below says which
log decides the kind, and each finding names where its `ts` comes from.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import proxies, wire
from .scenarios import Scenario

LISTENER = "198.18.1.1:80"
SOURCE = (
    "proxy log + target log + client log + front/back capture SYN/FIN/RST times (alb_pcap/lab/wire.py); "
    "kinds and statuses come from the logs and the scenario design, never from alb-pcap's analysis"
)
# A close this soon after the last exchange ended is the end of that exchange (Connection: close,
# an error response), not an idle close.
MIN_IDLE_S = 0.3
TS_TOLERANCE_S = {"proxy log": 0.01, "target log": 0.01, "client log": 0.01, "capture": 0.005}

Finding = dict[str, Any]


class AmbiguousLink(Exception):
    """The logs do not say which target request a client request caused (or the reverse)."""


class Logs:
    """The parsed logs of one run, with the lookups the rules need.

    Links between a proxy record (a client request) and the target's record of the request it sent:

    - "forwarding" runs whose proxy logs the trace id it sent (HAProxy, nginx, Apache): the
      X-Amzn-Trace-Id the target logged;
    - otherwise HAProxy: its `%bi:%bp` (the target connection's source) is the peer the target
      logged, within the record's time;
    - otherwise (nginx, Apache, Caddy without a crossing header): a time join. A target request is a
      candidate for a proxy record when it went to a target the proxy logged for it, has the same
      method and path, and was logged between the record's start and end (± LINK_SLACK_S). Each
      group of records and requests connected by candidacy must have exactly one one-to-one
      assignment; otherwise the link is ambiguous and a finding that needs it raises AmbiguousLink.
    """

    def __init__(self, proxy: str, run_dir: Path, headers: str = "forwarding") -> None:
        def text(name: str) -> str:
            path = run_dir / name
            return path.read_text() if path.exists() else ""

        self.proxy_name = proxy
        self.headers = headers
        if proxy == "haproxy":
            self.proxy = proxies.parse_haproxy_log(text("haproxy.out"))
        elif proxy == "apache":
            self.proxy = proxies.parse_apache_log(text("apache-access.log"))
        elif proxy == "caddy":
            self.proxy = proxies.parse_caddy_log(text("caddy.log"))
        else:
            self.proxy = proxies.parse_nginx_log(text("proxy-access.log"))
        for record in self.proxy:
            _normalise(proxy, record)
        self.target_is_python = (run_dir / "target-python.out").exists()
        self.target = proxies.parse_json_lines(text("target-python.out"))
        if not self.target_is_python:
            self.target = proxies.parse_nginx_log(text("target-access.log"))
        self.client = proxies.parse_json_lines(text("client.out")) + proxies.parse_json_lines(text("curl.out"))
        self.by_trace_id = headers == "forwarding" and proxy != "caddy"
        self.link_method = (
            "trace id" if self.by_trace_id else "haproxy %bi:%bp" if proxy == "haproxy" else "time join"
        )
        self._links, self._ambiguous, self._ambiguous_events = (
            ({}, set(), set()) if self.by_trace_id else link(self.proxy, self.target, proxy)
        )

    def target_flow_of(self, record: dict[str, Any] | None) -> str | None:
        """The target flow that carried the request of this proxy record (its first attempt)."""
        if record is None:
            return None
        if self.by_trace_id:
            trace_id = record.get("trace_id")
            for event in self.target:
                if trace_id and event.get("trace_id") == trace_id:
                    return f"{event['peer']}->{event['local']}"
            return None
        i = self.proxy.index(record)
        if i in self._ambiguous:
            raise AmbiguousLink(f"which target request did {record['client']} {record.get('request')!r} "
                                f"at {record['request_ts']} cause? the logs allow several")
        events = self._links.get(i, [])
        return f"{self.target[events[0]]['peer']}->{self.target[events[0]]['local']}" if events else None

    def proxy_record_of(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The proxy record of the client request that made the target log this event."""
        if self.by_trace_id:
            trace_id = event.get("trace_id")
            return next((r for r in self.proxy if trace_id and r.get("trace_id") == trace_id), None)
        request = self._request_event_of(event)
        if request is None:
            return None
        j = self.target.index(request)
        for i, events in self._links.items():
            if j in events:
                return self.proxy[i]
        if j in self._ambiguous_events:
            raise AmbiguousLink(f"which client request caused the target's {request.get('method')} "
                                f"{request.get('path')} from {request['peer']} at {request['ts']}?")
        return None

    def _request_event_of(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """A close event's request: the last request the target logged on that connection before it."""
        if event.get("event") != "close":
            return event
        earlier = [e for e in self.target if e.get("event") == "request" and e["peer"] == event["peer"]
                   and e["local"] == event["local"] and e["ts"] <= event["ts"]]
        return earlier[-1] if earlier else None

    def target_activity(self, peer: str) -> list[float]:
        return [e["ts"] for e in self.target if e.get("peer") == peer and e.get("event") != "close"]

    def client_waiting_at(self, local: str, ts: float) -> bool:
        """Had the client sent a request on this connection without any outcome by ts?"""
        events = [c for c in self.client if c["local"] == local and c["ts"] <= ts]
        sent = sum(c["event"] == "request" for c in events)
        return sent > sum(c["event"] in ("response", "timeout", "server_close") for c in events)

    def client_gave_up_before(self, local: str, ts: float) -> bool:
        return any(c["event"] == "timeout" and c["local"] == local and c["ts"] <= ts for c in self.client)

    def outstanding_at(self, peer: str, ts: float) -> bool:
        """Did the target hold a request from peer without having answered it at ts?"""
        events = [e for e in self.target if e.get("peer") == peer and e["ts"] <= ts]
        requests = sum(e["event"] == "request" for e in events)
        answered = sum(e["event"] == "response" for e in events)
        return self.target_is_python and requests > answered


# Log times are in ms (nginx $msec, HAProxy %ms, Apache msec_frac): a request logged by the target
# up to this much outside the proxy record's interval still belongs to it.
LINK_SLACK_S = 0.002
MAX_GROUP = 8


def _normalise(proxy: str, record: dict[str, Any]) -> None:
    """Add `method`, `path` and `targets` (the target addresses the proxy logged) to a record."""
    method, _, rest = (record.get("request") or "").partition(" ")
    record["method"], record["path"] = method, rest.split(" ")[0]
    record["frontend"] = record.get("frontend") or LISTENER  # Caddy 2.6 does not log it; one listener
    if proxy == "haproxy":
        targets = [record.get("target")]
    elif proxy == "nginx":
        targets = [a.strip() for a in (record.get("upstream_addr") or "").split(",")]
    elif proxy == "caddy":
        targets = [a["upstream"] for a in record.get("attempts", [])]
    else:
        targets = [record.get("upstream")]
    record["targets"] = sorted({t for t in targets if t and t[0].isdigit()})


def link(records: list[dict[str, Any]], target: list[dict[str, Any]], proxy: str
         ) -> tuple[dict[int, list[int]], set[int], set[int]]:
    """Proxy record index -> target event indices; the records and the target events whose link is
    ambiguous."""
    requests = [j for j, e in enumerate(target) if e.get("event", "response") in ("request", "response")]
    candidates: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        for j in requests:
            e = target[j]
            if not r["request_ts"] - LINK_SLACK_S <= e["ts"] <= r["end_ts"] + LINK_SLACK_S:
                continue
            if proxy == "haproxy":
                if f"{e['peer']}->{e['local']}" != f"{r.get('backend_src')}->{r.get('target')}":
                    continue
            elif e["local"] not in r["targets"] or _method_path(e) != (r["method"], r["path"]):
                continue
            candidates.setdefault(i, []).append(j)
    links: dict[int, list[int]] = {}
    ambiguous: set[int] = set()
    ambiguous_events: set[int] = set()
    for group_records, group_events in _groups(candidates):
        if len(group_records) == 1:
            links[group_records[0]] = sorted(group_events)
            continue
        matchings = _matchings(group_records, sorted(group_events), candidates)
        if len(matchings) == 1:
            links.update({i: [j] for i, j in matchings[0].items()})
        else:
            ambiguous.update(group_records)
            ambiguous_events.update(group_events)
    return links, ambiguous, ambiguous_events


def _method_path(event: dict[str, Any]) -> tuple[str, str]:
    if "method" in event:
        return event["method"], event["path"]
    method, _, rest = event.get("request", "").partition(" ")  # the nginx target's log
    return method, rest.split(" ")[0]


def _groups(candidates: dict[int, list[int]]) -> list[tuple[list[int], set[int]]]:
    """Connected components of the record/event candidacy graph."""
    groups: list[tuple[list[int], set[int]]] = []
    for i, events in sorted(candidates.items()):
        touching = [g for g in groups if g[1] & set(events)]
        merged = ([i], set(events))
        for g in touching:
            groups.remove(g)
            merged = (merged[0] + g[0], merged[1] | g[1])
        groups.append((sorted(merged[0]), merged[1]))
    return groups


def _matchings(records: list[int], events: list[int], candidates: dict[int, list[int]]) -> list[dict[int, int]]:
    """Every assignment of a distinct candidate event to each record (at most 2 are needed)."""
    if len(records) != len(events) or len(records) > MAX_GROUP:
        return []
    found: list[dict[int, int]] = []

    def extend(k: int, used: set[int], chosen: dict[int, int]) -> None:
        if len(found) > 1:
            return
        if k == len(records):
            found.append(dict(chosen))
            return
        for j in candidates[records[k]]:
            if j not in used:
                chosen[records[k]] = j
                extend(k + 1, used | {j}, chosen)
                del chosen[records[k]]

    extend(0, set(), {})
    return found


def derive(scenario: Scenario, proxy: str, run_dir: Path, topology: dict[str, Any],
           headers: str = "forwarding", stem: str | None = None) -> dict[str, Any]:
    logs = Logs(proxy, run_dir, headers)
    front = wire.read_conns(run_dir / "front.pcap")
    back = wire.read_conns(run_dir / "back.pcap")
    findings = (
        gateway_timeouts(logs, scenario)
        + client_aborts(logs)
        + target_closes(logs, scenario)
        + nginx_target_keepalive_closes(logs, back, scenario)
        + idle_closes(logs, front, back, scenario)
        + client_keepalive_expiries(logs, front, scenario)
    )
    return {
        "capture": f"{stem or f'{scenario.name}-{proxy}'}.pcap",
        "scenario": scenario.name,
        "proxy": proxy,
        "headers": headers,
        "description": scenario.description,
        "topology": topology,
        "timers": asdict(scenario.timers),
        "source": SOURCE,
        "links": f"client request <-> target request by {logs.link_method} (alb_pcap/lab/expected.py, Logs)",
        "findings": sorted(findings, key=lambda f: f["ts"]),
        "proxy_log": logs.proxy,
        "target_log": logs.target,
        "client_log": logs.client,
    }


def finding(kind: str, ts: float, side: str, ts_source: str, *, client_flow: str | None = None,
            target_flow: str | None = None, status: int | None = None, **extra: Any) -> Finding:
    return {
        "kind": kind, "ts": round(ts, 6), "ts_source": ts_source, "ts_tolerance_s": TS_TOLERANCE_S[ts_source],
        "side": side, "client_flow": client_flow, "target_flow": target_flow, "status": status, **extra,
    }


def _client_flow(record: dict[str, Any]) -> str:
    return f"{record['client']}->{record['frontend']}"


def gateway_timeouts(logs: Logs, scenario: Scenario) -> list[Finding]:
    """The proxy logged 504 (HAProxy sH--), or (Apache answers its ProxyTimeout with 502) it logged
    502 after waiting its whole idle timeout for a target that neither answered nor closed: `ts` is
    when it gave up, from its log. If the client had already given up (HAProxy keeps waiting for the
    target), nobody saw the answer: status null."""
    out = []
    for r in (r for r in logs.proxy if _gave_up_waiting(logs, r, scenario)):
        gone = logs.client_gave_up_before(r["client"], r["end_ts"])
        out.append(finding("gateway_timeout", r["end_ts"], "target", "proxy log",
                           status=None if gone else r["status"], client_flow=_client_flow(r),
                           target_flow=logs.target_flow_of(r), proxy_status=r["status"], client_gone=gone))
    return out


def _gave_up_waiting(logs: Logs, record: dict[str, Any], scenario: Scenario) -> bool:
    if record["status"] == 504:
        return True
    if record["status"] != 502 or logs.proxy_name != "apache":
        return False
    waited = record["end_ts"] - record["request_ts"]
    flow = logs.target_flow_of(record)
    target_closed = any(e.get("event") == "close" and f"{e['peer']}->{e['local']}" == flow
                        and e["ts"] <= record["end_ts"] for e in logs.target)
    return flow is not None and not target_closed and waited >= 0.9 * scenario.timers.proxy_idle_timeout_s


def client_aborts(logs: Logs) -> list[Finding]:
    """The client gave up waiting (its log says so): `ts` is when it closed. The proxy's view is
    attached: nginx logs 499, HAProxy CH/CD with `option abortonclose`, but by default HAProxy keeps
    waiting for the target and logs the target's 200 as if the client had received it."""
    out = []
    for e in (c for c in logs.client if c["event"] == "timeout"):
        record = _proxy_record_near(logs, e["local"], e["ts"] - e["after_s"])
        extra = {"proxy_status": record["status"], "termination_state": record.get("tsc")} if record else {}
        out.append(finding("client_abort", e["ts"], "client", "client log", client_flow=f"{e['local']}->{LISTENER}",
                           target_flow=logs.target_flow_of(record), **extra))
    return out


def target_closes(logs: Logs, scenario: Scenario) -> list[Finding]:
    """Closes the Python target logged, with the reason it logged them."""
    out = []
    for e in logs.target:
        if e.get("event") != "close":
            continue
        flow = f"{e['peer']}->{e['local']}"
        if e["reason"] == "request outstanding":
            out.append(_target_reset(logs, e, flow))
        elif e["reason"] == "keepalive timeout" and e.get("unread_request"):
            out.append(_keepalive_race(logs, e, flow, scenario))
        elif e["reason"] == "keepalive timeout":
            out.append(finding("target_keepalive_close", e["ts"], "target", "target log", target_flow=flow))
    return out


def _target_reset(logs: Logs, event: dict[str, Any], flow: str) -> Finding:
    record = logs.proxy_record_of(event)
    return finding("target_reset", event["ts"], "target", "target log", target_flow=flow,
                   client_flow=_client_flow(record) if record else None,
                   status=record["status"] if record else None, closed_with=event["how"])


def _keepalive_race(logs: Logs, event: dict[str, Any], flow: str, scenario: Scenario) -> Finding:
    """The request the target never read is the client request sent just before its close."""
    window = scenario.busy_window_s + 0.05
    sent = [c for c in logs.client if c["event"] == "request" and event["ts"] - window <= c["ts"] <= event["ts"]]
    request = max(sent, key=lambda c: c["ts"], default=None)
    outcome = _client_outcome(logs, request) if request else None
    extra: dict[str, Any] = {"client_saw": outcome["event"] if outcome else None}
    record = _proxy_record_near(logs, request["local"], request["ts"]) if request else None
    if record:
        extra["proxy_status"] = record["status"]
        extra["proxy_detail"] = record.get("tsc") or record.get("upstream_status")
    return finding("keepalive_race", event["ts"], "target", "target log", target_flow=flow,
                   client_flow=f"{request['local']}->{LISTENER}" if request else None,
                   status=outcome.get("status") if outcome else None, **extra)


def _client_outcome(logs: Logs, request: dict[str, Any]) -> dict[str, Any] | None:
    """The client's next event on that connection: a response, a timeout or the server closing."""
    later = [c for c in logs.client if c["local"] == request["local"] and c["ts"] > request["ts"]]
    return next((c for c in later if c["event"] in ("response", "timeout", "server_close")), None)


def _proxy_record_near(logs: Logs, client: str, ts: float) -> dict[str, Any] | None:
    near = [r for r in logs.proxy if r["client"] == client and abs(r["request_ts"] - ts) < 0.05]
    return near[0] if near else None


def nginx_target_keepalive_closes(logs: Logs, back: list[wire.Conn], scenario: Scenario) -> list[Finding]:
    """nginx as target logs no closes: a target-first FIN after >= its keep-alive timeout of idleness."""
    keepalive = scenario.timers.target_keepalive_timeout_s
    if logs.target_is_python or not keepalive:
        return []
    out = []
    for conn in back:
        close = conn.first_close()
        if close is None or close[1] != conn.acceptor:
            continue
        last = max(logs.target_activity(conn.opener), default=conn.syn_ts)
        if close[0] - last >= 0.8 * keepalive:
            out.append(finding("target_keepalive_close", close[0], "target", "capture", target_flow=conn.flow))
    return out


def idle_closes(logs: Logs, front: list[wire.Conn], back: list[wire.Conn], scenario: Scenario) -> list[Finding]:
    """The proxy closed first, nothing outstanding, after >= MIN_IDLE_S without an exchange."""
    out = []
    for conn in front:
        close = conn.first_close()
        if close is None or close[1] != conn.acceptor:
            continue
        records = [r for r in logs.proxy if r["client"] == conn.opener]
        if logs.client_waiting_at(conn.opener, close[0]) or any(
            r["request_ts"] <= close[0] < r["end_ts"] for r in records
        ):
            continue  # a close with a request outstanding (HAProxy's silent close) is not idleness
        idle = close[0] - max([r["end_ts"] for r in records], default=conn.syn_ts)
        if idle >= MIN_IDLE_S:
            out += _client_idle_close(conn, close, idle)
    for conn in back:
        close = conn.first_close()
        if close is None or close[1] != conn.opener or logs.outstanding_at(conn.opener, close[0]):
            continue
        idle = close[0] - max(logs.target_activity(conn.opener), default=conn.syn_ts)
        if idle >= MIN_IDLE_S:
            out.append(finding("idle_timeout_close", close[0], "target", "capture", target_flow=conn.flow,
                               closed_with=close[2], idle_s=round(idle, 3)))
    return out


def _client_idle_close(conn: wire.Conn, close: tuple[float, str, str], idle: float) -> list[Finding]:
    common = {"client_flow": conn.flow, "closed_with": close[2], "idle_s": round(idle, 3)}
    probes = conn.keepalive_probes.get(conn.opener, 0)
    if probes:  # one event, one finding: the refinement replaces the idle close it refines
        return [finding("tcp_keepalive_ignored", close[0], "client", "capture", probes=probes, **common)]
    return [finding("idle_timeout_close", close[0], "client", "capture", **common)]


def client_keepalive_expiries(logs: Logs, front: list[wire.Conn], scenario: Scenario) -> list[Finding]:
    """A response with `Connection: close` the client did not ask for, once the connection is older
    than the client keep-alive duration; `ts` is the proxy's FIN that follows."""
    duration = scenario.timers.client_keepalive_duration_s
    if not duration:
        return []
    out = []
    for conn in front:
        # The proxy's FIN, even when the client, reading `Connection: close`, closed first.
        closed = conn.fin.get(conn.acceptor) or conn.rst.get(conn.acceptor)
        responses = [c for c in logs.client if c["local"] == conn.opener and c["event"] == "response"]
        closing = [c for c in responses if (c.get("connection") or "").lower() == "close"]
        if closed and closing and closing[0]["ts"] - conn.syn_ts >= duration:
            out.append(finding("client_keepalive_expiry", closed, "client", "capture", client_flow=conn.flow,
                               status=closing[0]["status"], connection_age_s=round(closed - conn.syn_ts, 3)))
    return out


# Where a proxy answers a designed failure with another status than an ALB would.
PROXY_STATUS = {("apache", "gateway_timeout", 504): 502}


def missing(scenario: Scenario, truth: dict[str, Any]) -> list[str]:
    """The designed findings that the run did not produce, as `kind[:status]`."""
    proxy = truth.get("proxy")
    got = {(f["kind"], f["status"]) for f in truth["findings"]}
    got |= {(kind, alb) for (p, kind, alb), status in PROXY_STATUS.items() if p == proxy and (kind, status) in got}
    kinds = {kind for kind, _ in got}
    return [
        f"{kind}:{status}" if status else kind
        for kind, status in scenario.designed
        if ((kind, status) not in got if status else kind not in kinds)
    ]
