"""The crafted ALB captures: reproducible, TCP-consistent, and timed as designed.

The captures are read back with dpkt, not with the scapy that wrote them, so a
mistake in the generator's packet building does not check itself.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest

from alb_pcap.lab import craft

SAMPLES = Path(__file__).resolve().parent.parent / "sample_captures"
PLAIN = [name for name in craft.CRAFTED if not name.endswith(("-mirror", "-lossy"))]
CLIENT, BROWSER = "198.18.0.10", "198.18.0.20"
ALB_FRONT, ALB_BACK, TARGET = "198.18.1.10", "198.18.2.10", "198.18.3.11"
KINDS = {"idle_timeout_close", "target_keepalive_close", "keepalive_race", "target_reset",
         "gateway_timeout", "client_abort", "client_keepalive_expiry", "tcp_keepalive_ignored"}


@dataclass(frozen=True)
class Segment:
    frame: int
    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    vni: int | None
    outer_src: str | None

    @property
    def conn(self) -> frozenset:
        return frozenset({(self.src, self.sport), (self.dst, self.dport)})

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


def ip_text(packed: bytes) -> str:
    return ".".join(str(b) for b in packed)


def read(path: Path) -> list[Segment]:
    segments = []
    with path.open("rb") as f:
        for frame, (ts, buf) in enumerate(dpkt.pcap.Reader(f), 1):
            ip = dpkt.ethernet.Ethernet(buf).data
            vni = outer_src = None
            if isinstance(ip.data, dpkt.udp.UDP) and ip.data.dport == 4789:
                vxlan = bytes(ip.data.data)
                assert vxlan[0] == 0x08, "VXLAN I flag"
                vni, outer_src = int.from_bytes(vxlan[4:7], "big"), ip_text(ip.src)
                ip = dpkt.ethernet.Ethernet(vxlan[8:]).data
            tcp = ip.data
            segments.append(Segment(frame, ts, ip_text(ip.src), tcp.sport, ip_text(ip.dst), tcp.dport,
                                    tcp.seq, tcp.ack, tcp.flags, bytes(tcp.data), vni, outer_src))
    return segments


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crafted")
    craft.write_all(out)
    return out


@pytest.fixture(scope="module")
def captures(generated) -> dict[str, list[Segment]]:
    return {name: read(generated / f"{name}.pcap") for name in craft.CRAFTED}


def test_committed_samples_are_what_the_generator_writes(generated):
    made = sorted(p.name for p in generated.iterdir())
    assert made == sorted(p.name for p in SAMPLES.glob("alb-*")), "regenerate: craft.write_all"
    for name in made:
        assert (generated / name).read_bytes() == (SAMPLES / name).read_bytes(), name


def test_crafted_api_writes_one_capture_and_its_truth(tmp_path):
    paths = craft.CRAFTED["alb-target-fin-502"](tmp_path)
    assert [p.name for p in paths] == ["alb-target-fin-502.pcap", "alb-target-fin-502.expected.json",
                                       "alb-target-fin-502.log"]


def modular_le(a: int, b: int) -> bool:
    return (b - a) % 2**32 < 2**31


def check_tcp(segments: list[Segment]) -> list[Segment]:
    """Handshake first, seq continuous per direction, ACKs never ahead; returns the probes."""
    nxt: dict[tuple, int] = {}
    last_ack: dict[tuple, int] = {}
    seen: Counter = Counter()
    probes = []
    for s in segments:
        me, peer = (s.src, s.sport), (s.dst, s.dport)
        seen[s.conn] += 1
        opening = {1: dpkt.tcp.TH_SYN, 2: dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, 3: dpkt.tcp.TH_ACK}
        if seen[s.conn] in opening:
            assert s.flags == opening[seen[s.conn]] and not s.payload, f"handshake, frame {s.frame}"
        if s.has(dpkt.tcp.TH_SYN):
            nxt[me] = (s.seq + 1) % 2**32
        elif s.has(dpkt.tcp.TH_RST):
            # A stack resetting a segment takes the seq from that segment's ACK.
            assert s.seq in (nxt[me], (nxt[me] - 1) % 2**32), f"RST seq, frame {s.frame}"
            continue
        elif len(s.payload) <= 1 and s.seq == (nxt[me] - 1) % 2**32 and not s.has(dpkt.tcp.TH_FIN):
            probes.append(s)
        else:
            assert s.seq == nxt[me], f"seq gap or overlap, frame {s.frame}"
            nxt[me] = (s.seq + len(s.payload) + s.has(dpkt.tcp.TH_FIN)) % 2**32
        if s.has(dpkt.tcp.TH_ACK):
            assert modular_le(s.ack, nxt[peer]), f"ACK of unsent data, frame {s.frame}"
            assert modular_le(last_ack.get(me, s.ack), s.ack), f"ACK went back, frame {s.frame}"
            last_ack[me] = s.ack
    return probes


@pytest.mark.parametrize("name", PLAIN)
def test_tcp_is_consistent(captures, name):
    check_tcp(captures[name])


def responses(segments: list[Segment], src: str) -> list[bytes]:
    return [s.payload for s in segments if s.src == src and s.payload.startswith(b"HTTP/1.1 ")]


ALB_ANSWERS = {"alb-gateway-timeout": [504], "alb-target-fin-502": [502], "alb-keepalive-race": [502],
               "alb-client-timeout-460": [], "alb-idle-timeout-keepalive-probes": [],
               "alb-idle-timeout-both-sides": [], "alb-client-keepalive-duration": [],
               "alb-target-keepalive-close": []}


@pytest.mark.parametrize("name", PLAIN)
def test_the_alb_answers_itself_only_where_designed(captures, name):
    made_up = [int(r[9:12]) for r in responses(captures[name], ALB_FRONT) if b"Server: awselb/2.0" in r]
    assert made_up == ALB_ANSWERS[name]
    for response in responses(captures[name], ALB_FRONT):
        if b"awselb" in response:
            body = response.split(b"\r\n\r\n", 1)[1]
            assert f"Content-Length: {len(body)}\r\n".encode() in response
            assert body.startswith(b"<html>\r\n<head><title>50")


def test_the_client_that_gave_up_gets_nothing(captures):
    assert responses(captures["alb-client-timeout-460"], ALB_FRONT) == []


def test_keepalive_probes_sit_at_next_seq_minus_one_and_are_acked(captures):
    segments = captures["alb-idle-timeout-keepalive-probes"]
    probes = check_tcp(segments)
    assert len(probes) == 5 and {p.src for p in probes} == {BROWSER}
    assert all(len(p.payload) == 1 for p in probes)  # Windows' garbage byte
    for probe in probes:
        answer = next(s for s in segments if s.ts > probe.ts and s.src == ALB_FRONT)
        assert answer.ack == (probe.seq + 1) % 2**32 and not answer.payload
    gaps = [b.ts - a.ts for a, b in zip(probes, probes[1:])]
    assert all(10.0 < gap < 10.05 for gap in gaps)


def first_fin(segments: list[Segment], sender: str) -> Segment:
    return next(s for s in segments if s.src == sender and s.has(dpkt.tcp.TH_FIN))


def idle_before(segments: list[Segment], fin: Segment, data_from: str) -> float:
    """Seconds from the last HTTP data ``data_from`` sent on the FIN's connection to the FIN."""
    data = [s for s in segments if s.conn == fin.conn and s.src == data_from and len(s.payload) > 1
            and s.ts < fin.ts]
    return fin.ts - data[-1].ts


CLOSES = [  # capture, who sends the FIN, whose last data starts the timer, designed seconds
    ("alb-gateway-timeout", ALB_BACK, ALB_BACK, 60),
    ("alb-target-fin-502", TARGET, ALB_BACK, 11),
    ("alb-client-timeout-460", CLIENT, CLIENT, 10),
    ("alb-keepalive-race", TARGET, TARGET, 5),
    ("alb-idle-timeout-keepalive-probes", ALB_FRONT, ALB_FRONT, 60),
    ("alb-idle-timeout-keepalive-probes", ALB_BACK, TARGET, 60),
    ("alb-idle-timeout-both-sides", ALB_FRONT, ALB_FRONT, 5),
    ("alb-idle-timeout-both-sides", ALB_BACK, TARGET, 5),
    ("alb-target-keepalive-close", TARGET, TARGET, 10),
]


@pytest.mark.parametrize("name, closer, data_from, seconds", CLOSES)
def test_closes_come_when_the_timers_fire(captures, name, closer, data_from, seconds):
    segments = captures[name]
    assert idle_before(segments, first_fin(segments, closer), data_from) == pytest.approx(seconds, abs=1e-3)


def test_keepalive_race_fin_crosses_the_reused_request(captures):
    segments = captures["alb-keepalive-race"]
    fin = first_fin(segments, TARGET)
    requests = [s for s in segments if s.conn == fin.conn and s.src == ALB_BACK and s.payload]
    assert len(requests) == 3  # two healthy ones, then the one the FIN crosses
    crossing = requests[-1]
    assert 0 < fin.ts - crossing.ts < 1e-3
    assert modular_le(fin.ack, crossing.seq)  # the target had not received it
    rst = next(s for s in segments if s.conn == fin.conn and s.has(dpkt.tcp.TH_RST))
    status = next(s for s in segments if s.src == ALB_FRONT and s.payload.startswith(b"HTTP/1.1 502"))
    assert fin.ts < rst.ts < status.ts


def test_client_keepalive_duration_closes_after_the_request_at_81_s(captures):
    segments = captures["alb-client-keepalive-duration"]
    syn = segments[0]
    fin = first_fin(segments, ALB_FRONT)
    last_request = [s for s in segments if s.src == CLIENT and s.payload][-1]
    last_response = responses(segments, ALB_FRONT)[-1]
    assert last_request.ts - syn.ts == pytest.approx(81, abs=1e-3)
    assert b"Connection: close\r\n" in last_response
    assert all(b"Connection: keep-alive\r\n" in r for r in responses(segments, ALB_FRONT)[:-1])
    assert fin.ts - last_request.ts < 0.01
    assert not any(s.has(dpkt.tcp.TH_FIN) for s in segments if s.dst == TARGET or s.src == TARGET)


TRACE_ID = re.compile(rb"X-Amzn-Trace-Id: Root=1-([0-9a-f]{8})-[0-9a-f]{24}\r\n")


@pytest.mark.parametrize("name", PLAIN)
def test_target_side_requests_carry_what_the_alb_adds(captures, name):
    segments = captures[name]
    relayed = [s for s in segments if s.src == ALB_BACK and s.payload.startswith(b"GET ")]
    assert relayed
    for request in relayed:
        head = request.payload.split(b"\r\n\r\n")[0] + b"\r\n"
        epoch = TRACE_ID.search(head)
        assert epoch and abs(int(epoch.group(1), 16) - request.ts) < 1
        assert re.search(rb"X-Forwarded-For: 198\.18\.0\.\d+\r\nX-Forwarded-Proto: http\r\n"
                         rb"X-Forwarded-Port: 80\r\nHost: 198\.18\.1\.10\r\n", head)
        assert b"Connection:" not in head and b"Keep-Alive:" not in head


def test_the_460_replays_the_articles_request(captures):
    segments = captures["alb-client-timeout-460"]
    request = next(s for s in segments if s.src == CLIENT and s.payload)
    assert len(request.payload) == 151 and b"User-Agent: python-requests/2.25.1\r\n" in request.payload
    assert request.ts == pytest.approx(1765819058.632, abs=1e-6)
    relayed = next(s for s in segments if s.src == ALB_BACK and s.payload)
    assert b"X-Amzn-Trace-Id: Root=1-694042b2-2084024a481f9518671832f8\r\n" in relayed.payload


def wire_key(segment: Segment) -> tuple:
    return (segment.src, segment.sport, segment.seq, segment.ack, segment.flags, segment.payload)


def test_mirror_variant_is_vxlan_from_both_ends(captures):
    plain, mirror = captures["alb-keepalive-race"], captures["alb-keepalive-race-mirror"]
    assert len(mirror) == 2 * len(plain)
    assert {s.vni for s in mirror} == {craft.VNI}
    assert Counter(map(wire_key, mirror)) == Counter(
        {key: 2 * n for key, n in Counter(map(wire_key, plain)).items()})
    for original in plain:
        twins = [s for s in mirror if wire_key(s) == wire_key(original)]
        assert len({s.outer_src for s in twins}) == 2
        assert all(0 <= s.ts - original.ts < 50e-6 for s in twins)


def test_lossy_variant_loses_and_cuts_a_few_frames(generated, captures):
    plain, lossy = captures["alb-keepalive-race"], captures["alb-keepalive-race-lossy"]
    assert len(lossy) == len(plain) - 1 and {s.vni for s in lossy} == {craft.VNI}
    cut = 0
    with (generated / "alb-keepalive-race-lossy.pcap").open("rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            inner_ip = buf[14 + 20 + 8 + 8 + 14:]
            (total_length,) = struct.unpack("!H", inner_ip[2:4])
            cut += total_length > len(inner_ip)
    assert cut == 3


@pytest.mark.parametrize("name", list(craft.CRAFTED))
def test_expected_findings_point_into_their_capture(generated, captures, name):
    truth = json.loads((generated / f"{name}.expected.json").read_text())
    segments = captures[name]
    assert truth["capture"] == f"{name}.pcap" and truth["proxy"] == "alb-replay"
    assert set(truth["timers"]) == {"proxy_idle_timeout_s", "target_keepalive_timeout_s",
                                    "client_keepalive_duration_s", "client_response_timeout_s"}
    flows = {f"{s.src}:{s.sport}->{s.dst}:{s.dport}" for s in segments if s.flags == dpkt.tcp.TH_SYN}
    assert truth["findings"]
    for finding in truth["findings"]:
        assert finding["kind"] in KINDS and finding["side"] in {"client", "target"}
        frames = [segments[n - 1] for n in finding["evidence_frames"]]
        assert any(abs(f.ts - finding["ts"]) < 1e-6 for f in frames)
        for key in ("client_flow", "target_flow"):
            assert finding[key] is None or finding[key] in flows
        assert finding["client_flow"] or finding["target_flow"]
