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


class Logs:
    """The parsed logs of one run, with the lookups the rules need."""

    def __init__(self, proxy: str, run_dir: Path) -> None:
        def text(name: str) -> str:
            path = run_dir / name
            return path.read_text() if path.exists() else ""

        if proxy == "haproxy":
            self.proxy = proxies.parse_haproxy_log(text("haproxy.out"))
        else:
            self.proxy = proxies.parse_nginx_log(text("proxy-access.log"))
        self.target_is_python = (run_dir / "target-python.out").exists()
        self.target = proxies.parse_json_lines(text("target-python.out"))
        if not self.target_is_python:
            self.target = proxies.parse_nginx_log(text("target-access.log"))
        self.client = proxies.parse_json_lines(text("client.out")) + proxies.parse_json_lines(text("curl.out"))

    def target_flow_of(self, trace_id: str | None) -> str | None:
        for event in self.target:
            if trace_id and event.get("trace_id") == trace_id:
                return f"{event['peer']}->{event['local']}"
        return None

    def proxy_record_of(self, trace_id: str | None) -> dict[str, Any] | None:
        return next((r for r in self.proxy if trace_id and r.get("trace_id") == trace_id), None)

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


def derive(scenario: Scenario, proxy: str, run_dir: Path, topology: dict[str, Any]) -> dict[str, Any]:
    logs = Logs(proxy, run_dir)
    front = wire.read_conns(run_dir / "front.pcap")
    back = wire.read_conns(run_dir / "back.pcap")
    findings = (
        gateway_timeouts(logs)
        + client_aborts(logs)
        + target_closes(logs, scenario)
        + nginx_target_keepalive_closes(logs, back, scenario)
        + idle_closes(logs, front, back, scenario)
        + client_keepalive_expiries(logs, front, scenario)
    )
    return {
        "capture": f"{scenario.name}-{proxy}.pcap",
        "scenario": scenario.name,
        "proxy": proxy,
        "description": scenario.description,
        "topology": topology,
        "timers": asdict(scenario.timers),
        "source": SOURCE,
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


def gateway_timeouts(logs: Logs) -> list[Finding]:
    """The proxy logged 504 (HAProxy sH--): `ts` is when it gave up, from its log. If the client had
    already given up (HAProxy keeps waiting for the target), nobody saw that 504: status null."""
    out = []
    for r in (r for r in logs.proxy if r["status"] == 504):
        gone = logs.client_gave_up_before(r["client"], r["end_ts"])
        out.append(finding("gateway_timeout", r["end_ts"], "target", "proxy log", status=None if gone else 504,
                           client_flow=_client_flow(r), target_flow=logs.target_flow_of(r["trace_id"]),
                           proxy_status=504, client_gone=gone))
    return out


def client_aborts(logs: Logs) -> list[Finding]:
    """The client gave up waiting (its log says so): `ts` is when it closed. The proxy's view is
    attached: nginx logs 499, HAProxy CH/CD with `option abortonclose`, but by default HAProxy keeps
    waiting for the target and logs the target's 200 as if the client had received it."""
    out = []
    for e in (c for c in logs.client if c["event"] == "timeout"):
        record = _proxy_record_near(logs, e["local"], e["ts"] - e["after_s"])
        extra = {"proxy_status": record["status"], "termination_state": record.get("tsc")} if record else {}
        out.append(finding("client_abort", e["ts"], "client", "client log", client_flow=f"{e['local']}->{LISTENER}",
                           target_flow=logs.target_flow_of(record["trace_id"]) if record else None, **extra))
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
    record = logs.proxy_record_of(event.get("trace_id"))
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
    out = [finding("idle_timeout_close", close[0], "client", "capture", **common)]
    probes = conn.keepalive_probes.get(conn.opener, 0)
    if probes:
        out.append(finding("tcp_keepalive_ignored", close[0], "client", "capture", probes=probes, **common))
    return out


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


def missing(scenario: Scenario, truth: dict[str, Any]) -> list[str]:
    """The designed findings that the run did not produce, as `kind[:status]`."""
    got = {(f["kind"], f["status"]) for f in truth["findings"]}
    kinds = {kind for kind, _ in got}
    return [
        f"{kind}:{status}" if status else kind
        for kind, status in scenario.designed
        if ((kind, status) not in got if status else kind not in kinds)
    ]
