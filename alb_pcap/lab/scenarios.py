"""The lab's scenarios: timers, targets and client plans that make each failure happen on purpose.

Timeouts are seconds, not the ALB's 60 s, so a run takes seconds. Every scenario runs with every
proxy unless `unsupported` says why not. `designed` lists the findings the design must produce
(kind and, if it matters, the status the client sees); a run that does not produce them is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .netns import CLIENT_IPS


@dataclass(frozen=True)
class Timers:
    proxy_idle_timeout_s: float
    target_keepalive_timeout_s: float | None
    """None: the target has keep-alive off."""
    client_keepalive_duration_s: float | None = None
    client_response_timeout_s: float | None = None


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    description: str
    timers: Timers
    target: str
    """"nginx" (a well-behaved keep-alive target) or "python" (alb_pcap.lab.target)."""
    clients: list[dict[str, Any]] = field(default_factory=list)
    """Plans for alb_pcap.lab.client, one per client connection."""
    curls: int = 0
    """Sequential `curl -H 'Connection: close'` requests, one per client address in turn."""
    targets: int = 1
    busy_window_s: float = 0.0
    retries: bool = True
    linger_s: float = 0.5
    """Capture this long after the clients finish, for closes that come later."""
    designed: tuple[tuple[str, int | None], ...] = ()
    unsupported: dict[str, str] = field(default_factory=dict)


def conn(name: str, n: int, requests: list[dict[str, Any]], **plan: Any) -> dict[str, Any]:
    return {"name": name, "src": CLIENT_IPS[n % len(CLIENT_IPS)], "requests": requests, **plan}


def get(path: str = "/ok", after: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {"method": "GET", "path": path, "after": after, **extra}


def post(path: str = "/ok", after: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {"method": "POST", "path": path, "after": after, **extra}


SCENARIOS = [
    Scenario(
        1, "healthy-keepalive",
        "Eight keep-alive clients, three requests each, multiplexed onto a few target connections. "
        "Nothing fails; the captures end before any timer fires.",
        Timers(proxy_idle_timeout_s=5, target_keepalive_timeout_s=10),
        target="nginx",
        clients=[conn(f"c{i}", i, [get(after=0.2), get(after=0.3), get(after=0.3)], start=0.1 * i)
                 for i in range(8)],
    ),
    Scenario(
        2, "client-connection-close",
        "curl sends `Connection: close` on each request: the proxy closes every client connection "
        "after its response, while the target connection stays open and is reused.",
        Timers(proxy_idle_timeout_s=5, target_keepalive_timeout_s=10),
        target="nginx",
        curls=4,
    ),
    Scenario(
        3, "target-keepalive-off",
        "The target answers `Connection: close` and closes after every response; the client "
        "connections stay open and each request gets a new target connection.",
        Timers(proxy_idle_timeout_s=5, target_keepalive_timeout_s=None),
        target="nginx",
        clients=[conn(f"c{i}", i, [get(), get(after=0.3), get(after=0.3)], start=0.5 * i) for i in range(2)],
    ),
    Scenario(
        4, "proxy-idle-timeout",
        "Proxy idle timeout 2 s, target keep-alive 10 s: the proxy closes the idle connections on "
        "both sides, about 2 s after their last request.",
        Timers(proxy_idle_timeout_s=2, target_keepalive_timeout_s=10),
        target="nginx",
        clients=[conn(f"c{i}", i, [get(), get(after=0.3)], start=0.2 * i, hold=4.0) for i in range(2)],
        linger_s=5.0,  # HAProxy purges idle target connections in waves, seconds later
        designed=(("idle_timeout_close", None),),
    ),
    Scenario(
        5, "keepalive-race",
        "Target keep-alive 2 s, proxy idle timeout 10 s. Requests are timed to reach idle target "
        "connections as the target's keep-alive timer fires (the target's last 0.2 s are deaf, as a "
        "busy worker is): the target closes with FIN then RST and the client gets 502, a silent close, "
        "or (nginx, idempotent GET) a 200 after a hidden retry. Retries stay on, as deployed.",
        Timers(proxy_idle_timeout_s=10, target_keepalive_timeout_s=2),
        target="python",
        busy_window_s=0.2,
        clients=[
            # POST, second request on its client connection
            conn("post-reused", 0, [post(), post(after=1.9)], start=0.0),
            # GET, second request on its client connection
            conn("get-reused", 1, [get(), get(after=1.9)], start=3.0),
            # POST, first request on a new client connection, onto the idle target connection
            conn("opener", 2, [get(close=True)], start=6.0),
            conn("post-first", 3, [post()], start=7.9),
        ],
        linger_s=2.5,
        designed=(("keepalive_race", None),),
    ),
    Scenario(
        6, "slow-target-504",
        "The target takes 4 s to answer; the proxy's idle timeout (2 s) fires first: 504.",
        Timers(proxy_idle_timeout_s=2, target_keepalive_timeout_s=60),
        target="python",
        clients=[conn("slow", 0, [get("/sleep/4")]), conn("fast", 1, [get(after=0.5)])],
        linger_s=2.5,
        designed=(("gateway_timeout", 504),),
    ),
    Scenario(
        7, "target-close-502",
        "The target reads a request and closes: with FIN after 1 s (GET), then with RST after 1 s "
        "(POST). The proxy answers 502.",
        Timers(proxy_idle_timeout_s=5, target_keepalive_timeout_s=60),
        target="python",
        clients=[conn("fin", 0, [get("/fin/1")]), conn("rst", 1, [post("/rst/1")], start=1.5)],
        designed=(("target_reset", 502),),
    ),
    Scenario(
        8, "client-abort",
        "The client's response timeout is 1 s, the target needs 3 s: the client closes first "
        "(ALB 460, nginx 499, HAProxy CH/CD).",
        Timers(proxy_idle_timeout_s=5, target_keepalive_timeout_s=60, client_response_timeout_s=1),
        target="python",
        clients=[conn("impatient", 0, [get("/sleep/3")], timeout=1.0)],
        linger_s=2.5,
        designed=(("client_abort", None),),
    ),
    Scenario(
        9, "client-keepalive-duration",
        "Client keep-alive duration 2 s (nginx keepalive_time), idle timeout 5 s: the first response "
        "after 2 s carries `Connection: close` and the proxy closes the client connection.",
        Timers(proxy_idle_timeout_s=5, target_keepalive_timeout_s=10, client_keepalive_duration_s=2),
        target="nginx",
        clients=[conn("steady", 0, [get()] + [get(after=0.7) for _ in range(4)])],
        designed=(("client_keepalive_expiry", 200),),
        unsupported={
            "haproxy": "HAProxy 2.6 has no maximum client connection age (nginx keepalive_time)",
            "apache": "Apache has no maximum client connection age (MaxKeepAliveRequests counts requests)",
            "caddy": "Caddy 2.6 has no maximum client connection age",
        },
    ),
    Scenario(
        10, "tcp-keepalive-idle",
        "The client sends TCP keep-alive probes every second on an idle connection; the proxy's "
        "idle timeout (3 s) closes it anyway: probes are not HTTP activity.",
        Timers(proxy_idle_timeout_s=3, target_keepalive_timeout_s=10),
        target="nginx",
        clients=[conn("probing", 0, [get()], tcp_keepalive={"idle": 1, "interval": 1}, hold=6.0)],
        linger_s=1.0,
        designed=(("tcp_keepalive_ignored", None), ("idle_timeout_close", None)),
    ),
    Scenario(
        11, "mixed",
        "Concurrent clients against two targets (keep-alive 2.5 s; idle timeout 3 s): healthy "
        "keep-alive traffic with a slow request (504), target FIN and RST (502), a client abort, "
        "target keep-alive closes, late requests on new connections, and idle closes at the end.",
        Timers(proxy_idle_timeout_s=3, target_keepalive_timeout_s=2.5, client_response_timeout_s=1.5),
        target="python",
        targets=2,
        busy_window_s=0.2,
        clients=[
            conn("steady-a", 0, [get(after=0.1)] + [get(after=0.4) for _ in range(6)], hold=4.0),
            conn("steady-b", 1, [get(after=0.3)] + [get(after=0.5) for _ in range(5)]),
            # POST: nginx would retry a timed-out GET on the other target (proxy_next_upstream timeout)
            conn("slow", 2, [post("/sleep/4")], start=0.5),
            conn("fin", 3, [post("/fin/0.5")], start=1.0),
            conn("rst", 0, [post("/rst/0.5")], start=1.5),
            conn("impatient", 1, [get("/sleep/2")], start=2.0, timeout=1.5),
            conn("late-a", 2, [post()], start=6.35),
            conn("late-b", 3, [post()], start=6.4),
        ],
        linger_s=4.0,
        designed=(("gateway_timeout", 504), ("target_reset", 502), ("client_abort", None)),
    ),
]


def find(name_or_number: str) -> Scenario:
    for scenario in SCENARIOS:
        if name_or_number in (scenario.name, str(scenario.number), f"{scenario.number:02d}"):
            return scenario
    raise KeyError(name_or_number)
