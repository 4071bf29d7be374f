"""Crafted captures that replay the seed article's ALB examples, packet by packet.

The seed article (``shared/seeds/alb-connection-handling-blog.txt``) shows an
ALB's connection handling with timings read off real captures. The lab's
proxies are HAProxy and nginx configured like an ALB; these captures are what
the ALB itself would put on the wire, written with scapy from a fixed seed and
fixed epochs, so they are byte-for-byte reproducible.

What the captures look like
  * Capture point: both ENIs of one ALB node mirrored, so every transaction has
    its two connections in one file, in time order: client <-> ALB front
    (198.18.1.10:80) and ALB back (198.18.2.10) <-> target (198.18.3.11:80).
    Packets the ALB sends are stamped when they leave it, packets it receives
    when they arrive, so a far end's reaction shows up one round trip later.
  * TCP as the stacks send it: handshakes with MSS/WScale/SACK options, ACKs
    (every second full segment and the last), 1460-byte segments, FIN/ACK
    closes, RSTs, keep-alive probes (Windows: 1 byte at next seq - 1).
  * HTTP/1.1 as the ALB rewrites it: on the target side X-Forwarded-For/-Proto/
    -Port, Host (unchanged: the ALB keeps it on listener port 80) and
    X-Amzn-Trace-Id ``Root=1-<8 hex epoch>-<24 hex>``, hop-by-hop headers
    dropped; towards the client Date, Content-Type, Content-Length and
    Connection first (the order in the article's curl output); the ALB's own
    502/504 with ``Server: awselb/2.0`` and the real ALB HTML bodies (122 and
    132 bytes).

Ground truth (``<name>.expected.json``) comes from the scenario design, not
from alb-pcap. A finding's ``ts`` is the closing FIN/RST for closes and races
(the FIN/RST that caused them), when the ALB gave up (its FIN to the target)
for ``gateway_timeout``, and the client's FIN for ``client_abort``. ``status``
is what the client received, so the 460 (which only the ALB's log shows) has
``status`` null and ``proxy_status`` 460, as the lab's files put nginx's 499.
``evidence_frames`` are 1-based frame numbers, ascending; in the mirror-artefact
variants they name the first copy of each frame.

Mirror artefacts (``vxlan_encapsulate``, ``duplicate_both_ends``,
``drop_frames``, ``truncate_frames``) take any list of frames, so the lab can
apply them to other captures too.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.utils import formatdate
from functools import partial
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

MS = 1_000  # timestamps are integer microseconds since the epoch
SECOND = 1_000_000

MSS = 1460
SEGMENT_GAP_US = 12  # one full-size frame at 1 Gbit/s
TURNAROUND_US = 30  # a kernel answering at the capture point (ACK, FIN-ACK)
ALB_PROCESSING_US = 200  # request in -> request out; the access log's 0.000
TARGET_RTT_US = 250  # ALB <-> target in one VPC
EC2_CLIENT_RTT_US = 2_800  # the article's clients were EC2 hosts in the region
BROWSER_RTT_US = 18_000  # a browser at home

OPENER, ACCEPTOR = 0, 1


@dataclass(frozen=True)
class Stack:
    """What an operating system's TCP puts in the headers we can see."""

    ttl: int
    syn_window: int
    window: int  # scaled window field after the handshake
    wscale: int
    ephemeral: range
    keepalive_probe: bytes  # Windows sends one garbage byte, Linux none


LINUX = Stack(ttl=64, syn_window=64240, window=502, wscale=7,
              ephemeral=range(32768, 61000), keepalive_probe=b"")
WINDOWS = Stack(ttl=128, syn_window=64240, window=1026, wscale=8,
                ephemeral=range(49152, 65536), keepalive_probe=b"\x00")
# An ALB node picks back-end source ports from a wide range (the article shows
# 12524, 22210, 36726).
ALB_STACK = replace(LINUX, ephemeral=range(1024, 65536))


@dataclass(frozen=True)
class Host:
    ip: str
    mac: str
    stack: Stack


CLIENT = Host("198.18.0.10", "02:00:c6:12:00:0a", LINUX)
BROWSER = Host("198.18.0.20", "02:00:c6:12:00:14", WINDOWS)
ALB_FRONT = Host("198.18.1.10", "02:00:c6:12:01:0a", ALB_STACK)
ALB_BACK = Host("198.18.2.10", "02:00:c6:12:02:0a", ALB_STACK)
TARGET = Host("198.18.3.11", "02:00:c6:12:03:0b", LINUX)
LISTENER_PORT = 80
TARGET_PORT = 80
ALB_ADDRESSES = {ALB_FRONT.ip, ALB_BACK.ip}


# --- frames and the capture ------------------------------------------------


@dataclass(eq=False)
class Frame:
    """One captured frame. Identity matters: findings point at frames."""

    ts_us: int
    data: bytes
    wire_len: int
    origin: Frame | None = None  # the plain-capture frame this one reproduces
    mirrored_at: str = "alb"  # whose ENI's mirror session sent the copy: "alb" or "peer"

    @property
    def source(self) -> Frame:
        return self.origin or self


class Capture:
    """What the mirrored ENIs saw: frames of every connection, sorted at the end."""

    def __init__(self) -> None:
        self._frames: list[Frame] = []

    def add(self, ts_us: int, data: bytes) -> Frame:
        frame = Frame(ts_us, data, len(data))
        self._frames.append(frame)
        return frame

    def frames(self) -> list[Frame]:
        # Stable: frames stamped the same microsecond keep the order they were sent in.
        return sorted(self._frames, key=lambda f: f.ts_us)


@dataclass(frozen=True)
class Sent:
    first: Frame
    last: Frame


class TcpConversation:
    """One TCP connection as the capture point sees it; keeps seq/ack for both ends.

    ``near`` is the end at the capture point (the ALB): its reactions follow what
    it saw within microseconds, the far end's a round trip later.
    """

    def __init__(self, capture: Capture, rng: random.Random, opener: Host, acceptor: Host,
                 acceptor_port: int, *, near: int, rtt_us: int) -> None:
        self.capture = capture
        self.hosts = (opener, acceptor)
        self.ports = (rng.choice(opener.stack.ephemeral), acceptor_port)
        self.near = near
        self.rtt_us = rtt_us
        self.nxt = [rng.getrandbits(32), rng.getrandbits(32)]  # initial sequence numbers
        self.ip_id = [rng.getrandbits(16), rng.getrandbits(16)]
        self.syn: Frame | None = None  # when the connection's age starts

    @property
    def flow(self) -> str:
        """Opener first, the notation of the findings JSON."""
        return (f"{self.hosts[OPENER].ip}:{self.ports[OPENER]}->"
                f"{self.hosts[ACCEPTOR].ip}:{self.ports[ACCEPTOR]}")

    def after(self, side: int, ts_us: int) -> int:
        """When the capture sees ``side`` react to a frame the capture saw at ``ts_us``."""
        return ts_us + (TURNAROUND_US if side == self.near else self.rtt_us)

    def _emit(self, side: int, ts_us: int, flags: str, payload: bytes = b"", *,
              seq: int | None = None, ack: int | None = None, options: list | None = None) -> Frame:
        src, dst = self.hosts[side], self.hosts[1 - side]
        stack = src.stack
        tcp = TCP(sport=self.ports[side], dport=self.ports[1 - side],
                  seq=(self.nxt[side] if seq is None else seq) % 2**32,
                  ack=(self.nxt[1 - side] if ack is None else ack) % 2**32 if "A" in flags else 0,
                  flags=flags, window=stack.syn_window if "S" in flags else stack.window,
                  options=options or [])
        packet = (Ether(src=src.mac, dst=dst.mac)
                  / IP(src=src.ip, dst=dst.ip, ttl=stack.ttl, id=self.ip_id[side], flags="DF")
                  / tcp)
        if payload:
            packet = packet / Raw(payload)
        self.ip_id[side] = (self.ip_id[side] + 1) % 2**16
        return self.capture.add(ts_us, bytes(packet))

    def _advance(self, side: int, by: int) -> None:
        self.nxt[side] = (self.nxt[side] + by) % 2**32

    def handshake(self, ts_us: int) -> int:
        """SYN at ``ts_us``, SYN-ACK, ACK; returns when the capture sees the ACK."""
        self.syn = self._syn(OPENER, ts_us, "S")
        synack = self._syn(ACCEPTOR, self.after(ACCEPTOR, ts_us), "SA")
        return self.ack(OPENER, self.after(OPENER, synack.ts_us)).ts_us

    def _syn(self, side: int, ts_us: int, flags: str) -> Frame:
        stack = self.hosts[side].stack
        frame = self._emit(side, ts_us, flags, options=[
            ("MSS", MSS), ("NOP", None), ("WScale", stack.wscale),
            ("NOP", None), ("NOP", None), ("SAckOK", b"")])
        self._advance(side, 1)
        return frame

    def send(self, side: int, ts_us: int, data: bytes, *, acked: bool = True) -> Sent:
        """``data`` in MSS-sized segments, PSH on the last.

        The receiver ACKs every second full segment, and the last one unless
        ``acked`` is false (its own data will carry the ACK).
        """
        chunks = [data[i:i + MSS] for i in range(0, len(data), MSS)]
        frames = []
        for i, chunk in enumerate(chunks):
            at = ts_us + i * SEGMENT_GAP_US
            last = i == len(chunks) - 1
            frames.append(self._emit(side, at, "PA" if last else "A", chunk))
            self._advance(side, len(chunk))
            if (last and acked) or (not last and i % 2 == 1):
                self.ack(1 - side, self.after(1 - side, at))
        return Sent(frames[0], frames[-1])

    def ack(self, side: int, ts_us: int) -> Frame:
        return self._emit(side, ts_us, "A")

    def fin(self, side: int, ts_us: int, *, ack: int | None = None) -> Frame:
        """FIN-ACK; ``ack`` overrides what it acknowledges when it crosses peer data."""
        frame = self._emit(side, ts_us, "FA", ack=ack)
        self._advance(side, 1)
        return frame

    def rst(self, side: int, ts_us: int, *, seq: int | None = None) -> Frame:
        """A bare RST: a stack resetting a segment that carried an ACK takes the seq from it."""
        return self._emit(side, ts_us, "R", seq=seq)

    def close(self, side: int, ts_us: int) -> tuple[Frame, Frame, Frame]:
        """``side`` closes; the peer's application closes straight back (FIN-ACK); last ACK."""
        fin = self.fin(side, ts_us)
        peer_fin = self.fin(1 - side, self.after(1 - side, ts_us))
        return fin, peer_fin, self.ack(side, self.after(side, peer_fin.ts_us))

    def keepalive_probe(self, side: int, ts_us: int) -> tuple[Frame, Frame]:
        """A TCP keep-alive at next seq - 1 and the peer's ACK; no stream data moves."""
        probe = self._emit(side, ts_us, "A", self.hosts[side].stack.keepalive_probe,
                           seq=self.nxt[side] - 1)
        return probe, self.ack(1 - side, self.after(1 - side, ts_us))


# --- HTTP as clients, targets and the ALB write it --------------------------


@dataclass(frozen=True)
class Message:
    start_line: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def without(self, *names: str) -> tuple[tuple[str, str], ...]:
        drop = {n.lower() for n in names}
        return tuple((k, v) for k, v in self.headers if k.lower() not in drop)

    def raw(self) -> bytes:
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers)
        return f"{self.start_line}\r\n{head}\r\n".encode() + self.body


CLIENT_AGENTS = {
    "curl": (("User-Agent", "curl/8.11.1"), ("Accept", "*/*")),
    "python-requests": (("User-Agent", "python-requests/2.25.1"),
                        ("Accept-Encoding", "gzip, deflate"), ("Accept", "*/*"),
                        ("Connection", "keep-alive")),
    "firefox": (("User-Agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) "
                               "Gecko/20100101 Firefox/133.0"),
                ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                ("Accept-Language", "en-US,en;q=0.5"), ("Accept-Encoding", "gzip, deflate"),
                ("Connection", "keep-alive"), ("Upgrade-Insecure-Requests", "1"),
                ("Priority", "u=0, i")),
    "chrome": (("Connection", "keep-alive"), ("Upgrade-Insecure-Requests", "1"),
               ("User-Agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                              "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
               ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,"
                          "image/avif,image/webp,*/*;q=0.8"),
               ("Accept-Encoding", "gzip, deflate"), ("Accept-Language", "en-US,en;q=0.9")),
}


def client_request(agent: str, path: str) -> Message:
    """A GET as the named client sends it to the ALB (python-requests' is 151 bytes, as logged)."""
    return Message(f"GET {path} HTTP/1.1", (("Host", ALB_FRONT.ip),) + CLIENT_AGENTS[agent])


def http_date(ts_us: int) -> str:
    return formatdate(ts_us // SECOND, usegmt=True)


def html_page(title: str, size: int) -> bytes:
    """A deterministic page of about ``size`` bytes."""
    head = f"<!DOCTYPE html>\n<html>\n<head><title>{title}</title></head>\n<body>\n"
    tail = "</body>\n</html>\n"
    line = "<p>The quick brown fox jumps over the lazy dog.</p>\n"
    lines = max(0, (size - len(head) - len(tail)) // len(line))
    return (head + line * lines + tail).encode()


def json_items(count: int) -> bytes:
    items = ",".join(f'{{"id":{i},"name":"item-{i:04d}","price":{(i * 37) % 1000 / 10:.2f}}}'
                     for i in range(count))
    return f'{{"items":[{items}]}}'.encode()


def apache_response(ts_us: int, body: bytes, keepalive_s: int) -> Message:
    """Apache 2.4 announces its KeepAliveTimeout in the Keep-Alive header."""
    return Message("HTTP/1.1 200 OK", (
        ("Date", http_date(ts_us)), ("Server", "Apache/2.4.58 (Ubuntu)"),
        ("Last-Modified", "Thu, 11 Dec 2025 12:35:16 GMT"), ("ETag", f'"{len(body):x}-645ac60879b52"'),
        ("Accept-Ranges", "bytes"), ("Content-Length", str(len(body))),
        ("Keep-Alive", f"timeout={keepalive_s}, max=100"), ("Connection", "Keep-Alive"),
        ("Content-Type", "text/html")), body)


def nginx_response(ts_us: int, body: bytes) -> Message:
    return Message("HTTP/1.1 200 OK", (
        ("Server", "nginx/1.22.1"), ("Date", http_date(ts_us)), ("Content-Type", "text/html"),
        ("Content-Length", str(len(body))), ("Last-Modified", "Thu, 11 Dec 2025 12:35:16 GMT"),
        ("Connection", "keep-alive"), ("ETag", f'"693abc44-{len(body):x}"'),
        ("Accept-Ranges", "bytes")), body)


def express_response(ts_us: int, body: bytes) -> Message:
    """Node.js announces its 5 s keepAliveTimeout default."""
    return Message("HTTP/1.1 200 OK", (
        ("X-Powered-By", "Express"), ("Content-Type", "application/json; charset=utf-8"),
        ("Content-Length", str(len(body))), ("ETag", f'W/"{len(body):x}-Qm9keUhhc2g"'),
        ("Date", http_date(ts_us)), ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5")), body)


ALB_ERRORS = {502: "Bad Gateway", 504: "Gateway Time-out"}


def alb_error(status: int, ts_us: int) -> Message:
    """The response the ALB makes up itself, byte for byte like the real one."""
    text = f"{status} {ALB_ERRORS[status]}"
    body = (f"<html>\r\n<head><title>{text}</title></head>\r\n<body>\r\n"
            f"<center><h1>{text}</h1></center>\r\n</body>\r\n</html>\r\n").encode()
    return Message(f"HTTP/1.1 {text}", (
        ("Server", "awselb/2.0"), ("Date", http_date(ts_us)), ("Content-Type", "text/html"),
        ("Content-Length", str(len(body))), ("Connection", "keep-alive")), body)


def alb_client_response(target_response: Message, *, close: bool) -> Message:
    """The target's response as the ALB relays it: framing headers first, hop-by-hop replaced."""
    first = ("Date", "Content-Type", "Content-Length")
    headers = tuple((name, target_response.header(name)) for name in first
                    if target_response.header(name) is not None)
    headers += (("Connection", "close" if close else "keep-alive"),)
    headers += target_response.without(*first, "Connection", "Keep-Alive")
    return Message(target_response.start_line, headers, target_response.body)


# --- the ALB node -----------------------------------------------------------

CLIENT_THINK_US = 60  # a client sends its request this long after completing the handshake


@dataclass(frozen=True)
class Exchange:
    """One proxied request: the client's and the target's halves."""

    back: TcpConversation
    client_request: Sent
    target_request: Sent
    target_response: Sent
    client_response: Sent
    trace_id: str = ""
    received_bytes: int = 0
    sent_bytes: int = 0
    request: Message | None = None
    status: int = 200


class Alb:
    """An ALB node with both ENIs mirrored into one capture."""

    def __init__(self, scenario: str) -> None:
        self.capture = Capture()
        self.rng = random.Random(f"alb-pcap craft {scenario}")
        self.traces: list[str] = []
        """Every X-Amzn-Trace-Id the ALB added, in order (its access log's trace_id)."""
        self.log: list[LogEntry] = []

    def trace_id(self, ts_us: int) -> str:
        return f"Root=1-{ts_us // SECOND:08x}-{self.rng.getrandbits(96):024x}"

    def accept(self, client: Host, syn_us: int, rtt_us: int) -> tuple[TcpConversation, int]:
        """A client connects to the listener; returns the connection and when it sends its request."""
        front = TcpConversation(self.capture, self.rng, client, ALB_FRONT, LISTENER_PORT,
                                near=ACCEPTOR, rtt_us=rtt_us)
        return front, front.handshake(syn_us) + CLIENT_THINK_US

    def accept_for(self, client: Host, request_us: int, rtt_us: int) -> TcpConversation:
        """A client that connects just in time for its request to arrive at ``request_us``."""
        return self.accept(client, request_us - rtt_us - TURNAROUND_US - CLIENT_THINK_US, rtt_us)[0]

    def target_request(self, request: Message, client: Host, ts_us: int,
                       trace_id: str | None = None) -> Message:
        """The request as the target gets it: X-Forwarded-*, the trace id, no hop-by-hop headers."""
        headers = (("X-Forwarded-For", client.ip), ("X-Forwarded-Proto", "http"),
                   ("X-Forwarded-Port", str(LISTENER_PORT)), ("Host", request.header("Host")),
                   ("X-Amzn-Trace-Id", trace_id or self.trace_id(ts_us)))
        self.traces.append(headers[-1][1])
        return Message(request.start_line,
                       headers + request.without("Host", "Connection", "Keep-Alive"), request.body)

    def forward(self, front: TcpConversation, back: TcpConversation | None, ts_us: int,
                request: Message, trace_id: str | None = None
                ) -> tuple[TcpConversation, Sent, Sent]:
        """The client's request arrives at ``ts_us``; the ALB relays it on ``back``.

        Without an idle target connection (``back`` None) it opens one first.
        """
        client_sent = front.send(OPENER, ts_us, request.raw())
        at = client_sent.last.ts_us + ALB_PROCESSING_US
        if back is None:
            back = TcpConversation(self.capture, self.rng, ALB_BACK, TARGET, TARGET_PORT,
                                   near=OPENER, rtt_us=TARGET_RTT_US)
            at = back.handshake(at) + SEGMENT_GAP_US
        relayed = self.target_request(request, front.hosts[OPENER], at, trace_id)
        return back, client_sent, back.send(OPENER, at, relayed.raw())

    def exchange(self, front: TcpConversation, back: TcpConversation | None, ts_us: int,
                 request: Message, respond: Callable[[int], Message], server_time_us: int,
                 *, close_client: bool = False) -> Exchange:
        """A request that the target answers after ``server_time_us``, relayed back to the client."""
        back, client_sent, target_sent = self.forward(front, back, ts_us, request)
        at = back.after(ACCEPTOR, target_sent.last.ts_us) + server_time_us
        target_response = respond(at)
        answered = back.send(ACCEPTOR, at, target_response.raw())
        relayed = alb_client_response(target_response, close=close_client)
        delivered = front.send(ACCEPTOR, answered.last.ts_us + ALB_PROCESSING_US, relayed.raw())
        done = Exchange(back, client_sent, target_sent, answered, delivered, self.traces[-1],
                        len(request.raw()), len(relayed.raw()), request, int(target_response.start_line.split()[1]))
        self.log_exchange(front, done)
        return done

    # -- the access log: one entry per request, the fields the article and the KB show -------------

    def log_exchange(self, front: TcpConversation, ex: Exchange) -> None:
        """A relayed response: request, target and response processing times from the frames."""
        self.log.append(LogEntry(
            received_us=ex.client_request.first.ts_us, done_us=ex.client_response.last.ts_us, front=front,
            back=ex.back, request=ex.request, trace_id=ex.trace_id, elb_status=ex.status,
            target_status=str(ex.status),
            times=(ex.target_request.first.ts_us - ex.client_request.last.ts_us,
                   ex.target_response.first.ts_us - ex.target_request.last.ts_us,
                   ex.client_response.first.ts_us - ex.target_response.last.ts_us),
            received_bytes=ex.received_bytes, sent_bytes=ex.sent_bytes))

    def log_error(self, front: TcpConversation, back: TcpConversation, request: Message, received: Sent,
                  done_us: int, status: int, sent_bytes: int, finding: Finding | None = None) -> None:
        """The ALB's own 502/504/460: target_status_code "-", target and response processing times -1."""
        self.log.append(LogEntry(
            received_us=received.first.ts_us, done_us=done_us, front=front, back=back, request=request,
            trace_id=self.traces[-1], elb_status=status, target_status="-",
            times=(received.last.ts_us - received.first.ts_us, None, None),
            received_bytes=len(request.raw()), sent_bytes=sent_bytes, finding=finding))

    def answer(self, front: TcpConversation, status: int, ts_us: int) -> Sent:
        return front.send(ACCEPTOR, ts_us, alb_error(status, ts_us).raw())


# --- the ALB access log ------------------------------------------------------

ALB_RESOURCE = "app/alb-demo/1fa8b17e4c17e7c7"
TARGET_GROUP_ARN = ("arn:aws:elasticloadbalancing:ap-southeast-2:592752082067:"
                    "targetgroup/alb-demo/e1419229e570d841")


@dataclass(eq=False)
class LogEntry:
    """One access-log entry of the crafted ALB, in the documented field order when written."""

    received_us: int
    done_us: int
    front: TcpConversation
    back: TcpConversation | None
    request: Message
    trace_id: str
    elb_status: int
    target_status: str
    times: tuple[int | None, int | None, int | None]
    """request, target and response processing times in µs; None is logged -1."""
    received_bytes: int
    sent_bytes: int
    finding: Finding | None = None
    """The finding this entry is the log line of (set by the scenario)."""

    def line(self) -> str:
        def seconds(us: int | None) -> str:
            return "-1" if us is None else f"{max(us, 0) / SECOND:.3f}"

        method, path, version = self.request.start_line.split(" ")
        client = f"{self.front.hosts[OPENER].ip}:{self.front.ports[OPENER]}"
        target = f"{TARGET.ip}:{TARGET_PORT}"
        conn_trace = "TID_" + hashlib.sha256(self.front.flow.encode()).hexdigest()[:32]
        fields = [
            "http", iso_us(self.done_us), ALB_RESOURCE, client, target, *(seconds(t) for t in self.times),
            str(self.elb_status), self.target_status, str(self.received_bytes), str(self.sent_bytes),
            f'"{method} http://{self.request.header("Host")}:{LISTENER_PORT}{path} {version}"',
            f'"{self.request.header("User-Agent") or "-"}"', "-", "-", TARGET_GROUP_ARN,
            f'"{self.trace_id}"', '"-"', '"-"', "0", iso_us(self.received_us), '"forward"', '"-"', '"-"',
            f'"{target}"', f'"{self.target_status}"', '"-"', '"-"', conn_trace, '"-"', '"-"', '"-"',
        ]
        return " ".join(fields)


def iso_us(ts_us: int) -> str:
    seconds, micros = divmod(ts_us, SECOND)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


def access_log(entries: list[LogEntry]) -> str:
    """Entries in the order the ALB wrote them (by response time)."""
    return "".join(e.line() + "\n" for e in sorted(entries, key=lambda e: e.done_us))


# --- scenarios --------------------------------------------------------------


@dataclass(eq=False)
class Finding:
    kind: str
    at: Frame  # the frame whose time is the finding's ts
    side: str
    client_flow: str | None
    target_flow: str | None
    status: int | None  # what the client received
    evidence: list[Frame]
    proxy_status: int | None = None  # what the ALB logs, where it differs (460)


@dataclass
class Crafted:
    name: str
    scenario: str
    description: str
    topology: dict
    timers: dict
    frames: list[Frame]
    findings: list[Finding]
    log: list[LogEntry] = field(default_factory=list)
    """The ALB's access log for the capture's requests (``<name>.log``)."""


def timers(idle: int, *, target_keepalive: int | None = None, client_keepalive: int | None = None,
           client_timeout: int | None = None) -> dict:
    return {"proxy_idle_timeout_s": idle, "target_keepalive_timeout_s": target_keepalive,
            "client_keepalive_duration_s": client_keepalive,
            "client_response_timeout_s": client_timeout}


def topology(clients: Iterable[Host], target_software: str) -> dict:
    return {"clients": [c.ip for c in clients],
            "proxy": {"kind": "AWS ALB (replayed)", "front": f"{ALB_FRONT.ip}:{LISTENER_PORT}",
                      "back": ALB_BACK.ip},
            "targets": [{"endpoint": f"{TARGET.ip}:{TARGET_PORT}", "software": target_software}],
            "capture_point": "both ALB ENIs mirrored",
            "mirror": "plain Ethernet"}


def at_epoch(iso: str) -> int:
    moment = datetime.fromisoformat(iso)
    return int(moment.replace(microsecond=0).timestamp()) * SECOND + moment.microsecond


def curl_closes(front: TcpConversation, answered: Sent) -> None:
    """curl, with one URL to fetch, closes as soon as it has the response."""
    front.close(OPENER, front.after(OPENER, answered.last.ts_us) + 150)


def gateway_timeout() -> Crafted:
    """Article error 1: request out at 25421.860, ALB FIN to the target at 25481.863, 504."""
    alb = Alb("alb-gateway-timeout")
    front, request_at = alb.accept(CLIENT, at_epoch("2025-12-14T09:10:03+00:00"), EC2_CLIENT_RTT_US)
    request = client_request("curl", "/slow.php")
    back, client_sent, target_sent = alb.forward(front, None, request_at, request)
    gave_up = back.fin(OPENER, target_sent.last.ts_us + 60 * SECOND)
    back.ack(ACCEPTOR, back.after(ACCEPTOR, gave_up.ts_us))
    answered = alb.answer(front, 504, gave_up.ts_us + ALB_PROCESSING_US)
    curl_closes(front, answered)
    finding = Finding("gateway_timeout", gave_up, "target", front.flow, back.flow, 504,
                      [client_sent.first, target_sent.first, gave_up, answered.first])
    alb.log_error(front, back, request, client_sent, answered.last.ts_us, 504,
                  len(alb_error(504, answered.first.ts_us).raw()), finding)
    return Crafted(
        "alb-gateway-timeout", "alb-gateway-timeout",
        "curl GETs /slow.php; the ALB relays it to the target, which never answers. Exactly "
        "60 s (the idle timeout) after the request went out the ALB closes the target connection "
        "with a FIN and answers the client 504 with Server: awselb/2.0. The article measured "
        "60.003 s (25421.860 -> 25481.863); the replay uses 60.000 s. Expected: one "
        "gateway_timeout, not also an idle_timeout_close: the target connection was waiting for "
        "a response, not idle, and it is one event. The target only ACKs the FIN (its script is "
        "still running when the capture ends).",
        topology([CLIENT], "Apache/2.4.58 + PHP, /slow.php runs longer than 60 s"),
        timers(60), alb.capture.frames(), [finding], alb.log)


def target_fin_502() -> Crafted:
    """Article error 2: request out at 9688.184, target FIN 11 s later, 502."""
    alb = Alb("alb-target-fin-502")
    front, request_at = alb.accept(CLIENT, at_epoch("2025-12-14T11:42:17+00:00"), EC2_CLIENT_RTT_US)
    request = client_request("curl", "/report.php")
    back, client_sent, target_sent = alb.forward(front, None, request_at, request)
    target_fin = back.fin(ACCEPTOR, target_sent.last.ts_us + 11 * SECOND)
    answered = alb.answer(front, 502, target_fin.ts_us + ALB_PROCESSING_US)
    alb_fin = back.fin(OPENER, answered.first.ts_us + TURNAROUND_US)
    back.ack(ACCEPTOR, back.after(ACCEPTOR, alb_fin.ts_us))
    curl_closes(front, answered)
    finding = Finding("target_reset", target_fin, "target", front.flow, back.flow, 502,
                      [client_sent.first, target_sent.first, target_fin, answered.first])
    alb.log_error(front, back, request, client_sent, answered.last.ts_us, 502,
                  len(alb_error(502, answered.first.ts_us).raw()), finding)
    return Crafted(
        "alb-target-fin-502", "alb-target-fin-502",
        "curl GETs /report.php; 11 s after the ALB relayed it, the target's script timeout kills "
        "the worker, which closes the connection with a FIN and no response. The ALB answers the "
        "client 502 (Server: awselb/2.0) and closes its side of the target connection.",
        topology([CLIENT], "Apache/2.4.58 + PHP, worker killed by a script timeout after 11 s"),
        timers(60), alb.capture.frames(), [finding], alb.log)


# The access-log line the article prints for its 460.
ARTICLE_460_RECEIVED = "2025-12-15T17:17:38.632000+00:00"
ARTICLE_460_TRACE_ID = "Root=1-694042b2-2084024a481f9518671832f8"


def client_timeout_460() -> Crafted:
    """Article: python-requests with timeout=10 gives up; the ALB logs 460."""
    alb = Alb("alb-client-timeout-460")
    received = at_epoch(ARTICLE_460_RECEIVED)
    front = alb.accept_for(CLIENT, received, EC2_CLIENT_RTT_US)
    request = client_request("python-requests", "/delay.php")
    back, client_sent, target_sent = alb.forward(front, None, received, request, trace_id=ARTICLE_460_TRACE_ID)
    # requests' read timeout runs from the request's send: 10 s later at the capture point too.
    gave_up, alb_fin, _ = front.close(OPENER, client_sent.last.ts_us + 10 * SECOND)
    # The ALB cannot reuse a connection with a request outstanding, so it closes it as well.
    cancelled = back.fin(OPENER, alb_fin.ts_us + TURNAROUND_US)
    back.ack(ACCEPTOR, back.after(ACCEPTOR, cancelled.ts_us))
    # delay.php sleeps 15 s; its late answer meets a closed socket and the ALB resets.
    done_at = back.after(ACCEPTOR, target_sent.last.ts_us) + 15 * SECOND
    late = back.send(ACCEPTOR, done_at, apache_response(done_at, html_page("delayed", 300), 5).raw(),
                     acked=False)
    back.rst(OPENER, back.after(OPENER, late.last.ts_us))
    finding = Finding("client_abort", gave_up, "client", front.flow, back.flow, None,
                      [client_sent.first, target_sent.first, gave_up, cancelled], proxy_status=460)
    # The article's line: 0.000 -1 -1 460 - 151 0, logged when the client left.
    alb.log_error(front, back, request, client_sent, gave_up.ts_us + ALB_PROCESSING_US, 460, 0, finding)
    return Crafted(
        "alb-client-timeout-460", "alb-client-timeout-460",
        "python-requests/2.25.1 GETs /delay.php with timeout=10 and closes (FIN) 10 s later "
        "without a response; the ALB logs 460 (the article's log line: received "
        f"{ARTICLE_460_RECEIVED}, trace id {ARTICLE_460_TRACE_ID}, 151 bytes received) but the "
        "client gets nothing, so status is null. Chosen, the article does not show it: the ALB "
        "closes the client side and FINs the target connection at once (it cannot reuse it with "
        "a request outstanding); the target's answer at 15 s meets the closed socket and the ALB "
        "resets it (RST).",
        topology([CLIENT], "Apache/2.4.58 + PHP, /delay.php sleeps 15 s"),
        timers(60, client_timeout=10), alb.capture.frames(), [finding], alb.log)


def keepalive_race() -> Crafted:
    """Target keep-alive 5 s < ALB idle 60 s: the target's FIN crosses a reused request."""
    alb = Alb("alb-keepalive-race")
    front, request_at = alb.accept(BROWSER, at_epoch("2025-12-14T14:03:51+00:00"), BROWSER_RTT_US)
    first = alb.exchange(front, None, request_at, client_request("chrome", "/api/items"),
                         partial(express_response, body=json_items(90)), 3 * MS)
    back = first.back
    second = alb.exchange(front, back, first.client_response.last.ts_us + 1800 * MS,
                          client_request("chrome", "/api/items?page=2"),
                          partial(express_response, body=json_items(12)), 2 * MS)
    idle_from = second.target_response.last
    closes_at = idle_from.ts_us + 5 * SECOND
    # A second client's request reaches the ALB just as the target's keep-alive timer fires;
    # the ALB relays it on the idle connection 200 us before the target's FIN arrives.
    relay_at = closes_at - 200
    curl = alb.accept_for(CLIENT, relay_at - ALB_PROCESSING_US, EC2_CLIENT_RTT_US)
    request = client_request("curl", "/api/orders")
    client_sent = curl.send(OPENER, relay_at - ALB_PROCESSING_US, request.raw())
    acked_before = back.nxt[OPENER]  # all the target had received when it sent its FIN
    relayed = alb.target_request(request, CLIENT, relay_at)
    target_sent = back.send(OPENER, relay_at, relayed.raw(), acked=False)
    race_trace = alb.traces[-1]
    target_fin = back.fin(ACCEPTOR, closes_at, ack=acked_before)
    alb_ack = back.ack(OPENER, back.after(OPENER, target_fin.ts_us))
    # The target's closed socket resets the request (seq taken from the request's ACK, i.e.
    # the FIN's own seq), then the ALB's ACK of the FIN (seq after the FIN).
    reset = back.rst(ACCEPTOR, target_sent.last.ts_us + TARGET_RTT_US, seq=back.nxt[ACCEPTOR] - 1)
    back.rst(ACCEPTOR, back.after(ACCEPTOR, alb_ack.ts_us))
    answered = alb.answer(curl, 502, reset.ts_us + ALB_PROCESSING_US)
    curl_closes(curl, answered)
    finding = Finding("keepalive_race", target_fin, "target", curl.flow, back.flow, 502,
                      [idle_from, client_sent.first, target_sent.first, target_fin, reset,
                       answered.first])
    assert alb.traces[-1] == race_trace
    alb.log_error(curl, back, request, client_sent, answered.last.ts_us, 502,
                  len(alb_error(502, answered.first.ts_us).raw()), finding)
    return Crafted(
        "alb-keepalive-race", "alb-keepalive-race",
        "A browser makes two healthy requests; the ALB opens one target connection and reuses "
        "it. The target (Node.js, keepAliveTimeout 5 s) closes it exactly 5.000 s after its last "
        "response; 200 us before that FIN reaches the ALB, the ALB relays a second client's "
        "(curl) request on the same connection. The target's closed socket answers the request "
        "with RST and the ALB answers curl 502 (Server: awselb/2.0), without retrying. Expected: "
        "one keepalive_race (not also a target_keepalive_close for the same FIN).",
        topology([BROWSER, CLIENT], "Node.js/Express, keepAliveTimeout 5 s"),
        timers(60, target_keepalive=5), alb.capture.frames(), [finding], alb.log)


def idle_close_both_sides(front: TcpConversation, page: Exchange, idle_us: int
                          ) -> tuple[Frame, Frame]:
    """The ALB's idle timer fires on each connection ``idle_us`` after its last HTTP data."""
    to_target = page.back.close(OPENER, page.target_response.last.ts_us + idle_us)[0]
    to_client = front.close(ACCEPTOR, page.client_response.last.ts_us + idle_us)[0]
    return to_client, to_target


def idle_timeout_keepalive_probes() -> Crafted:
    """Article: Firefox probes every 10 s; the ALB closes 60 s after the last HTTP data anyway."""
    alb = Alb("alb-idle-timeout-keepalive-probes")
    front, request_at = alb.accept(BROWSER, at_epoch("2025-12-14T16:21:09+00:00"), BROWSER_RTT_US)
    page = alb.exchange(front, None, request_at, client_request("firefox", "/"),
                        partial(nginx_response, body=html_page("home", 2600)), 1 * MS)
    # Windows sends the first probe 10 s after the last segment it sent (its ACK of the page)
    # and each next one 10 s after the previous answer arrived.
    last_data = page.client_response.last
    probes = []
    probe_at = front.after(OPENER, last_data.ts_us) + 10 * SECOND
    while probe_at < last_data.ts_us + 60 * SECOND:
        probe, answer = front.keepalive_probe(OPENER, probe_at)
        probes.append(probe)
        probe_at = front.after(OPENER, answer.ts_us) + 10 * SECOND
    to_client, to_target = idle_close_both_sides(front, page, 60 * SECOND)
    findings = [
        # one event, one finding: the refinement replaces the idle close it refines
        Finding("tcp_keepalive_ignored", to_client, "client", front.flow, None, None,
                [last_data, *probes, to_client]),
        Finding("idle_timeout_close", to_target, "target", None, page.back.flow, None,
                [page.target_response.last, to_target]),
    ]
    return Crafted(
        "alb-idle-timeout-keepalive-probes", "alb-idle-timeout-keepalive-probes",
        f"Firefox on Windows loads a page and stays connected, sending a TCP keep-alive probe "
        f"(1 byte at next seq - 1) every 10 s, {len(probes)} in all; the ALB ACKs each but they "
        "do not reset its idle timer: it closes the client connection exactly 60 s after the "
        "last HTTP data (the article's pkt#468 -> pkt#3875), and the target connection 60 s "
        "after the target's response (nginx would keep it 75 s).",
        topology([BROWSER], "nginx/1.22.1, keepalive_timeout 75 s"),
        timers(60, target_keepalive=75), alb.capture.frames(), findings, alb.log)


def idle_timeout_both_sides() -> Crafted:
    """Article: ALB idle 5 s, target keep-alive 10 s: the ALB closes both sides after 5 s."""
    alb = Alb("alb-idle-timeout-both-sides")
    front, request_at = alb.accept(BROWSER, at_epoch("2025-12-14T16:48:30+00:00"), BROWSER_RTT_US)
    page = alb.exchange(front, None, request_at, client_request("chrome", "/"),
                        partial(apache_response, body=html_page("home", 900), keepalive_s=10), 1 * MS)
    to_client, to_target = idle_close_both_sides(front, page, 5 * SECOND)
    findings = [
        Finding("idle_timeout_close", to_client, "client", front.flow, None, None,
                [page.client_response.last, to_client]),
        Finding("idle_timeout_close", to_target, "target", None, page.back.flow, None,
                [page.target_response.last, to_target]),
    ]
    return Crafted(
        "alb-idle-timeout-both-sides", "alb-idle-timeout-both-sides",
        "ALB idle timeout 5 s, target (Apache, KeepAliveTimeout 10) keeps connections 10 s: "
        "after one request the ALB closes both connections exactly 5 s after the last HTTP data "
        "on each, before the target would.",
        topology([BROWSER], "Apache/2.4.58, KeepAliveTimeout 10"),
        timers(5, target_keepalive=10), alb.capture.frames(), findings, alb.log)


def client_keepalive_duration() -> Crafted:
    """Article: idle 300 s, client keep-alive 60 s: the request at 81 s gets Connection: close."""
    alb = Alb("alb-client-keepalive-duration")
    opened = at_epoch("2025-12-15T08:30:12+00:00")
    front, request_at = alb.accept(CLIENT, opened, EC2_CLIENT_RTT_US)
    status_page = partial(nginx_response, body=html_page("status", 400))
    # A requests.Session polling every 7 s, then pausing: the first request after the
    # 60 s keep-alive duration comes at 81 s, as in the article.
    back = None
    for age_s in (0, 7, 14, 21, 28, 35, 42, 49, 56):
        back = alb.exchange(front, back, max(request_at, opened + age_s * SECOND),
                            client_request("python-requests", "/status"), status_page, 1 * MS).back
    last = alb.exchange(front, back, opened + 81 * SECOND,
                        client_request("python-requests", "/status"), status_page, 1 * MS,
                        close_client=True)
    expired, _, _ = front.close(ACCEPTOR, last.client_response.last.ts_us + TURNAROUND_US)
    finding = Finding("client_keepalive_expiry", expired, "client", front.flow, None, 200,
                      [front.syn, last.client_request.first, last.client_response.first, expired])
    alb.log[-1].finding = finding  # the request served with Connection: close
    return Crafted(
        "alb-client-keepalive-duration", "alb-client-keepalive-duration",
        "ALB idle timeout 300 s, HTTP client keep-alive duration 60 s. A python-requests session "
        "polls /status every 7 s up to 56 s, pauses, and asks again 81 s after connecting: the "
        "ALB serves that request with Connection: close and closes the client connection (FIN). "
        "The target connection stays open (nginx keeps it 75 s, requests come more often).",
        topology([CLIENT], "nginx/1.22.1, keepalive_timeout 75 s"),
        timers(300, target_keepalive=75, client_keepalive=60), alb.capture.frames(), [finding], alb.log)


def target_keepalive_close() -> Crafted:
    """Article: target keep-alive 10 s closes exactly 10 s after its last response (#1177 -> #1595)."""
    alb = Alb("alb-target-keepalive-close")
    front, request_at = alb.accept(BROWSER, at_epoch("2025-12-14T10:05:44+00:00"), BROWSER_RTT_US)
    page = partial(apache_response, body=html_page("home", 1200), keepalive_s=10)
    first = alb.exchange(front, None, request_at, client_request("chrome", "/"), page, 1 * MS)
    second = alb.exchange(front, first.back, first.client_response.last.ts_us + 6212 * MS,
                          client_request("chrome", "/"), page, 1 * MS)
    target_fin, _, _ = second.back.close(ACCEPTOR, second.target_response.last.ts_us + 10 * SECOND)
    finding = Finding("target_keepalive_close", target_fin, "target", None, second.back.flow, None,
                      [second.target_response.last, target_fin])
    return Crafted(
        "alb-target-keepalive-close", "alb-target-keepalive-close",
        "A browser makes a request, and another about 6 s later on the same connections; the "
        "target (Apache, KeepAliveTimeout 10) closes the idle target connection exactly 10 s "
        "after its last response and the ALB closes its side too. No error: nothing was in "
        "flight. The client connection stays open (ALB idle timeout 60 s).",
        topology([BROWSER], "Apache/2.4.58, KeepAliveTimeout 10"),
        timers(60, target_keepalive=10), alb.capture.frames(), [finding], alb.log)


# --- mirror artefacts -------------------------------------------------------

VNI = 4242  # one VNI for every mirror session of the VPC
MIRROR_TARGET = Host("198.19.100.10", "02:00:c6:13:64:0a", LINUX)
MIRROR_SOURCE_MAC = "02:00:c6:13:00:01"
VXLAN_PORT = 4789


def underlay(inner_ip: str) -> str:
    """The mirrored ENI's address on the mirror network: 198.18.a.b -> 198.19.a.b."""
    return "198.19." + inner_ip.split(".", 2)[2]


def mirrored_eni(frame: Frame, proxy: set[str]) -> str:
    """The inner address whose ENI mirrored this copy: the proxy's, or the peer's."""
    packet = IP(frame.data[14:])
    proxy_end, peer = (packet.src, packet.dst) if packet.src in proxy else (packet.dst, packet.src)
    return proxy_end if frame.mirrored_at == "alb" else peer


def vxlan_encapsulate(frames: list[Frame], vni: int = VNI,
                      proxy: set[str] = ALB_ADDRESSES) -> list[Frame]:
    """Each frame as AWS Traffic Mirroring delivers it: Ether/IP/UDP 4789/VXLAN around it.

    The outer source is the underlay address of the ENI that mirrored the copy
    (the one with an address in ``proxy``, unless the copy came from the peer).
    A frame already cut short (``truncate_frames``, the session's PacketLength) is
    wrapped as it is: the outer packet is complete, the inner IP length is not.
    """
    wrapped = []
    for ip_id, frame in enumerate(frames):
        inner = IP(frame.data[14:])
        # AWS spreads flows over source ports; any stable per-flow hash does.
        sport = 49152 + zlib.crc32("-".join(sorted((inner.src, inner.dst))).encode()) % 16384
        outer = (Ether(src=MIRROR_SOURCE_MAC, dst=MIRROR_TARGET.mac)
                 / IP(src=underlay(mirrored_eni(frame, proxy)), dst=MIRROR_TARGET.ip, ttl=255,
                      id=ip_id % 2**16, flags="DF")
                 / UDP(sport=sport, dport=VXLAN_PORT, chksum=0)
                 / VXLAN(flags=0x08, vni=vni) / Raw(frame.data))
        data = bytes(outer)
        wrapped.append(Frame(frame.ts_us, data, len(data), frame.source, frame.mirrored_at))
    return wrapped


def duplicate_both_ends(frames: list[Frame], rng: random.Random) -> list[Frame]:
    """Both ends mirrored: each frame again a few microseconds later, from the peer's ENI."""
    copies = [Frame(f.ts_us + rng.randint(2, 40), f.data, f.wire_len, f.source, "peer")
              for f in frames]
    return sorted(frames + copies, key=lambda f: f.ts_us)


def drop_frames(frames: list[Frame], rate: float, rng: random.Random,
                keep: Iterable[Frame] = ()) -> list[Frame]:
    """Lose ``rate`` of the frames (at least one), never one in ``keep`` (the evidence)."""
    kept = {f.source for f in keep}
    candidates = [f for f in frames if f.source not in kept]
    lost = set(rng.sample(candidates, max(1, round(rate * len(frames)))))
    return [f for f in frames if f not in lost]


def truncate_frames(frames: list[Frame], snaplen: int, count: int, rng: random.Random,
                    keep: Iterable[Frame] = ()) -> list[Frame]:
    """Cut ``count`` frames longer than ``snaplen`` to it, never one in ``keep``."""
    kept = {f.source for f in keep}
    long = [f for f in frames if len(f.data) > snaplen and f.source not in kept]
    cut = set(rng.sample(long, min(count, len(long))))
    return [Frame(f.ts_us, f.data[:snaplen], f.wire_len, f.source, f.mirrored_at) if f in cut else f
            for f in frames]


def evidence(crafted: Crafted) -> list[Frame]:
    return [f for finding in crafted.findings for f in finding.evidence]


def mirror_variant(crafted: Crafted) -> Crafted:
    rng = random.Random(f"alb-pcap craft {crafted.name} mirror")
    frames = vxlan_encapsulate(duplicate_both_ends(crafted.frames, rng))
    return replace(
        crafted, name=f"{crafted.name}-mirror", frames=frames,
        description=crafted.description + f" Mirror variant: VXLAN (UDP {VXLAN_PORT}, VNI {VNI}) "
        "from both ends, so every frame appears twice a few microseconds apart with a different "
        "outer source (198.19.x.y for the ENI of 198.18.x.y); evidence frames name the first copy.",
        topology=crafted.topology | {"mirror": f"vxlan vni={VNI}, both ends, duplicates"})


LOSSY_SNAPLEN = 96


def lossy_variant(crafted: Crafted) -> Crafted:
    rng = random.Random(f"alb-pcap craft {crafted.name} lossy")
    survivors = drop_frames(crafted.frames, 0.01, rng, keep=evidence(crafted))
    frames = vxlan_encapsulate(truncate_frames(survivors, LOSSY_SNAPLEN, 3, rng, keep=evidence(crafted)))
    return replace(
        crafted, name=f"{crafted.name}-lossy", frames=frames,
        description=crafted.description + f" Lossy variant: VXLAN (VNI {VNI}) from the ALB's ENIs "
        f"only, {len(crafted.frames) - len(survivors)} frame(s) lost (1%) and 3 cut to the mirror "
        f"session's PacketLength of {LOSSY_SNAPLEN} bytes (inner packet short, outer complete); "
        "no evidence frame was lost or cut.",
        topology=crafted.topology | {"mirror": f"vxlan vni={VNI}, 1% drop, packet length {LOSSY_SNAPLEN}"})


# --- writing ----------------------------------------------------------------

TS_TOLERANCE_S = 0.005  # an analyzer may date a finding by a neighbouring frame (the 504 after the FIN)
PCAP_SNAPLEN = 262144
LINKTYPE_ETHERNET = 1


def write_pcap(path: Path, frames: list[Frame]) -> None:
    """Classic pcap, microsecond timestamps; caplen < wire length where a frame was cut."""
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, PCAP_SNAPLEN, LINKTYPE_ETHERNET))
        for frame in frames:
            seconds, micros = divmod(frame.ts_us, SECOND)
            out.write(struct.pack("<IIII", seconds, micros, len(frame.data), frame.wire_len))
            out.write(frame.data)


def expected(crafted: Crafted) -> dict:
    number = {}
    for n, frame in enumerate(crafted.frames, 1):
        number.setdefault(frame.source, n)
    log_file = f"{crafted.name}.log"
    lines = {id(e.finding): n for n, e in enumerate(sorted(crafted.log, key=lambda e: e.done_us), 1)
             if e.finding is not None}
    findings = []
    for f in crafted.findings:
        out = finding_json(f, number)
        # The access-log line that records this finding's request; null: not logged (no request).
        out["log"] = {"file": log_file, "line": lines[id(f)]} if id(f) in lines else None
        findings.append(out)
    return {
        "capture": f"{crafted.name}.pcap",
        "scenario": crafted.scenario,
        "proxy": "alb-replay",
        "description": crafted.description,
        "source": "crafted from the seed article's timings",
        "topology": crafted.topology,
        "timers": crafted.timers,
        "access_log": log_file,
        "findings": findings,
    }


def finding_json(finding: Finding, number: dict[Frame, int]) -> dict:
    # ts_source/ts_tolerance_s and proxy_status as the lab's expected files have them.
    out = {"kind": finding.kind, "ts": finding.at.ts_us / SECOND, "ts_source": "capture",
           "ts_tolerance_s": TS_TOLERANCE_S, "side": finding.side,
           "client_flow": finding.client_flow, "target_flow": finding.target_flow,
           "status": finding.status}
    if finding.proxy_status is not None:
        out["proxy_status"] = finding.proxy_status
    out["evidence_frames"] = sorted(number[e] for e in finding.evidence)
    return out


def write(build: Callable[[], Crafted], out_dir: Path) -> list[Path]:
    crafted = build()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pcap = out_dir / f"{crafted.name}.pcap"
    truth = out_dir / f"{crafted.name}.expected.json"
    log = out_dir / f"{crafted.name}.log"
    write_pcap(pcap, crafted.frames)
    truth.write_text(json.dumps(expected(crafted), indent=2) + "\n")
    log.write_text(access_log(crafted.log))
    return [pcap, truth, log]


BUILDERS: dict[str, Callable[[], Crafted]] = {
    "alb-gateway-timeout": gateway_timeout,
    "alb-target-fin-502": target_fin_502,
    "alb-client-timeout-460": client_timeout_460,
    "alb-keepalive-race": keepalive_race,
    "alb-keepalive-race-mirror": lambda: mirror_variant(keepalive_race()),
    "alb-keepalive-race-lossy": lambda: lossy_variant(keepalive_race()),
    "alb-idle-timeout-keepalive-probes": idle_timeout_keepalive_probes,
    "alb-idle-timeout-both-sides": idle_timeout_both_sides,
    "alb-client-keepalive-duration": client_keepalive_duration,
    "alb-target-keepalive-close": target_keepalive_close,
}

CRAFTED: dict[str, Callable[[Path], list[Path]]] = {
    name: partial(write, build) for name, build in BUILDERS.items()
}


def write_all(out_dir: Path) -> list[Path]:
    return [path for write_one in CRAFTED.values() for path in write_one(Path(out_dir))]
