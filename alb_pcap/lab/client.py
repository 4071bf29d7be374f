"""A scripted HTTP/1.1 client for the lab: `python -m alb_pcap.lab.client --to IP:PORT 'PLAN-JSON'`.

The plan is a list of connections, each run in its own thread:

    {"name": "c1", "src": "198.18.1.10", "start": 0.0,
     "requests": [{"after": 0.0, "method": "GET", "path": "/ok", "close": false}],
     "timeout": 2.0,                          # response timeout: give up and close (ALB 460)
     "tcp_keepalive": {"idle": 1, "interval": 1},   # TCP keep-alive probes on an idle connection
     "hold": 5.0}                             # after the last response, stay idle this long

`after` counts from the previous response (or the connect), so requests can be timed against a
keep-alive timer. A response with `Connection: close`, or the server closing the connection, ends the
connection's plan. Every event is one JSON line on stdout (the client's own log).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from typing import Any

_lock = threading.Lock()


def log(event: str, name: str, sock: socket.socket | None, **fields: object) -> None:
    local = None
    if sock is not None:
        try:
            local = "%s:%d" % sock.getsockname()[:2]
        except OSError:
            pass
    record = {"ts": round(time.time(), 6), "event": event, "conn": name, "local": local, **fields}
    with _lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


class ServerClosed(Exception):
    """The server closed the connection before a complete response."""


def read_response(sock: socket.socket) -> tuple[int, dict[str, str]]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ServerClosed()
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            raise ServerClosed()
        body += data
    return status, headers


def request_bytes(req: dict[str, Any]) -> bytes:
    body = b"x" * 16 if req.get("method", "GET") == "POST" else b""
    lines = [
        f"{req.get('method', 'GET')} {req.get('path', '/ok')} HTTP/1.1",
        "Host: lab.example",
        "User-Agent: alb-pcap-lab-client",
    ]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    if req.get("close"):
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def set_tcp_keepalive(sock: socket.socket, idle: float, interval: float) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(int(idle), 1))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(int(interval), 1))


def exchange(sock: socket.socket, name: str, req: dict[str, Any], timeout: float | None) -> bool:
    """Send one request and read its response; returns whether the connection stays usable."""
    sock.settimeout(timeout)
    sock.sendall(request_bytes(req))
    log("request", name, sock, method=req.get("method", "GET"), path=req.get("path", "/ok"))
    try:
        status, headers = read_response(sock)
    except socket.timeout:
        log("timeout", name, sock, after_s=timeout)  # the client gives up: ALB 460, nginx 499
        return False
    except (ServerClosed, ConnectionResetError) as e:
        log("server_close", name, sock, during="response", error=type(e).__name__)
        return False
    log("response", name, sock, status=status, connection=headers.get("connection"))
    return headers.get("connection", "").lower() != "close" and not req.get("close")


def hold(sock: socket.socket, name: str, seconds: float) -> None:
    """Stay idle; note when the server closes first (its idle timeout)."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(1)
    except socket.timeout:
        return
    except ConnectionResetError:
        data = b""
    log("server_close", name, sock, during="idle", unexpected_bytes=len(data))


def run_connection(to: tuple[str, int], plan: dict[str, Any], t0: float) -> None:
    name = plan["name"]
    time.sleep(max(t0 + plan.get("start", 0.0) - time.time(), 0))
    sock = socket.create_connection(to, source_address=(plan.get("src", ""), 0))
    if plan.get("tcp_keepalive"):
        set_tcp_keepalive(sock, **plan["tcp_keepalive"])
    log("connect", name, sock)
    alive = True
    for req in plan["requests"]:
        time.sleep(req.get("after", 0.0))
        alive = exchange(sock, name, req, plan.get("timeout"))
        if not alive:
            break
    if alive and plan.get("hold"):
        hold(sock, name, plan["hold"])
    log("close", name, sock)
    sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", required=True, help="the proxy's listener, IP:PORT")
    parser.add_argument("plan", help="JSON list of connection plans")
    args = parser.parse_args(argv)
    host, port = args.to.rsplit(":", 1)
    t0 = time.time()
    threads = [
        threading.Thread(target=run_connection, args=((host, int(port)), plan, t0))
        for plan in json.loads(args.plan)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
