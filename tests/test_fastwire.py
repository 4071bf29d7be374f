"""The capture stage's C loop (alb_pcap.wire._fastwire) against its Python one.

The C walker takes the frames it fully understands and hands every other record back to
capture.py, so the two must give the same Packets, the same stats (Counter order included:
exports keep it) and the same anomalies, frame for frame, on every capture we have, on damaged
files and on random bytes. tests/conftest.py also runs test_capture, test_pipeline and
test_peer_zeek once with each.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from alb_pcap.model import AnomalyLog
from alb_pcap.wire import capture

from .capture_builders import (
    T0_NS,
    epb,
    ethernet,
    geneve,
    idb,
    ipv4,
    ipv6,
    linux_sll,
    linux_sll2,
    null_loopback,
    pcap,
    pcapng,
    shb,
    spb,
    tcp,
    udp,
    vxlan_frame,
)  # fmt: skip
from .conftest import SAMPLES, shared_dir
from .test_capture import mutated_frames

compiled = pytest.mark.skipif(
    capture._fastwire is None and (not os.environ.get("CI") or bool(os.environ.get("ALB_PCAP_PURE"))),
    reason="alb_pcap.wire._fastwire is not built (python3 setup.py build_ext --inplace)",
)

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_dir()


def corpus() -> list[Path]:
    """Every capture at hand: samples, test data, the Zeek peer traces, robustness crashers."""
    files = sorted(SAMPLES.glob("*.pcap*")) + sorted((REPO / "tests" / "data").rglob("*.pcap*"))
    if SHARED is not None:
        files += sorted((SHARED / "peer" / "zeek").glob("*/trace.pcap*"))
        files += sorted((SHARED / "robustness").rglob("*.pcap*"))
    return files


def read(path: Path, core: str, **options: int) -> tuple[object, ...]:
    """Everything the capture stage leaves behind, read with the C loop or without."""
    saved = capture._fastwire
    if core == "pure":
        capture._fastwire = None
    try:
        log = AnomalyLog()
        try:
            cap = capture.open_capture(path, log, **options)
        except capture.CaptureError as exc:
            return ("error", str(exc))
        with cap:
            packets, live = [], []
            for packet in cap.packets():  # the counts are live: what they say at each packet
                s = cap.stats
                skipped = sum(s.skipped.values())
                live.append((s.frames, s.decoded, s.duplicates, s.truncated, s.last_ts_ns, skipped))
                packets.append(packet)
        stats = {
            f.name: list(v.items()) if isinstance(v, dict) else v  # Counters in insertion order
            for f in dataclasses.fields(cap.stats)
            for v in [getattr(cap.stats, f.name)]
        }
        return packets, stats, dict(log.counts), log.kept, live
    finally:
        capture._fastwire = saved


def assert_same(path: Path, **options: int) -> None:
    c, p = read(path, "compiled", **options), read(path, "pure", **options)
    assert c[1:] == p[1:]  # stats and anomalies first: the shorter diff
    assert c[0] == p[0]


@compiled
@pytest.mark.parametrize("path", corpus(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_capture_reads_the_same_with_and_without_c(path: Path) -> None:
    assert_same(path)


@compiled
@pytest.mark.parametrize("stop", [1, 7, 300])
def test_a_read_abandoned_midway_leaves_the_same_counts(stop: int) -> None:
    """stats.link_types catches up when the consumer stops early (generator closed)."""
    outcomes = []
    for core in ("compiled", "pure"):
        saved = capture._fastwire
        if core == "pure":
            capture._fastwire = None
        try:
            with capture.open_capture(SAMPLES / "alb-keepalive-race-mirror.pcap", AnomalyLog()) as cap:
                packets = cap.packets()
                got = [p for _, p in zip(range(stop), packets)]
                packets.close()
            outcomes.append((got, cap.stats))
        finally:
            capture._fastwire = saved
    assert outcomes[0] == outcomes[1]


@compiled
def test_chunk_boundaries_read_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records cut by the reader's chunk are handed to Python; nothing is lost or doubled."""
    monkeypatch.setattr(capture, "_CHUNK", 333)
    for path in [SAMPLES / "alb-keepalive-race-mirror.pcap", *sorted(SAMPLES.glob("*.pcap.gz"))[:3]]:
        assert_same(path)


def test_extension_is_built_in_ci() -> None:
    """CI installs with pip on a fresh machine: this is where a broken C build shows."""
    if not os.environ.get("CI") or os.environ.get("ALB_PCAP_PURE"):
        pytest.skip("CI is not set, or ALB_PCAP_PURE is")
    assert capture._fastwire is not None, "alb_pcap.wire._fastwire did not build (see pip's output)"


@compiled
def test_limits_agree_with_capture_py() -> None:
    fw = capture._fastwire
    assert (fw.MAX_TUNNEL_DEPTH, fw.MAX_RECORD_LEN, fw.MAX_BLOCK_LEN, fw.BACKWARDS_NOTED_NS) == (
        capture.MAX_TUNNEL_DEPTH, capture.MAX_RECORD_LEN, capture.MAX_BLOCK_LEN, capture.BACKWARDS_NOTED_NS,
    )  # fmt: skip


# --- shapes, built byte by byte --------------------------------------------------------

FRAME = ethernet(ipv4(tcp(b"GET / HTTP/1.1\r\n\r\n")))


def shapes() -> list[bytes]:
    """Files exercising what the C side takes and what it hands over, mixed."""
    frames = [
        FRAME, vxlan_frame(FRAME, vni=7), vxlan_frame(FRAME, vni=8), FRAME[:40], ethernet(ipv4(udp(b"dns"))),
        ethernet(ipv6(tcp(b"six")), ethertype=0x86DD), ethernet(ipv4(tcp(b"q")), vlans=[(0x8100, 5)]),
        ethernet(ipv4(tcp(b"o"), options=b"\x01" * 4)), ethernet(b"\x00" * 28, ethertype=0x0806),
        ethernet(ipv4(tcp(b"f"), more_fragments=True, dont_fragment=False)),
    ]  # fmt: skip
    timed = [(T0_NS + i * 1000, f) for i, f in enumerate(frames * 3)]
    timed.append((T0_NS - 5 * 10**9, FRAME))  # seconds back: an anomaly, so Python's
    timed.append((T0_NS - 6 * 10**9, FRAME))  # exactly a second back: noted too
    timed.append((T0_NS - 7 * 10**9 + 1, FRAME))  # a nanosecond less: not noted
    timed.append((T0_NS, FRAME))  # a mirror copy of the first
    sll = [(T0_NS, linux_sll(ipv4(tcp(b"s"))))]
    big = {"byte_order": ">"}
    inner = [ethernet(ipv4(tcp(b"g", seq=i))) for i in range(300)]
    geneve_runs = [ethernet(ipv4(udp(geneve(f), dport=6081), proto=17)) for f in inner[:200]]  # Python's
    geneve_runs[150:150] = inner[200:]  # the walker's again, midway
    return [
        pcap(geneve_runs),
        pcap(timed),
        pcap(timed, byte_order=">", nanos=True),
        pcap(sll, linktype=113),
        pcapng(shb(), idb(1), *(epb(0, i, f) for i, f in enumerate(frames)), spb(FRAME), idb(113),
               epb(1, 9, linux_sll(ipv4(tcp(b"s")))), epb(0, 10, FRAME), spb(FRAME)),
        pcapng(shb(), idb(1, tsresol=9, tsoffset=100), epb(0, T0_NS, FRAME), shb(**big), idb(1, **big),
               epb(0, 2, FRAME, **big), epb(0, 1 << 62, FRAME, **big), epb(0, 3, FRAME, **big)),
    ]  # fmt: skip


@compiled
@pytest.mark.parametrize("data", shapes())
def test_built_shapes_read_the_same(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.pcap"
    for content in (data, data[:-7], gzip.compress(data)):
        path.write_bytes(content)
        assert_same(path)
        assert_same(path, dedup_window_ns=0)


# --- fuzzing: the C side must never crash, and must agree -------------------------------

fuzz = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                deadline=None)

LINKTYPES = [0, 1, 12, 101, 108, 113, 228, 229, 276, 9999]


@compiled
@fuzz
@given(body=st.binary(max_size=300), linktype=st.sampled_from(LINKTYPES))
@example(body=vxlan_frame(FRAME, vni=1)[:90], linktype=1)
def test_any_record_body_reads_the_same(tmp_path: Path, body: bytes, linktype: int) -> None:
    path = tmp_path / "f.pcap"
    path.write_bytes(pcap([body, body], linktype=linktype))
    assert_same(path)


@compiled
@fuzz
@given(frames=st.lists(mutated_frames(), min_size=1, max_size=6))
def test_mutated_common_frames_read_the_same(tmp_path: Path, frames: list[bytes]) -> None:
    path = tmp_path / "f.pcap"
    path.write_bytes(pcap([(T0_NS + i * 100, f) for i, f in enumerate(frames + frames)]))
    assert_same(path)


@compiled
@fuzz
@given(data=st.binary(max_size=400))
@example(data=pcap([FRAME]))
def test_any_file_reads_the_same(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "f.bin"
    starts = [b"", pcap([])[:20], shb() + idb(), shb() + idb() + epb(0, 1, FRAME)]
    for content in (start + data for start in starts):
        path.write_bytes(content)
        assert_same(path)


SMALL_SAMPLES = sorted((p for p in SAMPLES.glob("*.pcap") if p.stat().st_size < 40_000), key=lambda p: p.name)


@st.composite
def mutated_captures(draw: st.DrawFn) -> bytes:
    """A sample capture with a few bytes changed, inserted or deleted, or cut short."""
    data = bytearray(draw(st.sampled_from(SMALL_SAMPLES)).read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        what = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        if what == "set":
            data[at] = draw(st.integers(0, 255))
        elif what == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif what == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif at > 24:
            del data[at:]
    return bytes(data)


@compiled
@fuzz
@given(data=mutated_captures())
def test_mutated_sample_captures_read_the_same(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "m.pcap"
    path.write_bytes(data)
    assert_same(path)


@pytest.mark.skipif(capture._fastwire is None, reason="alb_pcap.wire._fastwire is not built")
@pytest.mark.parametrize("name", ["alb-keepalive-race-mirror.pcap", "mixed-nginx.pcap"])
def test_the_c_loop_takes_the_common_shapes(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Agreement alone would also hold if C handed every frame to Python."""
    by_python = []
    decoded = capture.Capture._decoded

    def counted(self: capture.Capture, records: object) -> object:
        records = list(records)  # type: ignore[call-overload]
        by_python.extend(records)
        return decoded(self, records)

    monkeypatch.setattr(capture.Capture, "_decoded", counted)
    with capture.open_capture(SAMPLES / name, AnomalyLog()) as cap:
        packets = list(cap.packets())
    assert len(by_python) < max(3, cap.stats.frames // 50), (len(by_python), cap.stats.frames)
    assert len(packets) == cap.stats.decoded


@st.composite
def layered_frames(draw: st.DrawFn) -> tuple[int, bytes]:
    """(linktype, frame) built layer by layer with odd values where the C side decides:
    protocols, flags, IP options and lengths, fragments, ports, VNIs, VLANs, cuts."""
    small = st.integers(0, 255)
    tcp_part = tcp(draw(st.binary(max_size=30)), flags=draw(small), seq=draw(st.integers(0, 3)),
                   options=draw(st.sampled_from([b"", b"\x01" * 4, b"\x01" * 40])),
                   data_offset=draw(st.sampled_from([None, None, 0, 4, 6, 15])))
    udp_part = udp(draw(st.binary(max_size=12)), dport=draw(st.sampled_from([53, 4789, 6081, 4754])),
                   length=draw(st.sampled_from([None, 0, 7, 9, 300])))
    proto = draw(st.sampled_from([6, 6, 17, 1, 58, 47, 4, 41, 0, 44, 132]))
    transport = udp_part if proto == 17 else tcp_part
    if draw(st.booleans()):
        total = draw(st.sampled_from([None, None, 0, 19, 20, 22, 24, 2000]))
        ip = ipv4(transport, proto=proto, total=total, options=draw(st.sampled_from([b"", b"\x01" * 4])),
                  ihl=draw(st.sampled_from([None, None, 4, 15])), version=draw(st.sampled_from([4, 4, 6])),
                  more_fragments=draw(st.booleans()) and draw(st.booleans()), ident=draw(st.integers(0, 2)))
        ethertype = 0x0800
    else:
        ip = ipv6(transport, next_header=proto, payload_length=draw(st.sampled_from([None, None, 0, 3, 999])))
        ethertype = 0x86DD
    linktype = draw(st.sampled_from([1, 1, 1, 101, 113, 276, 0, 228, 229]))
    if linktype == 1:
        tags = st.tuples(st.sampled_from([0x8100, 0x88A8, 0x9100]), st.integers(0, 9))
        types = [ethertype, ethertype, 0x0806, 0x6558, 0x8847, 0x05DC, 0x9999]
        frame = ethernet(ip, ethertype=draw(st.sampled_from(types)), vlans=draw(st.lists(tags, max_size=2)),
                         pad_to=draw(st.sampled_from([0, 60])))
        if draw(st.booleans()):
            frame = vxlan_frame(frame, vni=draw(st.integers(0, 3)))
    elif linktype == 113:
        frame = linux_sll(ip, protocol=ethertype)
    elif linktype == 276:
        frame = linux_sll2(ip, protocol=ethertype)
    elif linktype == 0:
        family = 2 if ethertype == 0x0800 else draw(st.sampled_from([10, 24, 28, 30, 7]))
        frame = null_loopback(ip, family=family)
    else:
        frame = ip
    if draw(st.integers(0, 4)) == 0:
        frame = frame[: draw(st.integers(0, len(frame)))]
    return linktype, frame


@compiled
@fuzz
@given(
    frames=st.lists(layered_frames(), min_size=1, max_size=8),
    window=st.sampled_from([0, 1, 2_000_000]),
    keys=st.sampled_from([1, 3, 1 << 16]),
    gaps=st.lists(st.integers(-2 * 10**9, 10**9), min_size=8, max_size=8),
)
def test_layered_frames_read_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: list[tuple[int, bytes]], window: int, keys: int,
    gaps: list[int],
) -> None:  # fmt: skip
    """Two files of the same frames (pcapng, one interface per link type, and pcap), each frame twice,
    with times that jump back and forth, duplicate tables rotating early and windows of 0-2 ms."""
    monkeypatch.setattr(capture, "_DEDUP_MAX_KEYS", keys)
    times, ts = [], T0_NS
    for gap in gaps + gaps:
        ts = max(0, ts + gap)
        times.append(ts)
    path = tmp_path / "f.pcapng"
    blocks = [shb(), idb(1, snaplen=64), idb(113), idb(276), idb(0), idb(101), idb(228), idb(229)]
    index = {1: 0, 113: 1, 276: 2, 0: 3, 101: 4, 228: 5, 229: 6}
    for (linktype, frame), ts in zip(frames + frames, times):  # twice: mirror copies, near or not
        blocks.append(epb(index[linktype], ts // 1000, frame))
    blocks.append(spb(frames[0][1]))
    path.write_bytes(pcapng(*blocks))
    assert_same(path, dedup_window_ns=window)
    path.write_bytes(pcap([(t, f) for (lt, f), t in zip(frames + frames, times) if lt == 1]))
    assert_same(path, dedup_window_ns=window)
