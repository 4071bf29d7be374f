"""Tests for alb_pcap.wire.capture: formats, link types, IP, tunnels, duplicates,
truncation, accounting, damaged input, the Zeek peer traces, and fuzzing.

Captures are built byte by byte with tests/capture_builders.py and written to
tmp_path; ``run()`` reads one back and checks the accounting invariant every time.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import threading
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from alb_pcap.model import (
    TH_ACK,
    TH_PUSH,
    TH_SYN,
    AnomalyLog,
    CaptureError,
    CaptureStats,
    Packet,
    format_addr,
)
from alb_pcap.wire import capture
from alb_pcap.wire.capture import MAX_PENDING_DATAGRAMS, open_capture

from .capture_builders import (
    CLIENT,
    CLIENT6,
    SERVER,
    SERVER6,
    T0_NS,
    addr,
    block,
    epb,
    erspan_ii,
    cisco_hdlc,
    erspan_iii,
    ethernet,
    geneve,
    gtp_u,
    geneve_option,
    gre,
    idb,
    ipv4,
    ipv6,
    pppoe,
    ipv6_ah,
    ipv6_fragment_header,
    ipv6_option_header,
    linux_sll,
    linux_sll2,
    llc_snap,
    mpls,
    null_loopback,
    pcap,
    pcapng,
    shb,
    spb,
    tcp,
    udp,
    vxlan,
    vxlan_frame,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
MS = 1_000_000
US = 1_000


def run(
    data: bytes, tmp_path: Path, name: str = "capture.pcap", **options: int
) -> tuple[list[Packet], CaptureStats, AnomalyLog]:
    path = tmp_path / name
    path.write_bytes(data)
    log = AnomalyLog()
    with open_capture(path, log, **options) as cap:
        packets = list(cap.packets())
    assert_accounted(cap.stats)
    assert_whole(packets)
    return packets, cap.stats, log


def assert_whole(packets: list[Packet]) -> None:
    """Packets are built with tuple.__new__ for speed: a field added to the model must show up here."""
    assert all(type(p) is Packet and len(p) == len(Packet._fields) for p in packets)


def assert_accounted(stats: CaptureStats) -> None:
    assert stats.frames == stats.decoded + stats.duplicates + sum(stats.skipped.values())
    assert stats.frames == sum(stats.link_types.values())


def only(data: bytes, tmp_path: Path, **kw: int) -> Packet:
    packets, stats, log = run(data, tmp_path, **kw)
    assert len(packets) == 1, (stats, log.kept)
    return packets[0]


def skipped(frame: bytes, tmp_path: Path, linktype: int = 1) -> tuple[CaptureStats, AnomalyLog]:
    packets, stats, log = run(pcap([frame], linktype=linktype), tmp_path)
    assert packets == []
    return stats, log


# --- file formats -------------------------------------------------------------


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True], ids=["usec", "nsec"])
def test_pcap_either_byte_order_and_resolution(tmp_path: Path, byte_order: str, nanos: bool) -> None:
    ts = T0_NS + 123_456_789
    data = pcap([(ts, ethernet(ipv4(tcp(REQUEST))))], byte_order=byte_order, nanos=nanos)
    packets, stats, _ = run(data, tmp_path)
    expected_ts = ts if nanos else ts - 789  # microseconds keep no nanoseconds
    assert [(p.ts_ns, p.payload) for p in packets] == [(expected_ts, REQUEST)]
    assert (stats.format, stats.first_ts_ns, stats.last_ts_ns) == ("pcap", expected_ts, expected_ts)


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_pcapng_interfaces_each_with_link_type_and_resolution(tmp_path: Path, byte_order: str) -> None:
    bo = byte_order
    sec = 1_700_000_000
    data = pcapng(
        shb(byte_order=bo),
        idb(1, byte_order=bo),  # Ethernet, microseconds (the default)
        block(4, b"\x00\x00\x00\x00", byte_order=bo),  # name resolution: skipped
        idb(101, tsresol=9, byte_order=bo),  # raw IP, nanoseconds
        idb(113, tsresol=0x80 | 10, byte_order=bo),  # Linux cooked, 2^-10 s
        epb(0, sec * 10**6 + 5, ethernet(ipv4(tcp(b"a", seq=1))), byte_order=bo),
        epb(1, sec * 10**9 + 7, ipv4(tcp(b"b", seq=2)), byte_order=bo),
        epb(2, sec * 1024 + 512, linux_sll(ipv4(tcp(b"c", seq=3))), byte_order=bo),
        block(5, b"\x00" * 20, byte_order=bo),  # interface statistics: skipped
        spb(ethernet(ipv4(tcp(b"d", seq=4))), byte_order=bo),  # no timestamp: the one before
    )
    packets, stats, log = run(data, tmp_path, name="capture")
    base = sec * 10**9
    assert [(p.payload, p.ts_ns) for p in packets] == [
        (b"a", base + 5_000),
        (b"b", base + 7),
        (b"c", base + 500_000_000),
        (b"d", base + 500_000_000),
    ]
    assert stats.format == "pcapng"
    assert stats.link_types == Counter({"ethernet": 2, "raw": 1, "linux_sll": 1})
    assert not log.counts


def test_pcapng_sections_reset_interfaces_and_may_swap_byte_order(tmp_path: Path) -> None:
    data = pcapng(
        shb(byte_order="<"),
        idb(1, byte_order="<"),
        epb(0, 1, ethernet(ipv4(tcp(b"first"))), byte_order="<"),
        shb(byte_order=">"),
        idb(229, tsresol=9, byte_order=">"),  # interface 0 is now raw IPv6
        epb(0, 2, ipv6(tcp(b"second")), byte_order=">"),
    )
    packets, stats, _ = run(data, tmp_path)
    assert [(p.payload, p.ts_ns) for p in packets] == [(b"first", 1_000), (b"second", 2)]
    assert stats.link_types == Counter({"ethernet": 1, "ipv6": 1})


def test_pcapng_if_tsoffset_and_obsolete_packet_block(tmp_path: Path) -> None:
    frame = ethernet(ipv4(tcp(b"old")))
    packet_block = block(2, struct.pack("<HHIIII", 0, 0, 0, 3, len(frame), len(frame)) + frame)
    data = pcapng(shb(), idb(1, tsoffset=100), packet_block)
    assert only(data, tmp_path).ts_ns == 100 * 10**9 + 3_000


def test_pcapng_simple_packet_block_respects_snaplen(tmp_path: Path) -> None:
    frame = ethernet(ipv4(tcp(b"x" * 100)))
    packet = only(pcapng(shb(), idb(1, snaplen=64), spb(frame)), tmp_path)
    assert (len(packet.payload), packet.missing) == (10, 90)


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_gzip_is_detected_by_content_not_name(tmp_path: Path, kind: str) -> None:
    frame = ethernet(ipv4(tcp(REQUEST)))
    data = pcap([frame]) if kind == "pcap" else pcapng(shb(), idb(1), epb(0, 1, frame))
    _, stats, _ = run(gzip.compress(data), tmp_path, name="notes.txt")
    assert (stats.format, stats.decoded) == (f"{kind}+gzip", 1)
    _, stats, _ = run(data, tmp_path, name="capture.pcap.gz")
    assert (stats.format, stats.decoded) == (kind, 1)


def test_reading_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records straddling chunk boundaries come out whole (chunk made tiny to force it)."""
    monkeypatch.setattr(capture, "_CHUNK", 7)
    frames = [ethernet(ipv4(tcp(bytes([i]) * i, seq=i))) for i in range(1, 40)]
    for data in (pcap(frames), pcapng(shb(), idb(1), *(epb(0, i, f) for i, f in enumerate(frames)))):
        packets, _, _ = run(gzip.compress(data), tmp_path)
        assert [p.payload for p in packets] == [bytes([i]) * i for i in range(1, 40)]


def test_a_pipe_is_read_like_a_file(tmp_path: Path) -> None:
    """No seeking: ``alb-pcap analyze <(zcat capture.pcap.gz)`` must work."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = gzip.compress(pcap([ethernet(ipv4(tcp(REQUEST)))]))
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    try:
        with open_capture(fifo, AnomalyLog()) as cap:
            assert [p.payload for p in cap.packets()] == [REQUEST]
    finally:
        writer.join()


def test_packets_streams_once_and_close_closes(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap([ethernet(ipv4(tcp(REQUEST)))]))
    cap = open_capture(path, AnomalyLog())
    with cap:
        assert len(list(cap.packets())) == 1
        assert list(cap.packets()) == []
        assert cap.stats.frames == 1
    assert all(stream.closed for stream in cap._streams)


# --- link types -------------------------------------------------------------

V4 = ipv4(tcp(REQUEST))
V6 = ipv6(tcp(REQUEST))


@pytest.mark.parametrize(
    ("linktype", "frame", "name", "v6"),
    [
        pytest.param(0, null_loopback(V4, family=2, byte_order="<"), "null", False, id="null-le"),
        pytest.param(0, null_loopback(V4, family=2, byte_order=">"), "null", False, id="null-be"),
        pytest.param(0, null_loopback(V6, family=30), "null", True, id="null-ipv6-darwin"),
        pytest.param(0, null_loopback(V6, family=28), "null", True, id="null-ipv6-freebsd"),
        pytest.param(0, null_loopback(V6, family=10), "null", True, id="null-ipv6-linux"),
        pytest.param(108, null_loopback(V4, family=2, byte_order=">"), "loop", False, id="loop"),
        pytest.param(108, null_loopback(V6, family=24, byte_order=">"), "loop", True, id="loop-ipv6"),
        pytest.param(113, linux_sll(V4), "linux_sll", False, id="sll"),
        pytest.param(113, linux_sll(V6, protocol=0x86DD), "linux_sll", True, id="sll-ipv6"),
        pytest.param(276, linux_sll2(V4), "linux_sll2", False, id="sll2"),
        pytest.param(101, V4, "raw", False, id="raw"),
        pytest.param(101, V6, "raw", True, id="raw-ipv6"),
        pytest.param(12, V4, "raw", False, id="raw-12"),
        pytest.param(14, V6, "raw", True, id="raw-14"),
        pytest.param(228, V4, "ipv4", False, id="ipv4"),
        pytest.param(229, V6, "ipv6", True, id="ipv6"),
    ],
)
def test_link_types(tmp_path: Path, linktype: int, frame: bytes, name: str, v6: bool) -> None:
    packets, stats, _ = run(pcap([frame], linktype=linktype), tmp_path)
    client, server = (CLIENT6, SERVER6) if v6 else (CLIENT, SERVER)
    assert [(format_addr(p.src), format_addr(p.dst), p.payload) for p in packets] == [
        (client, server, REQUEST)
    ]
    assert stats.link_types == Counter({name: 1})


def test_unsupported_link_type_is_skipped_with_an_anomaly(tmp_path: Path) -> None:
    stats, log = skipped(V4, tmp_path, linktype=147)
    assert stats.skipped == Counter({"unsupported_link_type": 1})
    assert stats.link_types == Counter({"linktype 147": 1})
    assert log.kept[0].detail == "linktype 147"


@pytest.mark.parametrize(
    "vlans",
    [[(0x8100, 10)], [(0x88A8, 100), (0x8100, 10)], [(0x9100, 1), (0x88A8, 2), (0x8100, 3)]],
    ids=["802.1Q", "QinQ", "triple"],
)
def test_vlan_tags_any_depth(tmp_path: Path, vlans: list[tuple[int, int]]) -> None:
    assert only(pcap([ethernet(V4, vlans=vlans)]), tmp_path).payload == REQUEST


@pytest.mark.parametrize(
    "frame",
    [
        ethernet(mpls(V4), ethertype=0x8847),
        ethernet(mpls(V6, labels=[16]), ethertype=0x8847),
        ethernet(mpls(V4, labels=[1, 2, 3, 4]), ethertype=0x8848, vlans=[(0x8100, 5)]),
    ],
    ids=["two-labels-ipv4", "one-label-ipv6", "vlan-then-four-labels"],
)
def test_mpls_label_stacks_then_ip_by_version_nibble(tmp_path: Path, frame: bytes) -> None:
    assert only(pcap([frame]), tmp_path).payload == REQUEST


@pytest.mark.parametrize(
    "frame",
    [
        ethernet(ipv4(tcp(b"ab")), pad_to=60),
        ethernet(ipv4(tcp(b"ab"), options=b"\x01" * 4), pad_to=64),
        ethernet(ipv6(tcp(b"ab")), ethertype=0x86DD),
    ],
    ids=["ipv4", "ipv4-options", "ipv6"],
)
def test_link_padding_and_trailers_stay_out_of_the_payload(tmp_path: Path, frame: bytes) -> None:
    packet = only(pcap([frame + b"\xde\xad\xbe\xef"]), tmp_path)  # padding, then an FCS
    assert (packet.payload, packet.missing) == (b"ab", 0)


def test_llc_snap_frame_carries_ip(tmp_path: Path) -> None:
    assert only(pcap([llc_snap(V4)]), tmp_path).payload == REQUEST


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20, ethertype=0x0806), "arp"),
        (ethernet(b"\x02\x07\x04" + b"\x00" * 40, ethertype=0x88CC), "not_ip"),  # LLDP
        (b"\x01\x80\xc2\x00\x00\x00" + b"\x02" * 6 + b"\x00\x26\x42\x42\x03" + b"\x00" * 35, "not_ip"),  # STP
        (ethernet(mpls(b"\x00" * 40), ethertype=0x8847), "not_ip"),  # pseudowire control word
        (ethernet(ipv4(udp(b"dns"), proto=17)), "udp"),
        (ethernet(ipv4(b"\x08\x00" + b"\x00" * 30, proto=1)), "icmp"),
        (ethernet(ipv6(b"\x80\x00" + b"\x00" * 30, next_header=58), ethertype=0x86DD), "icmp"),
        (ethernet(ipv4(b"\x00" * 30, proto=132)), "other_ip_proto"),  # SCTP
        (ethernet(ipv4(b"\x00" * 30, proto=50)), "other_ip_proto"),  # ESP
        (ethernet(ipv6(b"", next_header=59), ethertype=0x86DD), "other_ip_proto"),  # no next header
    ],
    ids=["arp", "lldp", "stp", "mpls-pw", "udp", "icmp", "icmpv6", "sctp", "esp", "ipv6-no-next"],
)
def test_frames_without_tcp_are_skipped_by_reason(tmp_path: Path, frame: bytes, reason: str) -> None:
    stats, log = skipped(frame, tmp_path)
    assert stats.skipped == Counter({reason: 1})
    assert not log.counts  # ordinary traffic is no anomaly


# --- IP -------------------------------------------------------------------------


def test_ipv4_options_are_skipped_over(tmp_path: Path) -> None:
    frame = ethernet(ipv4(tcp(REQUEST), options=b"\x94\x04\x00\x00" + b"\x01" * 8))  # router alert, NOPs
    assert only(pcap([frame]), tmp_path).payload == REQUEST


def test_ipv6_extension_headers_are_walked(tmp_path: Path) -> None:
    chain = ipv6_option_header(
        43, ipv6_option_header(51, ipv6_ah(60, ipv6_option_header(6, tcp(REQUEST))), size=16)
    )
    frame = ethernet(ipv6(chain, next_header=0), ethertype=0x86DD)  # hop-by-hop, routing, AH, dst opts
    packet = only(pcap([frame]), tmp_path)
    assert (packet.payload, packet.missing, format_addr(packet.src)) == (REQUEST, 0, CLIENT6)


def test_ipv6_atomic_fragment_is_the_whole_datagram(tmp_path: Path) -> None:
    frame = ethernet(ipv6(ipv6_fragment_header(6, tcp(REQUEST)), next_header=44), ethertype=0x86DD)
    packets, stats, _ = run(pcap([frame]), tmp_path)
    assert [p.payload for p in packets] == [REQUEST]


def test_ipv4_total_length_zero_from_segmentation_offload(tmp_path: Path) -> None:
    packets, _, log = run(pcap([ethernet(ipv4(tcp(REQUEST), total=0))]), tmp_path)
    assert [p.payload for p in packets] == [REQUEST]
    assert log.counts == Counter({"ip_hdr_len_zero": 1})


@pytest.mark.parametrize(
    ("frame", "anomaly"),
    [
        (ethernet(ipv4(tcp(REQUEST), ihl=4)), "IPv4_min_header_size"),
        (ethernet(ipv4(tcp(REQUEST), total=12)), "invalid_IP_header_size"),
        (ethernet(ipv4(tcp(REQUEST), version=6)), "unknown_ip_version"),
        (ethernet(ipv6(tcp(REQUEST)), ethertype=0x0800), "unknown_ip_version"),
        (ethernet(ipv4(tcp(REQUEST, data_offset=4))), "bad_TCP_header_len"),
        (ethernet(ipv4(tcp(REQUEST, data_offset=15))[:40 + len(REQUEST)]), "bad_TCP_header_len"),
        (ethernet(ipv4(tcp(), total=30)), "truncated_header"),  # IP length leaves no room for TCP
        (ethernet(ipv6(ipv6_option_header(6, tcp()), next_header=0, payload_length=4), ethertype=0x86DD),
         "bogus_IP_header_lengths"),
        (ethernet(ipv4(udp(geneve(V4, protocol=0x0800, version=1), dport=6081), proto=17)),
         "geneve_invalid_version"),
    ],
    ids=["ihl-4", "total-short", "v6-in-v4", "v6-under-0800", "doff-4", "doff-beyond", "ip-len-short",
         "ipv6-ext-beyond", "geneve-v1"],
)  # fmt: skip
def test_malformed_headers_are_skipped_with_zeek_names(tmp_path: Path, frame: bytes, anomaly: str) -> None:
    stats, log = skipped(frame, tmp_path)
    assert stats.skipped == Counter({"malformed": 1})
    assert list(log.counts) == [anomaly]
    assert (log.kept[0].frame, log.kept[0].ts_ns) == (1, T0_NS)


# --- fragments ----------------------------------------------------------------


def ipv4_fragments(segment: bytes, cuts: list[int], *, ident: int = 9, **kw: object) -> list[bytes]:
    bounds = [0, *cuts, len(segment)]
    return [
        ethernet(
            ipv4(
                segment[a:b],
                ident=ident,
                dont_fragment=False,
                more_fragments=b < len(segment),
                frag_offset=a,
                **kw,  # type: ignore[arg-type]
            )
        )
        for a, b in pairwise(bounds)
    ]


def ipv6_fragments(segment: bytes, cuts: list[int], *, ident: int = 7) -> list[bytes]:
    bounds = [0, *cuts, len(segment)]
    return [
        ethernet(
            ipv6(
                ipv6_fragment_header(6, segment[a:b], offset=a, more=b < len(segment), ident=ident),
                next_header=44,
            ),
            ethertype=0x86DD,
        )
        for a, b in pairwise(bounds)
    ]


BODY = bytes(range(256)) * 4
SEGMENT = tcp(BODY, seq=5000)


@pytest.mark.parametrize(
    "fragments",
    [
        ipv4_fragments(SEGMENT, [512]),
        ipv4_fragments(SEGMENT, [256, 512, 768])[::-1],
        ipv6_fragments(SEGMENT, [504]),
    ],
    ids=["ipv4-in-order", "ipv4-reversed", "ipv6"],
)
def test_fragments_are_reassembled(tmp_path: Path, fragments: list[bytes]) -> None:
    packets, stats, log = run(pcap(fragments), tmp_path)
    assert [(p.frame, p.seq, p.payload, p.missing) for p in packets] == [(len(fragments), 5000, BODY, 0)]
    assert stats.skipped == Counter({"ip_fragment": len(fragments) - 1})
    assert not log.counts


def test_fragmented_outer_packet_of_a_tunnel_is_reassembled(tmp_path: Path) -> None:
    inner = ethernet(ipv4(tcp(BODY)))
    datagram = udp(vxlan(inner, vni=99), dport=4789)
    packets, stats, _ = run(pcap(ipv4_fragments(datagram, [600], proto=17, src="172.16.0.1")), tmp_path)
    assert [(p.payload, p.vni) for p in packets] == [(BODY, 99)]
    assert stats.tunnels == Counter({"vxlan vni=99": 1})


def test_mirror_copies_of_fragments_are_duplicates(tmp_path: Path) -> None:
    first, second = ipv4_fragments(SEGMENT, [512])
    frames = [(T0_NS, first), (T0_NS + 2 * US, first), (T0_NS + 5 * US, second), (T0_NS + 7 * US, second)]
    packets, stats, log = run(pcap(frames), tmp_path)
    assert [p.payload for p in packets] == [BODY]
    assert (stats.duplicates, stats.skipped) == (2, Counter({"ip_fragment": 1}))
    assert not log.counts


def test_incomplete_datagrams_are_reported(tmp_path: Path) -> None:
    first, second = ipv4_fragments(SEGMENT, [512])
    frames = [(T0_NS, first), (T0_NS + 31 * 10**9, second)]  # beyond the 30 s reassembly timeout
    packets, stats, log = run(pcap(frames), tmp_path)
    assert packets == []
    assert stats.skipped == Counter({"ip_fragment": 2})
    assert [(a.name, a.frame, a.detail) for a in log.kept] == [
        ("unreassembled_fragments", 1, "1 fragment(s): no completion within 30 s"),
        ("unreassembled_fragments", 2, "1 fragment(s): capture ended first"),
    ]


def test_fragment_buffer_is_bounded(tmp_path: Path) -> None:
    firsts = [ipv4_fragments(SEGMENT, [512], ident=i)[0] for i in range(MAX_PENDING_DATAGRAMS + 44)]
    _, stats, log = run(pcap(firsts, step_ns=US), tmp_path)
    why = Counter(a.detail.split(": ")[1] for a in log.kept if a.name == "unreassembled_fragments")
    assert log.counts["unreassembled_fragments"] == MAX_PENDING_DATAGRAMS + 44
    assert log.kept[0].frame == 1  # the oldest goes first
    assert why == Counter({"reassembly buffer full": 44, "capture ended first": 56})  # 100 kept per name


def test_fragments_per_datagram_are_bounded(tmp_path: Path) -> None:
    cuts = list(range(8, 8 * (capture.MAX_FRAGMENTS_PER_DATAGRAM + 6), 8))
    packets, stats, log = run(pcap(ipv4_fragments(SEGMENT, cuts), step_ns=US), tmp_path)
    assert packets == []
    assert log.kept[0].detail == f"64 fragment(s): more than {capture.MAX_FRAGMENTS_PER_DATAGRAM} fragments"


def test_fragment_cut_by_snap_length_cannot_be_reassembled(tmp_path: Path) -> None:
    first, second = ipv4_fragments(SEGMENT, [512])
    packets, stats, log = run(pcap([first[:100], second]), tmp_path)
    assert packets == []
    assert log.counts["incompletely_captured_fragment"] == 1


def test_overlapping_fragments_that_differ_are_an_anomaly(tmp_path: Path) -> None:
    first, second = ipv4_fragments(SEGMENT, [512])
    liar = ipv4_fragments(SEGMENT[:256] + b"\xff" * 256 + SEGMENT[512:], [256, 512])[1]
    packets, _, log = run(pcap([first, liar, second]), tmp_path)
    assert [p.payload for p in packets] == [BODY]  # the first copy wins
    assert log.counts["fragment_inconsistency"] == 1


# --- tunnels ------------------------------------------------------------------

INNER = ethernet(ipv4(tcp(REQUEST, sport=41000, dport=8080), src="192.168.1.10", dst="192.168.1.20"))
INNER_IP = ipv4(tcp(REQUEST, sport=41000, dport=8080), src="192.168.1.10", dst="192.168.1.20")


def outer(payload: bytes, proto: int) -> bytes:
    return ethernet(ipv4(payload, proto=proto, src="172.16.0.1", dst="172.16.0.9"))


@pytest.mark.parametrize(
    ("frame", "vni", "tunnels"),
    [
        (vxlan_frame(INNER, vni=7), 7, {"vxlan vni=7": 1}),
        (outer(udp(vxlan(INNER, flags=0), dport=4789), 17), None, {"vxlan": 1}),  # I flag clear: no VNI
        (outer(udp(geneve(INNER, vni=42, options=geneve_option() * 3), dport=6081), 17), 42,
         {"geneve vni=42": 1}),
        (outer(udp(geneve(INNER_IP, vni=5, protocol=0x0800), dport=6081), 17), 5, {"geneve vni=5": 1}),
        (outer(gre(INNER_IP), 47), None, {"gre": 1}),
        (outer(gre(INNER, protocol=0x6558, checksum=True, key=3, sequence=9), 47), None, {"gre": 1}),
        (outer(erspan_ii(INNER), 47), None, {"erspan-ii": 1}),
        (outer(erspan_iii(INNER), 47), None, {"erspan-iii": 1}),
        (outer(erspan_iii(INNER, platform=True), 47), None, {"erspan-iii": 1}),
        (outer(gre(INNER, protocol=0x88BE), 47), None, {"erspan-i": 1}),
        (outer(udp(gre(INNER_IP), dport=4754), 17), None, {"gre-in-udp": 1}),
        (outer(INNER_IP, 4), None, {"ip-in-ip": 1}),
        (outer(gre(vxlan_frame(INNER, vni=3), protocol=0x6558), 47), 3, {"gre": 1, "vxlan vni=3": 1}),
        (outer(udp(gtp_u(INNER_IP), dport=2152), 17), None, {"gtp-u": 1}),
        (outer(udp(gtp_u(INNER_IP, sequence=9, extensions=(b"\x01\x02", b"\x09" * 7)), dport=2152), 17), None,
         {"gtp-u": 1}),
        (ethernet(pppoe(INNER_IP), ethertype=0x8864), None, {"pppoe": 1}),
    ],
    ids=["vxlan", "vxlan-no-I", "geneve-options", "geneve-ip", "gre", "gre-key-seq-csum-eth", "erspan-ii",
         "erspan-iii", "erspan-iii-platform", "erspan-i", "gre-in-udp", "ipip", "vxlan-in-gre", "gtp-u",
         "gtp-u-extensions", "pppoe"],
)  # fmt: skip
def test_tunnels_yield_the_innermost_segment(
    tmp_path: Path, frame: bytes, vni: int | None, tunnels: dict[str, int]
) -> None:
    packets, stats, _ = run(pcap([frame]), tmp_path)
    assert [
        (format_addr(p.src), p.sport, format_addr(p.dst), p.dport, p.payload, p.vni) for p in packets
    ] == [("192.168.1.10", 41000, "192.168.1.20", 8080, REQUEST, vni)]
    assert stats.tunnels == Counter(tunnels)


def test_cisco_hdlc_link_and_what_is_not_ip_in_the_new_encapsulations(tmp_path: Path) -> None:
    """Cisco HDLC (link type 104) carries IP; its SLARP keep-alives, PPPoE's LCP and GTP-U's echo
    messages are the links' own talk: skipped as not IP (or UDP), never an anomaly."""
    packets, _, _ = run(pcap([cisco_hdlc(INNER_IP)], linktype=104), tmp_path)
    assert [(p.dport, p.payload) for p in packets] == [(8080, REQUEST)]
    for frame, linktype, reason in [
        (cisco_hdlc(b"\x00" * 20, protocol=0x8035), 104, "arp"),  # SLARP shares RARP's type
        (ethernet(pppoe(b"\x01\x01\x00\x04", protocol=0xC021), ethertype=0x8864), 1, "not_ip"),
        (outer(udp(gtp_u(b"", message=1), dport=2152), 17), 1, "udp"),
    ]:
        stats, log = skipped(frame, tmp_path, linktype)
        assert (stats.skipped, log.counts) == (Counter({reason: 1}), Counter())


def test_ipv6_in_ipv4_and_gre_carrying_ipv6(tmp_path: Path) -> None:
    frames = [outer(V6, 41), outer(gre(V6, protocol=0x86DD, key=1), 47)]
    packets, stats, _ = run(pcap(frames, step_ns=10 * MS), tmp_path)
    assert [format_addr(p.src) for p in packets] == [CLIENT6, CLIENT6]
    assert stats.tunnels == Counter({"ip-in-ip": 1, "gre": 1})


@pytest.mark.parametrize(
    ("frame", "reason", "anomaly"),
    [
        (outer(gre(INNER_IP, version=1), 47), "unsupported_tunnel", "unknown_gre_version"),
        (outer(gre(INNER_IP, routing=True), 47), "unsupported_tunnel", "gre_routing"),
        (outer(gre(b""), 47)[:-2], "truncated", "truncated_GRE"),
        (outer(udp(b"\x08\x00\x00", dport=4789), 17), "truncated", "truncated_header"),
    ],
    ids=["pptp", "gre-routing", "gre-cut", "vxlan-cut"],
)
def test_unusable_tunnels_are_skipped(tmp_path: Path, frame: bytes, reason: str, anomaly: str) -> None:
    stats, log = skipped(frame, tmp_path)
    assert (stats.skipped, list(log.counts)) == (Counter({reason: 1}), [anomaly])


def test_tunnel_depth_is_bounded(tmp_path: Path) -> None:
    def nest(depth: int) -> bytes:
        packet = V4
        for _ in range(depth):
            packet = ipv4(packet, proto=4)
        return ethernet(packet)

    packets, stats, log = run(
        pcap([nest(capture.MAX_TUNNEL_DEPTH), nest(capture.MAX_TUNNEL_DEPTH + 1)]), tmp_path
    )
    assert [p.payload for p in packets] == [REQUEST]
    assert log.counts == Counter({"exceeded_tunnel_max_depth": 1})


# --- mirror duplicates --------------------------------------------------------


def mirrored(*offsets_ns: int, inner: bytes = INNER) -> list[tuple[int, bytes]]:
    """The same inner frame as it arrives from each mirror session (own VNI, outer source, TTL)."""
    return [
        (T0_NS + offset, vxlan_frame(inner, vni=7 + i, outer_src=f"172.16.0.{i + 1}", ttl=64 - i))
        for i, offset in enumerate(offsets_ns)
    ]


def test_second_mirror_copy_within_microseconds_is_dropped(tmp_path: Path) -> None:
    packets, stats, _ = run(pcap(mirrored(0, 3 * US)), tmp_path)
    assert [(p.frame, p.vni) for p in packets] == [(1, 7)]  # the first copy, with its VNI
    assert (stats.decoded, stats.duplicates) == (1, 1)
    assert stats.tunnels == Counter({"vxlan vni=7": 1, "vxlan vni=8": 1})


def test_inner_ttl_may_differ_between_mirror_points(tmp_path: Path) -> None:
    frames = [(T0_NS, INNER_IP), (T0_NS + US, ipv4(tcp(REQUEST, sport=41000, dport=8080), src="192.168.1.10",
                                                     dst="192.168.1.20", ttl=63))]  # fmt: skip
    _, stats, _ = run(pcap(frames, linktype=101), tmp_path)
    assert (stats.decoded, stats.duplicates) == (1, 1)


def test_retransmission_after_an_rto_is_kept(tmp_path: Path) -> None:
    packets, stats, _ = run(pcap(mirrored(0, 300 * MS)), tmp_path)
    assert [p.vni for p in packets] == [7, 8]
    assert stats.duplicates == 0


@pytest.mark.parametrize(
    "other",
    [
        ethernet(
            ipv4(tcp(REQUEST, sport=41000, dport=8080), src="192.168.1.10", dst="192.168.1.20", ident=2)
        ),
        ethernet(
            ipv4(tcp(REQUEST, sport=41000, dport=8080, checksum=1), src="192.168.1.10", dst="192.168.1.20")
        ),
        ethernet(ipv4(tcp(REQUEST, sport=41000, dport=8080, ack=2), src="192.168.1.10", dst="192.168.1.20")),
        ethernet(ipv4(tcp(REQUEST[:-1], sport=41000, dport=8080), src="192.168.1.10", dst="192.168.1.20")),
    ],
    ids=["ip-id", "checksum", "ack", "length"],
)
def test_different_segments_within_the_window_are_kept(tmp_path: Path, other: bytes) -> None:
    frames = [(T0_NS, vxlan_frame(INNER)), (T0_NS + US, vxlan_frame(other, vni=8))]
    _, stats, _ = run(pcap(frames), tmp_path)
    assert (stats.decoded, stats.duplicates) == (2, 0)


def test_duplicate_window_is_a_parameter(tmp_path: Path) -> None:
    _, stats, _ = run(pcap(mirrored(0, 3 * US)), tmp_path, dedup_window_ns=US)
    assert (stats.decoded, stats.duplicates) == (2, 0)


def test_copies_decoded_by_different_paths_are_still_copies(tmp_path: Path) -> None:
    """One copy via plain VXLAN (the fast path), the other via GRE and VLAN (the general one)."""
    frames = [(T0_NS, vxlan_frame(INNER)), (T0_NS + US, outer(gre(INNER, protocol=0x6558), 47))]
    frames.append((T0_NS + 2 * US, ethernet(INNER[14:], vlans=[(0x8100, 4)])))
    _, stats, _ = run(pcap(frames), tmp_path)
    assert (stats.decoded, stats.duplicates) == (1, 2)


def test_duplicate_table_stays_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "_DEDUP_MAX_KEYS", 100)
    frames = [(T0_NS + i * MS // 4, ethernet(ipv4(tcp(seq=i)))) for i in range(2000)]
    frames += [
        (T0_NS + MS, ethernet(ipv4(tcp(seq=10**6 + i)))) for i in range(2000)
    ]  # one burst, one instant
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap(frames))
    with open_capture(path, AnomalyLog()) as cap:
        decoder = cap._decoder
        peak = 0
        for _ in cap.packets():
            peak = max(peak, len(decoder._recent) + len(decoder._older))
    assert cap.stats.decoded == 4000
    assert peak <= 2 * 101


# --- snap length and truncation -----------------------------------------------


def test_snap_length_keeps_what_was_captured(tmp_path: Path) -> None:
    frame, other = ethernet(ipv4(tcp(b"x" * 100))), ethernet(ipv4(tcp(b"x" * 100, seq=9)))
    packets, stats, _ = run(
        pcap([(T0_NS, frame[:84], len(frame)), (T0_NS + 1, other[:54], len(frame))]), tmp_path
    )
    assert [(len(p.payload), p.missing) for p in packets] == [(30, 70), (0, 100)]
    assert stats.truncated == 2


def test_mirror_truncation_inside_vxlan(tmp_path: Path) -> None:
    """AWS cuts the mirrored packet (PacketLength) but the outer headers are whole."""
    inner = ethernet(ipv4(tcp(b"y" * 500, sport=41000)))
    packet = only(pcap([vxlan_frame(inner[:200])]), tmp_path)
    assert (len(packet.payload), packet.missing, packet.vni) == (146, 354, 7)


@pytest.mark.parametrize(
    ("cut", "anomaly"),
    [
        (10, "truncated_ethernet_frame"),
        (30, "truncated_IP"),
        (44, "truncated_header"),
        (60, "truncated_header"),
    ],
    ids=["ethernet", "ip", "tcp", "tcp-options"],
)
def test_frames_too_short_for_their_headers(tmp_path: Path, cut: int, anomaly: str) -> None:
    frame = ethernet(ipv4(tcp(REQUEST, options=b"\x02\x04\x05\xb4" + b"\x01" * 8)))  # 32-byte TCP header
    stats, log = skipped(frame[:cut], tmp_path)
    assert (stats.skipped, list(log.counts)) == (Counter({"truncated": 1}), [anomaly])


# --- accounting -----------------------------------------------------------------


def test_every_frame_is_counted_once(tmp_path: Path) -> None:
    frames = [
        *mirrored(0, 2 * US),  # decoded + duplicate
        (T0_NS + MS, ethernet(ipv4(udp(b"q"), proto=17))),
        (T0_NS + 2 * MS, ethernet(b"\x00" * 28, ethertype=0x0806)),
        (T0_NS + 3 * MS, ethernet(ipv4(tcp(flags=TH_SYN), ihl=3))),
        (T0_NS + 4 * MS, ethernet(ipv4(tcp(REQUEST, flags=TH_PUSH | TH_ACK)))[:20]),
        (T0_NS + 5 * MS, ipv4_fragments(SEGMENT, [512])[0]),
        (T0_NS + 6 * MS, ethernet(V6, ethertype=0x86DD)),
    ]
    packets, stats, _ = run(pcap(frames), tmp_path)
    assert (stats.frames, stats.decoded, stats.duplicates) == (8, 2, 1)
    assert stats.skipped == Counter(udp=1, arp=1, malformed=1, truncated=1, ip_fragment=1)
    assert (stats.first_ts_ns, stats.last_ts_ns) == (T0_NS, T0_NS + 6 * MS)
    assert [p.frame for p in packets] == [1, 8]


# --- bad input ------------------------------------------------------------------


def open_error(path: Path) -> str:
    with pytest.raises(CaptureError) as caught:
        open_capture(path, AnomalyLog())
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        (b"", "empty file"),
        (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", "not a pcap or pcapng capture"),
        (pcap([])[:10], "pcap file header cut short"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1), "unsupported pcap version 3"),
        (shb()[:20], "pcapng section header cut short"),
        (shb()[:8] + b"\x00" * 20, "no byte-order magic"),
        (gzip.compress(b""), "empty file (after gzip decompression)"),
        (gzip.compress(b"just text, compressed"), "not a pcap or pcapng capture"),
        (b"\x1f\x8bnot really gzip", "cannot read"),
        (gzip.compress(pcap([]))[:12], "cannot read"),
    ],
    ids=["missing", "empty", "text", "pcap-header-cut", "pcap-v3", "shb-cut", "shb-no-bom", "gzip-empty",
         "gzip-text", "fake-gzip", "gzip-header-cut"],
)  # fmt: skip
def test_unusable_files_raise_capture_error(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "input.pcap"
    if content is not None:
        path.write_bytes(content)
    assert expected in open_error(path)


def test_directory_raises_capture_error(tmp_path: Path) -> None:
    assert "is a directory" in open_error(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_raises_capture_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.pcap"
    path.write_bytes(pcap([]))
    path.chmod(0)
    assert "permission denied" in open_error(path)


def test_header_only_capture_is_empty_not_an_error(tmp_path: Path) -> None:
    packets, stats, log = run(pcap([]), tmp_path)
    assert (packets, stats.frames, stats.first_ts_ns, log.counts) == ([], 0, None, Counter())


FRAMES = [ethernet(ipv4(tcp(REQUEST, seq=i))) for i in range(3)]


@pytest.mark.parametrize(
    ("data", "decoded", "anomaly"),
    [
        (pcap(FRAMES)[:-10], 2, "truncated_capture_file"),  # inside the last record
        (pcap(FRAMES)[: -len(FRAMES[2]) - 6], 2, "truncated_capture_file"),  # inside its header
        (pcap(FRAMES) + struct.pack("<IIII", 0, 0, 10**7, 10**7), 3, "corrupt_capture_file"),
        (pcapng(shb(), idb(), *(epb(0, 1, f) for f in FRAMES))[:-10], 2, "truncated_capture_file"),
        (pcapng(shb(), idb(), epb(0, 1, FRAMES[0]), epb(1, 2, FRAMES[1])), 1, "corrupt_capture_file"),
        (pcapng(shb(), idb(), epb(0, 1, FRAMES[0]), epb(0, 2, FRAMES[1])[:-4] + b"\x00" * 4), 1,
         "corrupt_capture_file"),
        (pcapng(shb(), idb(), epb(0, 1, FRAMES[0]), shb()[:8] + b"\x00" * 20), 1, "corrupt_capture_file"),
    ],
    ids=["pcap-record-cut", "pcap-header-cut", "pcap-huge-record", "pcapng-cut", "pcapng-unknown-interface",
         "pcapng-length-mismatch", "pcapng-bad-section"],
)  # fmt: skip
def test_damaged_files_end_cleanly_with_an_anomaly(
    tmp_path: Path, data: bytes, decoded: int, anomaly: str
) -> None:
    packets, stats, log = run(data, tmp_path)
    assert len(packets) == stats.frames == decoded
    assert list(log.counts) == [anomaly]
    assert log.kept[0].frame == decoded + 1


def test_cut_gzip_stream_keeps_what_came_before(tmp_path: Path) -> None:
    frames = [ethernet(ipv4(tcp(REQUEST, seq=i))) for i in range(3000)]
    packets, stats, log = run(gzip.compress(pcap(frames))[:-40], tmp_path)
    assert 2900 < len(packets) < 3000  # at most one read's worth is lost with the damaged tail
    assert [p.seq for p in packets] == list(range(len(packets)))
    assert list(log.counts) == ["truncated_capture_file"]


def test_gzip_damaged_near_its_start_is_read_up_to_the_damage(tmp_path: Path) -> None:
    """Issue 10's reproducer: one bit flipped in the first record after 5 intact ones. GzipFile
    lost the whole first read (all of it here) and the file was refused."""
    damaged = Path(__file__).parent / "data" / "crashers" / "gzip-damaged-early-5-records-readable.pcap.gz"
    packets, stats, log = run(damaged.read_bytes(), tmp_path)
    original = damaged.parents[1] / "gzip-damaged-early.original.pcap.gz"  # what the reproducer was cut from
    with open_capture(original, AnomalyLog()) as cap:
        intact = [p for p in cap.packets() if p.frame <= 5]
    assert stats.frames >= 5 and packets[: len(intact)] == intact
    (damage,) = [a for a in log.kept if a.name == "corrupt_capture_file"]
    assert damage.frame == stats.frames + 1
    assert "gzip data damaged at compressed byte" in damage.detail


def _stored_gzip(data: bytes) -> bytes:
    """gzip at level 0: the data stored as is, so a test can damage a chosen byte of it."""
    return gzip.compress(data, compresslevel=0, mtime=0)


def test_gzip_damage_found_at_the_end_keeps_every_record(tmp_path: Path) -> None:
    frames = [ethernet(ipv4(tcp(REQUEST, seq=i))) for i in range(50)]
    packed = bytearray(_stored_gzip(pcap(frames)))
    packed[-12] ^= 0x01  # inside the last record: only the CRC check at the end notices
    packets, stats, log = run(bytes(packed), tmp_path)
    assert len(packets) == stats.frames == 50
    (damage,) = log.kept
    assert (damage.name, damage.frame) == ("corrupt_capture_file", 51)
    assert "incorrect data check" in damage.detail and "reading stopped" in damage.detail


def test_gzip_damaged_in_the_middle_keeps_the_records_before(tmp_path: Path) -> None:
    frames = [ethernet(ipv4(tcp(REQUEST, seq=i))) for i in range(3000)]
    packed = bytearray(gzip.compress(pcap(frames), mtime=0))
    packed[len(packed) // 2 :] = b"\xff" * (len(packed) - len(packed) // 2)  # garbage from the middle on
    packets, stats, log = run(bytes(packed), tmp_path)
    assert 1000 < len(packets) < 3000
    assert [p.seq for p in packets] == list(range(len(packets)))
    # zlib notices the damage a little after it began: a frame of garbage before it may be
    # skipped with an anomaly of its own
    (damage,) = [a for a in log.kept if a.name in ("corrupt_capture_file", "truncated_capture_file")]
    assert damage.frame == stats.frames + 1


def test_gzip_members_and_zero_padding_read_as_gzip_does(tmp_path: Path) -> None:
    data = pcap([ethernet(ipv4(tcp(REQUEST, seq=i))) for i in range(10)])
    packed = gzip.compress(data[:500]) + gzip.compress(data[500:]) + b"\x00" * 64
    packets, stats, log = run(packed, tmp_path)
    assert (len(packets), stats.format, log.counts) == (10, "pcap+gzip", Counter())


def test_gzip_with_nothing_readable_is_refused(tmp_path: Path) -> None:
    packed = bytearray(_stored_gzip(pcap([])))
    packed[10] ^= 0xFF  # the stored block's header
    path = tmp_path / "input.pcap.gz"
    path.write_bytes(bytes(packed))
    assert "cannot read" in open_error(path)


def test_pcapng_times_out_of_the_calendar_are_kept_and_noted(tmp_path: Path) -> None:
    frame = ethernet(ipv4(tcp(REQUEST)))
    data = pcapng(shb(), idb(), epb(0, T0_NS // US, frame), epb(0, 1 << 62, frame))
    packets, stats, log = run(data, tmp_path)
    assert len(packets) == 2 and packets[1].ts_ns == (1 << 62) * US
    (odd,) = log.kept
    assert (odd.name, odd.frame) == ("time_out_of_range", 2)


def test_time_going_backwards_by_more_than_a_second_is_noted(tmp_path: Path) -> None:
    frames = [ethernet(ipv4(tcp(REQUEST, seq=i))) for i in range(4)]
    times = [T0_NS, T0_NS + 5 * MS, T0_NS + 4 * MS, T0_NS - 3 * 3600 * 10**9]  # jitter, then hours back
    packets, stats, log = run(pcap(list(zip(times, frames))), tmp_path)
    assert len(packets) == 4
    (back,) = log.kept
    assert (back.name, back.frame) == ("time_went_backwards", 4)
    assert back.detail.startswith("10800.004 s before frame 3")


# --- the Zeek peer traces -------------------------------------------------------


def shared_dir() -> Path | None:
    for candidate in (Path(__file__).resolve().parents[2] / "shared", os.environ.get("ALB_PCAP_SHARED")):
        if candidate and Path(candidate, "peer", "zeek").is_dir():
            return Path(candidate)
    return None


PEER = shared_dir()
TRACES = sorted((PEER / "peer" / "zeek").glob("*/trace.pcap*")) if PEER else []
needs_peer = pytest.mark.skipif(
    PEER is None, reason="shared/peer/zeek not found beside the checkout or in $ALB_PCAP_SHARED"
)


def peer_trace(name: str) -> Path:
    assert PEER is not None
    return next((PEER / "peer" / "zeek" / name).glob("trace.pcap*"))


def decode_trace(trace: Path) -> tuple[list[Packet], CaptureStats, dict[str, object]]:
    expected = json.loads((trace.parent / "expected.json").read_text())
    log = AnomalyLog()
    with open_capture(trace, log) as cap:
        packets = list(cap.packets())
    assert not log.counts, log.kept
    return packets, cap.stats, expected


@needs_peer
@pytest.mark.parametrize("trace", TRACES, ids=[t.parent.name for t in TRACES])
def test_peer_trace_opens_and_accounts_for_every_frame(trace: Path) -> None:
    packets, stats, expected = decode_trace(trace)
    assert_accounted(stats)
    assert stats.frames == expected["trace_info"]["packets"]  # type: ignore[index]
    assert stats.decoded == len(packets)


@needs_peer
@pytest.mark.parametrize(
    ("name", "tunnel"),
    [
        ("vxlan-http", "vxlan vni=1"),
        ("geneve-many-options", "geneve vni=786734"),
        ("gre-over-udp-http", "gre-in-udp"),
        ("vlan-mpls-http", None),
        ("erspan-II", "erspan-ii"),
        ("http-connect-ipv6", None),
        ("tcp-flip-without-syn", None),
    ],
)
def test_peer_trace_connections_match_zeek(name: str, tunnel: str | None) -> None:
    packets, stats, expected = decode_trace(peer_trace(name))
    ours = {frozenset({(format_addr(p.src), p.sport), (format_addr(p.dst), p.dport)}) for p in packets}
    zeeks = {
        frozenset({(row["orig_h"], row["orig_p"]), (row["resp_h"], row["resp_p"])})
        for row in expected["conn"]["tcp"]  # type: ignore[index]
    }
    assert ours == zeeks  # as endpoint pairs: Zeek flips roles when the SYN is missing
    if tunnel:
        assert tunnel in stats.tunnels


@needs_peer
def test_peer_trace_with_every_packet_twice() -> None:
    """m57: the capture host saw each packet twice, 1 µs apart; Zeek counts them as retransmissions."""
    _, stats, _ = decode_trace(peer_trace("http-m57-49583-rst"))
    assert (stats.decoded, stats.duplicates) == (114, 113)


@needs_peer
def test_peer_trace_with_ethernet_padding_gives_zeeks_byte_counts() -> None:
    packets, _, expected = decode_trace(peer_trace("tcp-padding-http"))
    row = expected["conn"]["tcp"][0]  # type: ignore[index]
    sent: Counter[int] = Counter()
    for packet in packets:
        sent[packet.sport] += len(packet.payload)
    assert (sent[row["orig_p"]], sent[row["resp_p"]]) == (row["orig_bytes"], row["resp_bytes"]) == (16, 191)


# --- fuzzing --------------------------------------------------------------------

fuzz = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def fuzz_run(data: bytes, path: Path) -> None:
    """Open and read ``data``: only CaptureError may come out, and no decoder bug may hide inside."""
    path.write_bytes(data)
    log = AnomalyLog()
    try:
        cap = open_capture(path, log)
    except CaptureError:
        return
    with cap:
        for _ in cap.packets():
            pass
    assert_accounted(cap.stats)
    assert "decoder_error" not in log.counts, log.kept


@fuzz
@given(body=st.binary(max_size=300), linktype=st.sampled_from([0, 1, 101, 108, 113, 228, 229, 276, 9999]))
@example(body=ethernet(ipv4(tcp(), total=0))[:40], linktype=1)
@example(body=vxlan_frame(INNER)[:90], linktype=1)
def test_any_record_body_is_survivable(tmp_path: Path, body: bytes, linktype: int) -> None:
    fuzz_run(pcap([body], linktype=linktype), tmp_path / "fuzz.pcap")


@fuzz
@given(data=st.binary(max_size=400))
@example(data=pcap([V4]))
@example(data=shb() + b"\x00" * 12)
def test_any_file_is_survivable(tmp_path: Path, data: bytes) -> None:
    fuzz_run(data, tmp_path / "fuzz.pcap")
    fuzz_run(pcap([])[:20] + data, tmp_path / "fuzz.pcap")
    fuzz_run(shb() + idb() + data, tmp_path / "fuzz.pcapng")
    fuzz_run(gzip.compress(data), tmp_path / "fuzz.gz")


# Where the fast path looks, in Ethernet/IPv4/TCP and in its VXLAN-wrapped form (inner at +50).
_PLAIN_FIELDS = {"ethertype": 12, "vihl": 14, "total": 16, "frag": 20, "proto": 23, "offset": 46}
_OUTER_FIELDS = {"udp_dport": 36, "udp_length": 38, "vxlan_flags": 42}


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """Frames of the fast path's shapes, then bent once: a header field, a length, a byte, a cut."""
    inner = ethernet(
        ipv4(tcp(draw(st.binary(max_size=40)), options=draw(st.sampled_from([b"", b"\x01" * 4]))))
    )
    tunnelled = draw(st.booleans())
    frame = bytearray(vxlan_frame(inner, vni=draw(st.integers(0, 2**24 - 1))) if tunnelled else inner)
    fields = dict(_PLAIN_FIELDS)
    if tunnelled:
        fields |= {f"inner {name}": at + 50 for name, at in _PLAIN_FIELDS.items()} | _OUTER_FIELDS
    mutation = draw(st.sampled_from(["none", "field", "length", "byte", "cut"]))
    if mutation == "field":
        at = fields[draw(st.sampled_from(sorted(fields)))]
        frame[at] = draw(st.sampled_from([0x00, 0x06, 0x11, 0x20, 0x40, 0x45, 0x46, 0x50, 0x60, 0x86, 0xFF]))
    elif mutation == "length":  # a length field a little off, either way
        at = fields[draw(st.sampled_from([name for name in fields if "total" in name or "length" in name]))]
        length = int.from_bytes(frame[at : at + 2], "big") + draw(st.integers(-50, 8))
        frame[at : at + 2] = max(0, length).to_bytes(2, "big")
    elif mutation == "byte":
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    elif mutation == "cut":
        frame = frame[: draw(st.integers(0, len(frame)))]
    return bytes(frame)


def outcome(decode: str, frame: bytes) -> tuple[object, dict[str, int]]:
    stats = CaptureStats(path="-")
    decoder = capture._Decoder(stats, AnomalyLog(), capture.DEDUP_WINDOW_NS)
    try:
        if decode == "fast":
            result: object = decoder.fast_ethernet(1, T0_NS, frame, 0, len(frame))
        else:
            result = decoder.decode(1, T0_NS, 1, frame, 0, len(frame))
    except capture._Skip as skip:
        result = (skip.reason, skip.anomaly)
    return result, dict(stats.tunnels)


@settings(fuzz, max_examples=max(200, settings.default.max_examples))
@given(frame=mutated_frames())
def test_fast_path_agrees_with_the_general_decoder(frame: bytes) -> None:
    fast = outcome("fast", frame)
    if fast[0] is not False:  # False: not the fast path's shape, no side effects
        assert fast == outcome("general", frame)
    else:
        assert fast[1] == {}


@pytest.mark.parametrize("frame", [ethernet(V4), vxlan_frame(INNER), ethernet(ipv4(tcp(REQUEST), total=200))])
def test_fast_path_takes_the_common_shapes(frame: bytes) -> None:
    fast, _ = outcome("fast", frame)
    assert isinstance(fast, Packet) and fast == outcome("general", frame)[0]


def test_dedup_key_is_the_same_on_both_paths() -> None:
    """The fast path reads the key in two slices; _tcp builds it from parts."""
    frame = ethernet(ipv4(tcp(REQUEST, seq=77, checksum=0xBEEF), ident=0x1234))
    ip, tcp_start = 14, 34
    key = frame[ip + 2 : ip + 6] + addr(CLIENT) + addr(SERVER) + frame[tcp_start : tcp_start + 18]
    fast = capture._Decoder(CaptureStats(path="-"), AnomalyLog(), capture.DEDUP_WINDOW_NS)
    fast.fast_ethernet(1, T0_NS, frame, 0, len(frame))
    general = capture._Decoder(CaptureStats(path="-"), AnomalyLog(), capture.DEDUP_WINDOW_NS)
    general.decode(1, T0_NS, 1, frame, 0, len(frame))
    assert {**fast._recent, **fast._older} == {**general._recent, **general._older} == {key: T0_NS}
