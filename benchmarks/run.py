#!/usr/bin/env python3
"""Benchmark: alb-pcap analyze against tshark on large captures of a real reverse proxy.

Generates the captures in a network namespace of its own (its loopback set to
MTU 1500 so segments look like a real network's): nginx proxies to an nginx
target with back-end keep-alive, wrk drives it, tcpdump writes the capture.
Client, proxy back side and target use different loopback addresses
(127.0.0.1, .3, .2) so the capture has the roles a real one has.
Two variants: keep-alive on the client side, and ``Connection: close`` on every
request (short connections). Then times, on each capture:

    python3 -m alb_pcap.cli analyze F --jobs 1|N [--json /dev/null]   (this checkout)
    tshark -r F -Y http -T fields -e frame.time_epoch -e tcp.stream \
           -e http.request.method -e http.response.code

and prints packets/s, MB/s, peak RSS and the ratio to tshark of each. Needs root, ip, nginx,
tcpdump, wrk, tshark (Debian packages). Not part of the test suite.

    sudo python3 benchmarks/run.py --packets 1000000 --out benchmarks/out
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NGINX_CONF = """
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream target {{ server 127.0.0.2:18081; keepalive 16; }}
    server {{
        listen 127.0.0.1:18080;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://target;
            proxy_bind 127.0.0.3;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Amzn-Trace-Id "Root=1-$msec-$request_id";
        }}
    }}
    server {{
        listen 127.0.0.2:18081;
        keepalive_requests 1000000;
        location / {{ return 200 "{body}"; }}
    }}
}}
"""


def sh(ns: str, *cmd: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)


def generate(out: Path, name: str, packets: int, close: bool) -> Path:
    ns = f"albbench{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="alb-bench-"))
    pcap = out / f"{name}.pcap"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "mtu", "1500", "up"], check=True)
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, body="x" * 2048))
        sh(ns, "nginx", "-c", str(tmp / "nginx.conf")).wait()
        dump = sh(ns, "tcpdump", "-i", "lo", "-s", "262144", "-c", str(packets), "-w", str(pcap),
                  "tcp", stderr=subprocess.DEVNULL)
        time.sleep(1)
        header = ["-H", "Connection: close"] if close else []
        wrk = sh(ns, "wrk", "-t", "2", "-c", "32", "-d", "600s", *header,
                 "http://127.0.0.1:18080/item", stdout=subprocess.DEVNULL)
        dump.wait()
        wrk.send_signal(signal.SIGINT)
        wrk.wait()
    finally:
        subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(tmp, ignore_errors=True)
    return pcap


REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a command, via GNU time.

    The RSS is the largest of the command's processes (wait4 reports the maximum over a process
    and its children, not the sum): with ``--jobs N`` the parent or one worker.
    """
    env = dict(os.environ, PYTHONPATH=str(REPO))  # this checkout, not whatever alb-pcap is installed
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, rss


def bench(pcap: Path, packets: int, jobs: int) -> None:
    size_mb = pcap.stat().st_size / 1e6
    alb = [sys.executable, "-m", "alb_pcap.cli", "analyze", str(pcap), "--fail-on", "never"]
    rows = [(f"alb-pcap analyze --jobs {n}{' --json' if json else ''}",
             alb + ["--jobs", str(n)] + (["--json", "/dev/null"] if json else []))
            for json in (False, True) for n in sorted({1, jobs})]
    rows.append(("tshark -Y http", ["tshark", "-r", str(pcap), "-Y", "http", "-T", "fields",
                                    "-e", "frame.time_epoch", "-e", "tcp.stream",
                                    "-e", "http.request.method", "-e", "http.response.code"]))
    print(f"\n{pcap.name}: {packets} packets, {size_mb:.0f} MB; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores before the runs")
    print(f"{'tool':34} {'seconds':>8} {'packets/s':>10} {'MB/s':>7} {'peak RSS MB':>12} {'x tshark':>9}")
    results = {label: timed(cmd) for label, cmd in rows}
    tshark = results["tshark -Y http"][0]
    for label, (wall, rss) in results.items():
        print(f"{label:34} {wall:8.1f} {packets / wall:10.0f} {size_mb / wall:7.1f} {rss / 1024:12.0f} "
              f"{tshark / wall:9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--reuse", action="store_true", help="keep captures generated by an earlier run")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="time alb-pcap with --jobs 1 and with this many (default: all cores)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, close in (("keepalive", False), ("short-connections", True)):
        pcap = args.out / f"{name}.pcap"
        if not (args.reuse and pcap.exists()):
            pcap = generate(args.out, name, args.packets, close)
        bench(pcap, args.packets, args.jobs)


if __name__ == "__main__":
    main()
