"""Run one scenario with one proxy: build the namespaces, start targets, proxy, captures and clients,
then write `<scenario>-<proxy>.pcap` (the VXLAN mirror), the gzipped plain front/back captures, and
`<scenario>-<proxy>.expected.json` (ground truth from the proxy's and target's own logs). Runs in the
"none" header configuration (no X-Forwarded-*, no request id) are `<scenario>-<proxy>-noxff.*`.

Order matters for clean captures: servers are listening before tcpdump starts, tcpdump stops before
any process is stopped, so a capture holds the scenario and nothing of the teardown.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import expected, proxies, stdlogs
from .netns import (
    CLIENT_IPS,
    LISTENER_PORT,
    PROXY_BACK_IP,
    PROXY_FRONT_IP,
    TARGET_IPS,
    TARGET_PORT,
    Lab,
    LabError,
    python,
)
from .scenarios import Scenario

LISTENER = f"{PROXY_FRONT_IP}:{LISTENER_PORT}"


@dataclass(frozen=True)
class RunResult:
    capture: Path
    expected_path: Path
    expected: dict[str, Any]
    missing: list[str]
    """Designed findings the run did not produce (empty when the run went as designed)."""


def stem_of(scenario: Scenario, proxy: str, headers: str = "forwarding") -> str:
    """`<scenario>-<proxy>` for the forwarding configuration, `<scenario>-<proxy>-noxff` for none."""
    return f"{scenario.name}-{proxy}" + ("" if headers == "forwarding" else "-noxff")


def run_scenario(scenario: Scenario, proxy: str, out_dir: Path, keep_logs: bool = False,
                 headers: str = "forwarding") -> RunResult:
    if proxy in scenario.unsupported:
        raise LabError(f"{scenario.name} cannot run with {proxy}: {scenario.unsupported[proxy]}")
    if headers not in proxies.HEADERS:
        raise LabError(f"no header configuration {headers!r}: one of {', '.join(proxies.HEADERS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem_of(scenario, proxy, headers)
    run_dir = Path(tempfile.mkdtemp(prefix=f"alb-pcap-lab-{stem}-"))
    run_dir.chmod(0o755)  # Apache's children run as www-data and reopen files here
    try:
        with Lab(run_dir) as lab:
            _run(lab, scenario, proxy, run_dir, headers)
        truth = expected.derive(scenario, proxy, run_dir, topology(scenario), headers=headers, stem=stem)
        return _write_outputs(scenario, stem, run_dir, out_dir, truth)
    finally:
        if keep_logs:
            shutil.copytree(run_dir, out_dir / f"{stem}.logs", dirs_exist_ok=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def topology(scenario: Scenario) -> dict[str, Any]:
    return {
        "clients": list(CLIENT_IPS),
        "proxy_front": LISTENER,
        "proxy_back": PROXY_BACK_IP,
        "targets": target_addresses(scenario),
        "mirror": {"encapsulation": "vxlan", "udp_port": 4789, "vni": 7, "sources": ["front", "back"]},
    }


def target_addresses(scenario: Scenario) -> list[str]:
    return [f"{ip}:{TARGET_PORT}" for ip in TARGET_IPS[: scenario.targets]]


def _run(lab: Lab, scenario: Scenario, proxy: str, run_dir: Path, headers: str) -> None:
    _start_targets(lab, scenario, run_dir)
    _start_proxy(lab, scenario, proxy, run_dir, headers)
    with (
        lab.capture("collector", "eth0", run_dir / "mirror.pcap", "udp port 4789"),
        lab.capture("proxy", "front", run_dir / "front.pcap"),
        lab.capture("proxy", "back", run_dir / "back.pcap"),
    ):
        _run_clients(lab, scenario, run_dir)
        time.sleep(scenario.linger_s)


def _start_targets(lab: Lab, scenario: Scenario, run_dir: Path) -> None:
    addresses = target_addresses(scenario)
    if scenario.target == "nginx":
        keepalive = scenario.timers.target_keepalive_timeout_s or 0
        (run_dir / "target.conf").write_text(proxies.nginx_target_config(addresses[0], keepalive, run_dir))
        process = lab.spawn("target", "target-nginx", ["nginx", "-c", str(run_dir / "target.conf")])
    else:
        argv = [python(), "-m", "alb_pcap.lab.target", "--busy-window", str(scenario.busy_window_s)]
        argv += [a for address in addresses for a in ("--listen", address)]
        if scenario.timers.target_keepalive_timeout_s is None:
            argv.append("--no-keepalive")
        else:
            argv += ["--keepalive-timeout", str(scenario.timers.target_keepalive_timeout_s)]
        process = lab.spawn("target", "target-python", argv)
    for address in addresses:
        lab.wait_listening("target", address, process)


def _start_proxy(lab: Lab, scenario: Scenario, proxy: str, run_dir: Path, headers: str) -> None:
    setup = proxies.ProxySetup(
        listen=LISTENER,
        source_ip=PROXY_BACK_IP,
        targets=tuple(target_addresses(scenario)),
        idle_timeout_s=scenario.timers.proxy_idle_timeout_s,
        client_keepalive_duration_s=scenario.timers.client_keepalive_duration_s,
        retries=scenario.retries,
        headers=headers,
    )
    if proxy == "haproxy":
        (run_dir / "haproxy.cfg").write_text(proxies.haproxy_config(setup))
        # -db: foreground, and `log stdout` then lands in haproxy.out
        process = lab.spawn("proxy", "haproxy", ["haproxy", "-db", "-f", str(run_dir / "haproxy.cfg")])
    elif proxy == "apache":
        (run_dir / "apache.conf").write_text(proxies.apache_config(setup, run_dir))
        process = lab.spawn("proxy", "apache", ["apache2", "-DFOREGROUND", "-f", str(run_dir / "apache.conf")])
    elif proxy == "caddy":
        (run_dir / "caddy.json").write_text(proxies.caddy_config(setup, run_dir))
        env = {"HOME": str(run_dir), "XDG_DATA_HOME": str(run_dir / "caddy-data"),
               "XDG_CONFIG_HOME": str(run_dir / "caddy-config")}
        process = lab.spawn("proxy", "caddy", ["env", *(f"{k}={v}" for k, v in env.items()),
                                               "caddy", "run", "--config", str(run_dir / "caddy.json")])
    else:
        (run_dir / "proxy.conf").write_text(proxies.nginx_proxy_config(setup, run_dir))
        process = lab.spawn("proxy", "proxy-nginx", ["nginx", "-c", str(run_dir / "proxy.conf")])
    lab.wait_listening("proxy", LISTENER, process)


def _run_clients(lab: Lab, scenario: Scenario, run_dir: Path) -> None:
    if scenario.clients:
        plan = json.dumps(scenario.clients)
        argv = [python(), "-m", "alb_pcap.lab.client", "--to", LISTENER, plan]
        client = lab.spawn("client", "client", argv)
        try:
            client.popen.wait(timeout=60)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{scenario.name}: the client did not finish in 60 s") from e
    for i in range(scenario.curls):
        _curl(lab, CLIENT_IPS[i % len(CLIENT_IPS)], run_dir / "curl.out")
        time.sleep(0.5)


def _curl(lab: Lab, source_ip: str, log: Path) -> None:
    """One `Connection: close` request with curl; logged in the Python client's format."""
    write_out = '{"local": "%{local_ip}:%{local_port}", "status": %{http_code}}'
    started = time.time()
    line = lab.sh(lab.ns["client"], "curl", "-s", "-o", "/dev/null", "--interface", source_ip,
                  "-H", "Connection: close", "-w", write_out, f"http://{LISTENER}/ok")
    outcome = json.loads(line)
    records = [
        {"ts": round(started, 6), "event": "request", "conn": "curl", "local": outcome["local"],
         "method": "GET", "path": "/ok"},
        {"ts": round(time.time(), 6), "event": "response", "conn": "curl", "local": outcome["local"],
         "status": outcome["status"], "connection": "close"},
    ]
    with log.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _write_outputs(scenario: Scenario, stem: str, run_dir: Path, out_dir: Path,
                   truth: dict[str, Any]) -> RunResult:
    capture = out_dir / f"{stem}.pcap"
    shutil.copyfile(run_dir / "mirror.pcap", capture)
    for side in ("front", "back"):
        with open(run_dir / f"{side}.pcap", "rb") as src, gzip.open(out_dir / f"{stem}.{side}.pcap.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    expected_path = out_dir / f"{stem}.expected.json"
    expected_path.write_text(dumps_expected(truth))
    access_log = stdlogs.standard_access_log(truth.get("proxy", ""), truth.get("proxy_log", []))
    if access_log is not None:  # for analyze --log: the same requests in the proxy's standard format
        (out_dir / f"{stem}.access.log").write_text(access_log)
    error_log = run_dir / "proxy-error.log"
    if truth.get("proxy") == "nginx" and error_log.exists():
        (out_dir / f"{stem}.error.log").write_text(stdlogs.error_level_lines(error_log.read_text()))
    return RunResult(capture, expected_path, truth, expected.missing(scenario, truth))


LOG_KEYS = ("proxy_log", "target_log", "client_log")


def dumps_expected(truth: dict[str, Any]) -> str:
    """Indented JSON, except the logs: one compact record per line (a third of the size)."""
    head = json.dumps({k: v for k, v in truth.items() if k not in LOG_KEYS}, indent=2)
    logs = [
        f'  "{key}": [' + (",".join("\n    " + json.dumps(r) for r in truth[key]) + "\n  ]" if truth[key] else "]")
        for key in LOG_KEYS if key in truth
    ]
    return head[:-2] + "".join(",\n" + log for log in logs) + "\n}\n" if logs else head + "\n"
