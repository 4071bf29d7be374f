"""The lab's machine: network namespaces, veths, a VXLAN mirror, and the processes run inside them.

    client ns  eth0 198.18.1.10-13 ── front 198.18.1.1  ┐
                                                        proxy ns ── back 198.18.2.1 ── eth0 198.18.3.11-12  target ns
    collector ns  eth0 198.18.9.2 ── mirror 198.18.9.1  ┘
                  vxlan0 (sink)      vxlan0 (VNI 7, UDP 4789) <- tc mirred from front and back

As AWS Traffic Mirroring does for an ENI, `tc ... action mirred egress mirror` copies every frame
that enters or leaves the proxy's front and back interfaces into a VXLAN device whose remote is the
collector; tcpdump there writes what the mirror target would receive. Only the veths are mirrored,
never vxlan0 or the mirror link, so copies are not copied again.

Nothing leaves the namespaces: no interface is added to the caller's namespace and every address is
in 198.18.0.0/15 (RFC 2544 benchmarking space). Namespace names carry this process's pid; `Lab`
removes its own on exit, failure, SIGINT or SIGTERM, and removes those of dead earlier runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

PREFIX = "alblab-"
CLIENT_IPS = ("198.18.1.10", "198.18.1.11", "198.18.1.12", "198.18.1.13")
PROXY_FRONT_IP = "198.18.1.1"
PROXY_BACK_IP = "198.18.2.1"
TARGET_IPS = ("198.18.3.11", "198.18.3.12")
MIRROR_SOURCE_IP = "198.18.9.1"
COLLECTOR_IP = "198.18.9.2"
LISTENER_PORT = 80
TARGET_PORT = 8080
VXLAN_PORT = 4789
VNI = 7
REQUIRED_TOOLS = ("ip", "tc", "tcpdump", "haproxy", "nginx", "curl")
PROXY_TOOLS = {"haproxy": "haproxy", "nginx": "nginx", "apache": "apache2", "caddy": "caddy"}


def tools_for(proxies: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """What a run with these proxies needs (nginx always: it is also the lab's plain target)."""
    return ("ip", "tc", "tcpdump", "nginx", "curl") + tuple(
        PROXY_TOOLS[p] for p in proxies if PROXY_TOOLS[p] != "nginx"
    )


class LabError(Exception):
    """The lab cannot run here (not root, a tool missing) or a step failed."""


def check_requirements(tools: tuple[str, ...] = REQUIRED_TOOLS) -> None:
    """Raise LabError naming the first thing missing."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces); run it with sudo")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LabError(f"the lab needs {', '.join(missing)}: apt-get install -y {_packages(missing)}")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise LabError(f"`ip netns` does not work here: {probe.stderr.strip()}")


def _packages(tools: list[str]) -> str:
    package = {"ip": "iproute2", "tc": "iproute2", "nginx": "nginx-light"}
    return " ".join(sorted({package.get(t, t) for t in tools}))


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def list_namespaces() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def remove_leftovers() -> None:
    """Delete namespaces of earlier lab runs whose process is gone (a crash, a SIGKILL)."""
    for ns in list_namespaces():
        if not ns.startswith(PREFIX):
            continue
        owner = ns[len(PREFIX) :].split("-")[0]
        if owner.isdigit() and _alive(int(owner)):
            continue
        _delete_namespace(ns)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespace(ns: str) -> None:
    # Processes keep a namespace alive after `ip netns del`; end the ones inside it first.
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


_run_counter = 0


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


class Lab:
    """The namespaces and processes of one run; a context manager that always cleans up."""

    def __init__(self, run_dir: Path) -> None:
        global _run_counter
        _run_counter += 1
        self.run_dir = run_dir
        base = f"{PREFIX}{os.getpid()}-{_run_counter}-"
        self.ns = {role: base + role for role in ("client", "proxy", "target", "collector")}
        self.processes: list[Process] = []
        self._old_handlers: dict[int, object] = {}

    def __enter__(self) -> Lab:
        self._trap_signals()
        try:
            remove_leftovers()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
        for ns in self.ns.values():
            _delete_namespace(ns)
        self._restore_signals()

    def _trap_signals(self) -> None:
        # SIGTERM would end Python without running `finally`; make it unwind like Ctrl-C does.
        if threading.current_thread() is not threading.main_thread():
            return
        self._old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_exit)

    def _restore_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._old_handlers.clear()

    def _build(self) -> None:
        for ns in self.ns.values():
            run("ip", "netns", "add", ns)
            # No IPv6: router solicitations and ND would only add noise to the captures.
            self.sh(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        proxy, client, target, collector = (self.ns[r] for r in ("proxy", "client", "target", "collector"))
        self._veth(proxy, "front", [f"{PROXY_FRONT_IP}/24"], client, [f"{ip}/24" for ip in CLIENT_IPS])
        self._veth(proxy, "back", [f"{PROXY_BACK_IP}/24"], target, [f"{ip}/24" for ip in TARGET_IPS])
        self._veth(proxy, "mirror", [f"{MIRROR_SOURCE_IP}/30"], collector, [f"{COLLECTOR_IP}/30"])
        # Front and back are different subnets, as an ALB node's two sides may be: on-link routes.
        run("ip", "-n", proxy, "route", "add", "198.18.3.0/24", "dev", "back")
        run("ip", "-n", target, "route", "add", "198.18.2.0/24", "dev", "eth0")
        self._mirror(proxy, collector)

    def _veth(self, ns_a: str, name_a: str, ips_a: list[str], ns_b: str, ips_b: list[str]) -> None:
        run("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", "eth0", "netns", ns_b)
        for ns, dev, ips in ((ns_a, name_a, ips_a), (ns_b, "eth0", ips_b)):
            for ip in ips:
                run("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

    def _mirror(self, proxy: str, collector: str) -> None:
        # Jumbo MTU on the mirror link: a full 1500-byte frame plus 50 bytes of VXLAN must not fragment.
        for ns, dev in ((proxy, "mirror"), (collector, "eth0")):
            run("ip", "-n", ns, "link", "set", dev, "mtu", "9000")
        for ns, dev, local, remote in (
            (proxy, "mirror", MIRROR_SOURCE_IP, COLLECTOR_IP),
            # The collector's own VXLAN device only swallows the packets; without it the kernel
            # would answer each one with ICMP port unreachable.
            (collector, "eth0", COLLECTOR_IP, MIRROR_SOURCE_IP),
        ):
            run("ip", "-n", ns, "link", "add", "vxlan0", "type", "vxlan", "id", str(VNI), "local", local,
                "remote", remote, "dstport", str(VXLAN_PORT), "dev", dev)
            run("ip", "-n", ns, "link", "set", "vxlan0", "up")
        for dev in ("front", "back"):
            self.sh(proxy, "tc", "qdisc", "add", "dev", dev, "clsact")
            for direction in ("ingress", "egress"):
                self._mirror_filter(proxy, dev, direction)

    def _mirror_filter(self, ns: str, dev: str, direction: str) -> None:
        action = ("action", "mirred", "egress", "mirror", "dev", "vxlan0")
        tc = ("tc", "filter", "add", "dev", dev, direction)
        try:
            self.sh(ns, *tc, "matchall", *action)
        except LabError:
            # Kernels built without cls_matchall: a u32 rule matching every packet does the same.
            self.sh(ns, *tc, "protocol", "all", "u32", "match", "u32", "0", "0", *action)

    def sh(self, ns: str, *argv: str) -> str:
        return run("ip", "netns", "exec", ns, *argv)

    def spawn(self, role: str, name: str, argv: list[str]) -> Process:
        """Start argv in a namespace; stdout and stderr go to <run_dir>/<name>.out/.err."""
        stdout, stderr = self.run_dir / f"{name}.out", self.run_dir / f"{name}.err"
        env = dict(os.environ, PYTHONPATH=_package_root(), PYTHONUNBUFFERED="1")
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[role], *argv],
                stdout=out, stderr=err, env=env, start_new_session=True,
            )
        process = Process(name, popen, stdout, stderr)
        self.processes.append(process)
        return process

    def stop(self, process: Process, sig: int = signal.SIGTERM) -> None:
        """End a process we started (its own session: nginx workers go with their master)."""
        if process.popen.poll() is None:
            try:
                os.killpg(process.popen.pid, sig)
                process.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
            except ProcessLookupError:
                pass

    @contextmanager
    def capture(self, role: str, dev: str, path: Path, bpf: str = "") -> Iterator[Process]:
        """tcpdump on dev while the block runs; returns once it is listening."""
        argv = ["tcpdump", "-i", dev, "-w", str(path), "-U", "-Z", "root", "--immediate-mode", "-n"]
        process = self.spawn(role, f"tcpdump-{path.stem}", argv + ([bpf] if bpf else []))
        wait_until(lambda: b"listening on" in process.stderr.read_bytes(), f"tcpdump on {dev}", process)
        try:
            yield process
        finally:
            self.stop(process, signal.SIGINT)  # SIGINT: tcpdump flushes and closes the file

    def wait_listening(self, role: str, address: str, process: Process) -> None:
        """Wait until something listens on ip:port in the namespace, without sending a packet."""
        port = address.rsplit(":", 1)[1]
        wait_until(
            lambda: address in self.sh(self.ns[role], "ss", "-Hltn", f"sport = :{port}"),
            f"{process.name} listening on {address}",
            process,
        )


def wait_until(ready: object, what: str, process: Process, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if process.popen.poll() is not None:
            raise LabError(f"{what}: exited with {process.popen.returncode}: {_tail(process.stderr)}")
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.05)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace").strip()[-500:]


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def python() -> str:
    return sys.executable
