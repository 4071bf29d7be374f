"""A misbehaving HTTP/1.1 target for the lab: `python -m alb_pcap.lab.target --listen IP:PORT ...`.

One thread per connection. The request path picks the behaviour, so one target serves a mixed run:

    /ok             200 with a small body
    /sleep/S        answer after S seconds (a slow target -> proxy 504)
    /fin/S          read the request, wait S seconds, close with FIN, no answer (-> 502)
    /rst/S          read the request, wait S seconds, close with RST via SO_LINGER 0 (-> 502)

Between requests the connection is idle; after `--keepalive-timeout` seconds of idleness the target
closes it with FIN, as Apache/nginx/Node do. `--busy-window W` makes the last W seconds of that timer
deaf: a request landing in them sits unread in the socket buffer when the timer fires, so the close
sends FIN and then RST (close with unread data). That is the keep-alive race a busy worker produces,
made deterministic: on a veth the natural race window is microseconds wide.

Every event is one JSON line on stdout (the target's own log, used for ground truth):
`{"ts", "event": "request"|"response"|"close", "peer": "ip:port", "local": "ip:port", ...}`.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

BODY = b"ok\n"


@dataclass(frozen=True)
class Behaviour:
    keepalive: bool
    """False: answer `Connection: close` and close after each response (keep-alive off)."""
    keepalive_timeout: float
    busy_window: float


def log(event: str, conn: socket.socket, peer: str, **fields: object) -> None:
    local = "%s:%d" % conn.getsockname()[:2]
    record = {"ts": round(time.time(), 6), "event": event, "peer": peer, "local": local, **fields}
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def read_request(conn: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
    """Read one request (head + Content-Length body); returns (head, rest) or None on EOF."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None
        rest += data
    return head, rest[length:]


def header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


def forwarded_names(head: bytes) -> list[str]:
    """Names of the forwarding and request-id headers present (lower case)."""
    names = {line.partition(b":")[0].strip().lower().decode("latin-1") for line in head.split(b"\r\n")[1:]}
    return sorted(n for n in names if n.startswith("x-forwarded") or n in ID_HEADERS)


ID_HEADERS = {"forwarded", "via", "x-amzn-trace-id", "x-request-id", "x-correlation-id", "traceparent",
              "x-real-ip"}


def wait_for_request(conn: socket.socket, behaviour: Behaviour) -> bool:
    """Wait up to the keep-alive timeout for the next request; the last busy_window seconds are deaf."""
    attentive = max(behaviour.keepalive_timeout - behaviour.busy_window, 0.0)
    readable, _, _ = select.select([conn], [], [], attentive)
    if readable:
        return True
    time.sleep(behaviour.busy_window)  # busy elsewhere: whatever arrives now is not looked at
    return False


def respond(conn: socket.socket, status: str, keepalive: bool) -> None:
    connection = b"keep-alive" if keepalive else b"close"
    conn.sendall(
        b"HTTP/1.1 " + status.encode() + b"\r\nServer: lab-target\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: %s\r\n\r\n%s" % (len(BODY), connection, BODY)
    )


def close_with_rst(conn: socket.socket) -> None:
    # SO_LINGER on with a zero timeout: close() discards the socket and sends RST, not FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def serve_one(conn: socket.socket, head: bytes, peer: str, behaviour: Behaviour) -> bool:
    """Act on one request as its path says; returns whether the connection stays open."""
    method, path = head.split(b" ")[:2]
    path_s = path.decode("latin-1")
    trace = header(head, b"x-amzn-trace-id")
    # Which identifying headers crossed the proxy: evidence of the run's header configuration.
    log("request", conn, peer, method=method.decode(), path=path_s, trace_id=trace,
        xff=header(head, b"x-forwarded-for"), forwarded=forwarded_names(head))
    action, _, arg = path_s.strip("/").partition("/")
    delay = float(arg or 0)
    if action in ("fin", "rst"):
        time.sleep(delay)
        log("close", conn, peer, how=action.upper(), reason="request outstanding", trace_id=trace)
        conn.close() if action == "fin" else close_with_rst(conn)
        return False
    if action == "sleep":
        time.sleep(delay)
    respond(conn, "200 OK", behaviour.keepalive)
    log("response", conn, peer, status=200, trace_id=trace)
    return behaviour.keepalive


def serve_connection(conn: socket.socket, peer: str, behaviour: Behaviour) -> None:
    buf = b""
    try:
        while True:
            if buf == b"" and not wait_for_request(conn, behaviour):
                unread = bool(select.select([conn], [], [], 0)[0])
                log("close", conn, peer, how="FIN", reason="keepalive timeout", unread_request=unread)
                conn.shutdown(socket.SHUT_WR)  # FIN first; close() below adds RST if a request is unread
                return
            got = read_request(conn, buf)
            if got is None:
                log("close", conn, peer, how="peer", reason="peer closed")
                return
            head, buf = got
            if not serve_one(conn, head, peer, behaviour):
                return
    except OSError as e:
        log("close", conn, peer, how="error", reason=str(e))
    finally:
        conn.close()


def serve(listen: str, behaviour: Behaviour) -> None:
    host, port = listen.rsplit(":", 1)
    server = socket.create_server((host, int(port)), backlog=128)
    while True:
        conn, addr = server.accept()
        peer = "%s:%d" % addr[:2]
        threading.Thread(target=serve_connection, args=(conn, peer, behaviour), daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", required=True, help="IP:PORT, repeatable")
    parser.add_argument("--keepalive-timeout", type=float, default=60.0)
    parser.add_argument("--no-keepalive", action="store_true")
    parser.add_argument("--busy-window", type=float, default=0.0)
    args = parser.parse_args(argv)
    behaviour = Behaviour(not args.no_keepalive, args.keepalive_timeout, args.busy_window)
    for listen in args.listen[1:]:
        threading.Thread(target=serve, args=(listen, behaviour), daemon=True).start()
    serve(args.listen[0], behaviour)


if __name__ == "__main__":
    main()
