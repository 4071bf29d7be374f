"""The capture lab: config rendering and log parsing (always), and real runs (marked `lab`).

The `lab` tests build network namespaces, so they need root, `ip netns`, haproxy, nginx and tcpdump;
without them they skip and say which is missing. They take about a minute.
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
        netns.check_requirements()
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
@pytest.mark.parametrize("proxy", proxies.PROXIES)
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
