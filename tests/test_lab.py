"""The capture lab: config rendering and log parsing (always), and real runs (marked `lab`).

The `lab` tests build network namespaces, so they need root, `ip netns`, haproxy, nginx, apache2,
caddy and tcpdump; without them they skip and say which is missing. They take about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner

from alb_pcap.lab import expected, netns, proxies, wire
from alb_pcap.lab.cli import lab
from alb_pcap.lab.runner import stem_of
from alb_pcap.lab.scenarios import SCENARIOS, find

SETUP = proxies.ProxySetup(
    listen="198.18.1.1:80", source_ip="198.18.2.1", targets=("198.18.3.11:8080", "198.18.3.12:8080"),
    idle_timeout_s=2, client_keepalive_duration_s=3, retries=False,
)

HAPROXY_LINE = (
    "accept=1795316964.639 client=198.18.1.13:46167 frontend=198.18.1.1:80 backend_src=198.18.2.1:42864"
    " target=198.18.3.11:8080 status=502 tsc=SH-- Th=0 Ti=250 TR=0 Tw=0 Tc=0 Tr=-1 Ta=103 Tt=353"
    ' retries=0 bytes_read=209 request="POST /ok HTTP/1.1" trace_id=Root=1-6B025CE4-72f842dbe9284f9ab4d0582f'
)

NGINX_LINE = json.dumps({
    "ts": 1795316973.079, "client": "198.18.1.11:60329", "frontend": "198.18.1.1:80", "connection": 3,
    "connection_requests": 2, "request": "GET /ok HTTP/1.1", "status": 200, "request_time": 0.102,
    "upstream_addr": "198.18.3.11:8080, 198.18.3.11:8080", "upstream_status": "502, 200",
    "upstream_connect_time": "0.000, 0.000", "upstream_header_time": "-, 0.000",
    "trace_id": "Root=1-86506c39-377b2d27cd9cea850aa4c6e0",
})


def test_haproxy_log_gives_times_from_accept_and_timers() -> None:
    [record] = proxies.parse_haproxy_log("[NOTICE] haproxy started\n" + HAPROXY_LINE + "\n")
    assert record["status"] == 502 and record["tsc"] == "SH--" and record["Tr"] == -1
    assert record["request"] == "POST /ok HTTP/1.1"
    assert record["request_ts"] == pytest.approx(1795316964.889)  # accept + Th + Ti
    assert record["end_ts"] == pytest.approx(1795316964.992)  # + Ta


def test_nginx_log_keeps_every_upstream_attempt() -> None:
    [record] = proxies.parse_nginx_log(NGINX_LINE + "\n\n")
    assert record["upstream_status"] == "502, 200"  # a retry the client never saw
    assert record["request_ts"] == pytest.approx(1795316972.977)


def test_haproxy_config_is_alb_like() -> None:
    cfg = proxies.haproxy_config(SETUP)
    for line in ("http-reuse always", "option forwardfor", "timeout http-keep-alive 2000ms",
                 "timeout server 2000ms", "retry-on none", "source 198.18.2.1", "unique-id-header X-Amzn-Trace-Id",
                 "server t2 198.18.3.12:8080 pool-purge-delay 2000ms", "bind 198.18.1.1:80"):
        assert line in cfg
    assert "retry-on" not in proxies.haproxy_config(proxies.ProxySetup("a:1", "b", ("c:2",), 5))


def test_nginx_config_is_alb_like(tmp_path: Path) -> None:
    cfg = proxies.nginx_proxy_config(SETUP, tmp_path)
    for line in ("keepalive_timeout 2s;", "keepalive_time 3s;", "proxy_http_version 1.1;",
                 'proxy_set_header Connection "";', "proxy_next_upstream off;", "proxy_bind 198.18.2.1;",
                 "proxy_read_timeout 2s;", "server 198.18.3.12:8080 max_fails=0;", "$proxy_add_x_forwarded_for"):
        assert line in cfg
    assert "keepalive_timeout 0s;" in proxies.nginx_target_config("198.18.3.11:8080", 0, tmp_path)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_haproxy_accepts_the_config(tmp_path: Path) -> None:
    (tmp_path / "h.cfg").write_text(proxies.haproxy_config(SETUP))
    result = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("nginx") is None or os.geteuid() != 0, reason="needs nginx and root")
def test_nginx_accepts_the_configs(tmp_path: Path) -> None:
    # nginx -t binds its listeners: do it in a throwaway network namespace that holds the address.
    (tmp_path / "p.conf").write_text(proxies.nginx_proxy_config(SETUP, tmp_path))
    (tmp_path / "t.conf").write_text(proxies.nginx_target_config("198.18.1.1:8080", 5, tmp_path))
    for conf in ("p.conf", "t.conf"):
        script = f"ip addr add 198.18.1.1/32 dev lo && ip link set lo up && nginx -t -c {tmp_path / conf}"
        result = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


NONE = proxies.ProxySetup(
    listen="198.18.1.1:80", source_ip="198.18.2.1", targets=("198.18.3.11:8080", "198.18.3.12:8080"),
    idle_timeout_s=2, headers="none",
)
FORWARDING_NAMES = ("forwardfor", "X-Forwarded", "X-Amzn-Trace-Id", "x_forwarded", "trace_id;")


def test_haproxy_and_nginx_without_forwarding_headers(tmp_path: Path) -> None:
    haproxy = proxies.haproxy_config(NONE)
    nginx = proxies.nginx_proxy_config(NONE, tmp_path)
    for cfg in (haproxy, nginx):
        directives = "\n".join(line for line in cfg.splitlines() if not line.strip().startswith(("#", "log_format")))
        assert not [n for n in FORWARDING_NAMES if n in directives], cfg
    assert "unique-id-format" in haproxy and "trace_id=%ID" in haproxy  # still logged, never sent
    assert "http-reuse always" in haproxy and 'proxy_set_header Connection "";' in nginx  # reuse kept
    assert "proxy_set_header Host" not in nginx  # nginx's default Host: the upstream's name


def test_apache_config_is_alb_like(tmp_path: Path) -> None:
    cfg = proxies.apache_config(SETUP, tmp_path)
    for line in ("ProxyTimeout 2", "KeepAliveTimeout 2", "ProxySourceAddress 198.18.2.1", "Listen 198.18.1.1:80",
                 "BalancerMember http://198.18.3.12:8080 ttl=2 retry=0 keepalive=On", "ProxySet maxattempts=0",
                 "ProxyAddHeaders On", "RequestHeader set X-Amzn-Trace-Id", "RequestHeader set X-Forwarded-Port \"80\"",
                 "ServerLimit 1", f"CustomLog {tmp_path}/apache-access.log lab"):
        assert line in cfg
    none = proxies.apache_config(NONE, tmp_path)
    assert "ProxyAddHeaders Off" in none and "RequestHeader" not in none and "maxattempts" not in none
    with pytest.raises(ValueError, match="whole number"):
        proxies.apache_config(proxies.ProxySetup("a:1", "b", ("c:2",), 2.5), tmp_path)


def test_caddy_config_is_alb_like(tmp_path: Path) -> None:
    cfg = json.loads(proxies.caddy_config(SETUP, tmp_path))
    server = cfg["apps"]["http"]["servers"]["alb"]
    [proxy] = server["routes"][0]["handle"]
    assert server["listen"] == ["198.18.1.1:80"] and server["idle_timeout"] == "2000ms"
    assert proxy["transport"]["response_header_timeout"] == "2000ms"
    assert proxy["transport"]["keep_alive"] == {"enabled": True, "idle_timeout": "2000ms", "max_idle_conns_per_host": 16}
    assert [u["dial"] for u in proxy["upstreams"]] == list(SETUP.targets)
    assert proxy["headers"]["request"]["set"]["X-Amzn-Trace-Id"] == ["Root=1-{http.request.uuid}"]
    none = json.loads(proxies.caddy_config(NONE, tmp_path))["apps"]["http"]["servers"]["alb"]["routes"][0]["handle"][0]
    assert none["headers"]["request"] == {"delete": ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"]}


@pytest.mark.skipif(shutil.which("apache2") is None, reason="apache2 not installed")
def test_apache_accepts_the_configs(tmp_path: Path) -> None:
    for setup in (SETUP, NONE):
        (tmp_path / "a.conf").write_text(proxies.apache_config(setup, tmp_path))
        result = subprocess.run(["apache2", "-t", "-f", str(tmp_path / "a.conf")], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy not installed")
def test_caddy_accepts_the_configs(tmp_path: Path) -> None:
    for setup in (SETUP, NONE):
        (tmp_path / "c.json").write_text(proxies.caddy_config(setup, tmp_path))
        result = subprocess.run(["caddy", "validate", "--config", str(tmp_path / "c.json")], capture_output=True,
                                text=True, env=dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path)))
        assert result.returncode == 0, result.stderr


APACHE_LINE = (
    '{"begin":1796322269.703,"end":1796322269.805,"client":"198.18.1.10:50739","frontend":"198.18.1.1:80",'
    '"keepalive_requests":0,"request":"POST /ok HTTP/1.1","status":502,"duration_us":101888,"conn_status":"-",'
    '"upstream":"http://198.18.3.11:8080","request_id":"axGz3V6mCEYPGx9IB8WuwQAAAAE","trace_id":"-"}'
)
CADDY_LINES = [
    {"level": "debug", "ts": 1796322245.5564165, "logger": "http.handlers.reverse_proxy", "msg": "upstream roundtrip",
     "upstream": "198.18.3.11:8080", "duration": 0.0012, "status": 200,
     "request": {"remote_ip": "198.18.1.11", "remote_port": "37699", "method": "GET", "uri": "/ok"}},
    {"level": "debug", "ts": 1796322247.0569558, "logger": "http.handlers.reverse_proxy", "msg": "upstream roundtrip",
     "upstream": "198.18.3.11:8080", "duration": 2.0017, "error": "net/http: timeout awaiting response headers",
     "request": {"remote_ip": "198.18.1.10", "remote_port": "59607", "method": "GET", "uri": "/sleep/4"}},
    {"level": "error", "ts": 1796322247.0571322, "logger": "http.log.access", "msg": "handled request",
     "request": {"remote_ip": "198.18.1.10", "remote_port": "59607", "proto": "HTTP/1.1", "method": "GET",
                 "uri": "/sleep/4", "headers": {"User-Agent": ["x"]}}, "duration": 2.002020191, "status": 504},
]


def test_apache_log_gives_interval_and_target() -> None:
    [record] = proxies.parse_apache_log(APACHE_LINE + "\n")
    assert record["status"] == 502 and record["upstream"] == "198.18.3.11:8080" and record["trace_id"] is None
    assert record["request_ts"] == pytest.approx(1796322269.703)
    assert record["end_ts"] == pytest.approx(1796322269.804888)


def test_caddy_log_joins_attempts_to_the_access_line() -> None:
    [record] = proxies.parse_caddy_log("\n".join(json.dumps(line) for line in CADDY_LINES) + "\n")
    assert (record["client"], record["status"], record["upstream"]) == ("198.18.1.10:59607", 504, "198.18.3.11:8080")
    assert record["request"] == "GET /sleep/4 HTTP/1.1"
    assert record["request_ts"] == pytest.approx(1796322245.055112, abs=1e-6)
    [attempt] = record["attempts"]  # the /ok roundtrip of another client is not this request's
    assert attempt["error"].startswith("net/http: timeout")


def _record(client: str, method_path: str, start: float, end: float, target: str = "198.18.3.11:8080") -> dict:
    record = {"client": client, "request": f"{method_path} HTTP/1.1", "request_ts": start, "end_ts": end,
              "upstream_addr": target, "status": 200}
    expected._normalise("nginx", record)
    return record


def _target_request(peer: str, method_path: str, ts: float) -> dict:
    method, path = method_path.split()
    return {"ts": ts, "event": "request", "peer": peer, "local": "198.18.3.11:8080", "method": method, "path": path}


def test_time_join_links_unique_requests_and_refuses_ambiguous_ones(tmp_path: Path) -> None:
    records = [
        _record("198.18.1.10:1000", "GET /sleep/4", 10.0, 12.0),
        _record("198.18.1.11:1001", "GET /ok", 10.5, 10.502),
        # two identical concurrent requests: either target request could be either's
        _record("198.18.1.12:1002", "GET /ok", 20.0, 20.010),
        _record("198.18.1.13:1003", "GET /ok", 20.001, 20.011),
        # two identical requests one after the other: time order decides
        _record("198.18.1.12:1004", "POST /ok", 30.0, 30.010),
        _record("198.18.1.13:1005", "POST /ok", 30.005, 30.020),
    ]
    target = [
        _target_request("198.18.2.1:5000", "GET /sleep/4", 10.001),
        _target_request("198.18.2.1:5001", "GET /ok", 10.501),
        _target_request("198.18.2.1:5002", "GET /ok", 20.005),
        _target_request("198.18.2.1:5003", "GET /ok", 20.006),
        _target_request("198.18.2.1:5002", "POST /ok", 30.001),
        _target_request("198.18.2.1:5003", "POST /ok", 30.015),
    ]
    links, ambiguous, ambiguous_events = expected.link(records, target, "nginx")
    assert links == {0: [0], 1: [1], 4: [4], 5: [5]}
    assert ambiguous == {2, 3} and ambiguous_events == {2, 3}

    logs = expected.Logs.__new__(expected.Logs)
    logs.proxy, logs.target, logs.by_trace_id = records, target, False
    logs._links, logs._ambiguous, logs._ambiguous_events = links, ambiguous, ambiguous_events
    assert logs.target_flow_of(records[0]) == "198.18.2.1:5000->198.18.3.11:8080"
    assert logs.proxy_record_of(target[5]) is records[5]
    with pytest.raises(expected.AmbiguousLink):
        logs.target_flow_of(records[2])
    with pytest.raises(expected.AmbiguousLink):
        logs.proxy_record_of(target[3])


def test_haproxy_links_by_its_backend_source() -> None:
    [record] = proxies.parse_haproxy_log(HAPROXY_LINE)
    expected._normalise("haproxy", record)
    target = [_target_request("198.18.2.1:42864", "POST /ok", 1795316964.95),
              _target_request("198.18.2.1:42999", "POST /ok", 1795316964.95)]
    assert expected.link([record], target, "haproxy")[0] == {0: [0]}


def test_output_names_tell_the_header_configuration_apart() -> None:
    assert stem_of(find("5"), "caddy") == "keepalive-race-caddy"
    assert stem_of(find("5"), "caddy", "none") == "keepalive-race-caddy-noxff"
    result = CliRunner().invoke(lab, ["--help"])
    assert "--headers [forwarding|none|both]" in result.output


def test_apache_answers_its_timeout_with_502_and_that_is_no_miss() -> None:
    truth = {"proxy": "apache", "findings": [{"kind": "gateway_timeout", "status": 502}]}
    assert expected.missing(find("6"), truth) == []
    assert expected.missing(find("6"), dict(truth, proxy="nginx")) == ["gateway_timeout:504"]


def _segment(src: tuple[str, int], dst: tuple[str, int], flags: int, seq: int, data: bytes = b"") -> bytes:
    tcp = dpkt.tcp.TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=1, data=data)
    ip = dpkt.ip.IP(src=bytes(map(int, src[0].split("."))), dst=bytes(map(int, dst[0].split("."))),
                    p=dpkt.ip.IP_PROTO_TCP, data=tcp)
    return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def test_wire_reads_closes_and_keepalive_probes(tmp_path: Path) -> None:
    client, proxy = ("198.18.1.10", 40000), ("198.18.1.1", 80)
    ack = dpkt.tcp.TH_ACK
    frames = [
        (1.0, _segment(client, proxy, dpkt.tcp.TH_SYN, 100)),
        (1.1, _segment(client, proxy, ack | dpkt.tcp.TH_PUSH, 101, b"GET / HTTP/1.1\r\n\r\n")),
        (2.1, _segment(client, proxy, ack, 118)),  # probe: one below the next sequence number
        (3.1, _segment(client, proxy, ack, 118)),
        (4.0, _segment(proxy, client, dpkt.tcp.TH_FIN | ack, 500)),
    ]
    with open(tmp_path / "t.pcap", "wb") as f:
        writer = dpkt.pcap.Writer(f)
        for ts, buf in frames:
            writer.writepkt(buf, ts)
    [conn] = wire.read_conns(tmp_path / "t.pcap")
    assert conn.flow == "198.18.1.10:40000->198.18.1.1:80"
    assert conn.first_close() == (4.0, "198.18.1.1:80", "FIN")
    assert conn.keepalive_probes == {"198.18.1.10:40000": 2}


def test_missing_names_designed_findings_the_run_lacked() -> None:
    scenario = find("6")
    assert expected.missing(scenario, {"findings": []}) == ["gateway_timeout:504"]
    truth = {"findings": [{"kind": "gateway_timeout", "status": 504}]}
    assert expected.missing(scenario, truth) == []


def test_scenarios_are_found_by_name_or_number() -> None:
    assert find("keepalive-race") is find("5") is find("05")
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS) == 11


def test_cli_lists_scenarios() -> None:
    result = CliRunner().invoke(lab, ["--list"])
    assert result.exit_code == 0 and "keepalive-race" in result.output


def test_cli_refuses_without_root_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(lab, ["6"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == ["Error: the lab needs root (network namespaces); run it with sudo"]


def test_cli_rejects_unknown_scenario() -> None:
    result = CliRunner().invoke(lab, ["no-such-thing"])
    assert result.exit_code != 0 and "see --list" in result.output


def _lab_unavailable() -> str | None:
    try:
        netns.check_requirements(netns.tools_for(proxies.PROXIES))
    except netns.LabError as e:
        return str(e)
    return None


needs_lab = pytest.mark.skipif(_lab_unavailable() is not None, reason=f"lab unavailable: {_lab_unavailable()}")


def _own_namespaces() -> list[str]:
    return [ns for ns in netns.list_namespaces() if ns.startswith(f"{netns.PREFIX}{os.getpid()}-")]


def _vxlan_tcp_frames(path: Path) -> int:
    """Frames that are UDP 4789 carrying VXLAN (VNI 7) around an Ethernet/IPv4/TCP frame."""
    count = 0
    with open(path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            udp = dpkt.ethernet.Ethernet(buf).data.data
            if not isinstance(udp, dpkt.udp.UDP) or udp.dport != netns.VXLAN_PORT:
                continue
            flags, vni = struct.unpack("!B3xI", udp.data[:8])
            inner = dpkt.ethernet.Ethernet(udp.data[8:])
            count += flags == 0x08 and vni >> 8 == netns.VNI and isinstance(inner.data.data, dpkt.tcp.TCP)
    return count


@pytest.mark.lab
@needs_lab
@pytest.mark.parametrize("proxy", ["haproxy", "nginx"])
@pytest.mark.parametrize(("scenario", "kind", "status"), [
    ("slow-target-504", "gateway_timeout", 504),
    ("target-close-502", "target_reset", 502),
    ("keepalive-race", "keepalive_race", None),
])
def test_scenario_end_to_end(tmp_path: Path, proxy: str, scenario: str, kind: str, status: int | None) -> None:
    from alb_pcap.lab.runner import run_scenario

    result = run_scenario(find(scenario), proxy, tmp_path)
    assert _vxlan_tcp_frames(result.capture) > 10
    assert (tmp_path / f"{scenario}-{proxy}.front.pcap.gz").exists()
    truth = json.loads(result.expected_path.read_text())
    assert truth["capture"] == result.capture.name and truth["proxy"] == proxy
    assert any(f["kind"] == kind and (status is None or f["status"] == status) for f in truth["findings"])
    if status:
        assert status in [r["status"] for r in truth["proxy_log"]]
    assert result.missing == []
    assert _own_namespaces() == []


@pytest.mark.lab
@needs_lab
@pytest.mark.parametrize(("proxy", "scenario", "kind", "status"), [
    ("apache", "slow-target-504", "gateway_timeout", 502),  # Apache answers its ProxyTimeout with 502
    ("caddy", "keepalive-race", "keepalive_race", 200),  # Go's hidden retry of the raced GET
])
def test_new_proxy_without_forwarding_headers(tmp_path: Path, proxy: str, scenario: str, kind: str,
                                              status: int) -> None:
    from alb_pcap.lab.runner import run_scenario

    result = run_scenario(find(scenario), proxy, tmp_path, headers="none")
    assert result.capture.name == f"{scenario}-{proxy}-noxff.pcap" and _vxlan_tcp_frames(result.capture) > 10
    truth = json.loads(result.expected_path.read_text())
    assert (truth["proxy"], truth["headers"], truth["capture"]) == (proxy, "none", result.capture.name)
    assert "time join" in truth["links"]
    requests = [e for e in truth["target_log"] if e["event"] == "request"]
    assert requests and all(e["forwarded"] == [] and e["trace_id"] is None for e in requests)
    found = [f for f in truth["findings"] if f["kind"] == kind and f["status"] == status]
    assert found and all(f["client_flow"] and f["target_flow"] for f in found)
    assert result.missing == []
    assert _own_namespaces() == []


@pytest.mark.lab
@needs_lab
def test_sigterm_tears_the_namespaces_down(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from alb_pcap.lab.netns import Lab\n"
        f"with Lab(Path({str(tmp_path)!r})) as lab:\n"
        "    print(' '.join(lab.ns.values()), flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert child.stdout is not None
    names = child.stdout.readline().split()
    assert len(names) == 4 and set(names) <= set(netns.list_namespaces())
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=10)
    time.sleep(0.1)
    assert not set(names) & set(netns.list_namespaces())
