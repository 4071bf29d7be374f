"""Connect failures (alb_pcap/connect.py): refused and unanswered SYNs on either side of the proxy.

Connection records come from the real TCP stage (``tracked``: packets -> TcpTracker -> Connection),
so the history letters and states are the ones the pipeline produces; the end-to-end tests build
whole pcap files with tests/capture_builders.py and run the pipeline over them.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from alb_pcap.diagnosis import connect
from alb_pcap.diagnosis.connect import (
    KINDS,
    ConnectFailures,
    address_counts_dict,
    attempt_outcome,
)
from alb_pcap.model import TH_ACK, TH_RST, TH_SYN, Connection

from .analysis import run
from .wire import T0, Wire

SEC = 1_000_000_000

PROXY_BACK = "10.0.2.1"
TARGET_A = "10.0.3.11"
TARGET_B = "10.0.3.12"
NODE_A = "10.0.1.10"  # a proxy address in a subnet with a route
NODE_B = "10.0.1.20"  # a proxy address in a subnet without a route back to the clients
CLIENT_1 = "198.51.100.7"
CLIENT_2 = "198.51.100.8"


# -- building connections through the real TCP stage ------------------------------------------


def only(conns: list[Connection]) -> Connection:
    assert len(conns) == 1, conns
    return conns[0]


def collect(conns, side=None, sides=None, **report) -> connect.ConnectReport:
    """Feed every connection; ``sides`` maps an acceptor ip to a side, else ``side`` for all."""
    cf = ConnectFailures()
    for c in conns:
        cf.add(c, (sides or {}).get(str(ipaddress.ip_address(c.resp)), side))
    return cf.report(**report)


def by_kind(report: connect.ConnectReport, kind: str):
    return [f for f in report.findings if f.kind == kind]


# -- attempt_outcome -------------------------------------------------------------------------


def test_outcome_of_each_connect_pattern():
    assert attempt_outcome(only(Wire().refused(PROXY_BACK, 50000, TARGET_A, 8080).tracked())) == "refused"
    assert attempt_outcome(only(Wire().unanswered(PROXY_BACK, 50000, TARGET_A, 8080).tracked())) == "unanswered"
    assert attempt_outcome(only(Wire().answered(PROXY_BACK, 50000, TARGET_A, 8080).tracked())) == "answered"


def test_a_handshake_whose_syn_ack_was_not_captured_is_answered():
    w = Wire().answered(PROXY_BACK, 50000, TARGET_A, 8080)
    w.segments = [s for s in w.segments if s[5] != TH_SYN | TH_ACK]
    assert attempt_outcome(only(w.tracked())) == "answered"


def test_a_connection_picked_up_mid_stream_is_not_an_attempt():
    w = Wire().answered(PROXY_BACK, 50000, TARGET_A, 8080)
    w.segments = [s for s in w.segments if not s[5] & TH_SYN]
    conn = only(w.tracked())
    assert not conn.syn_seen
    assert attempt_outcome(conn) is None


def test_a_rst_after_the_handshake_is_not_a_refusal():
    w = (Wire().add(0, PROXY_BACK, 50000, TARGET_A, 8080, TH_SYN)
         .add(0.001, TARGET_A, 8080, PROXY_BACK, 50000, TH_SYN | TH_ACK, seq=5000, ack=1001)
         .add(0.002, PROXY_BACK, 50000, TARGET_A, 8080, TH_ACK, seq=1001, ack=5001)
         .add(0.003, TARGET_A, 8080, PROXY_BACK, 50000, TH_RST | TH_ACK, seq=5001, ack=1001))
    assert attempt_outcome(only(w.tracked())) == "answered"


def test_syn_then_rst_from_the_opener_is_unanswered():
    w = Wire().unanswered(PROXY_BACK, 50000, TARGET_A, 8080, retries=(1,)).add(
        2.0, PROXY_BACK, 50000, TARGET_A, 8080, TH_RST, seq=1001)
    conn = only(w.tracked())
    assert conn.conn_state == "RSTOS0"
    assert attempt_outcome(conn) == "unanswered"


# -- target_connect_refused --------------------------------------------------------------------


def test_refused_target_connect_is_one_502_finding_with_frames_and_counts():
    w = (Wire().refused(PROXY_BACK, 50000, TARGET_A, 8080, at=0.0)
         .refused(PROXY_BACK, 50001, TARGET_A, 8080, at=1.0)
         .refused("10.0.2.2", 50002, TARGET_A, 8080, at=2.0)
         .answered(PROXY_BACK, 50003, TARGET_B, 8080, at=3.0))
    report = collect(w.tracked(), side="target")
    refused = by_kind(report, "target_connect_refused")
    assert len(refused) == 3 and report.kind_counts == (("target_connect_refused", 3),)
    f = refused[0]
    assert (f.kind, f.severity, f.side, f.status, f.client_flow, f.target_flow) == (
        "target_connect_refused", "error", "target", 502, None, f"{PROXY_BACK}:50000->{TARGET_A}:8080")
    assert [(e.frame, e.side) for e in f.evidence] == [(1, "target"), (2, "target")]
    assert f.ts_ns == T0 + round(0.0004 * SEC)  # the RST: when the proxy knew, and answered 502
    assert "frame 2" in f.summary and "refused" in f.summary
    assert f"Target {TARGET_A}:8080 in this capture: 3 connection attempt(s), 3 refused" in f.summary
    assert f"{PROXY_BACK}: 2, 10.0.2.2: 1" in f.summary
    assert f.recommendation
    a = next(a for a in report.addresses if a.address == f"{TARGET_A}:8080")
    assert (a.side, a.attempts, a.answered, a.refused, a.timed_out) == ("target", 3, 0, 3, 0)
    assert a.failures_by_peer == ((PROXY_BACK, 2), ("10.0.2.2", 1))
    assert all(a.address != f"{TARGET_B}:8080" for a in report.addresses)  # healthy ones are not listed


def test_syn_retried_then_refused_is_refused_only():
    report = collect(Wire().refused(PROXY_BACK, 50000, TARGET_A, 8080, retries=(1, 3, 7)).tracked(),
                     side="target")
    assert [f.kind for f in report.findings] == ["target_connect_refused"]
    assert "sent 4 times" in report.findings[0].summary


def test_a_refused_client_connection_is_counted_but_no_finding():
    report = collect(Wire().refused(CLIENT_1, 40000, NODE_A, 80).tracked(), side="client")
    assert report.findings == ()
    assert report.addresses[0].refused == 1 and report.addresses[0].side == "client"


# -- target_connect_timeout --------------------------------------------------------------------


def test_syn_retried_at_1_3_7_s_is_a_504_timeout_even_when_the_capture_ends_there():
    report = collect(Wire().unanswered(PROXY_BACK, 50000, TARGET_B, 8080, retries=(1, 3, 7)).tracked(),
                     side="target")
    f = only_finding(report, "target_connect_timeout")
    assert (f.status, f.side, f.target_flow) == (504, "target", f"{PROXY_BACK}:50000->{TARGET_B}:8080")
    assert "4 SYN(s)" in f.summary and "7.0 s" in f.summary and "when the capture ended" in f.summary
    assert f.evidence[0].frame == 1 and "4 in all" in f.evidence[1].what
    assert f.ts_ns == T0 + 7 * SEC  # the capture ended with the last SYN: no later time to place it


def test_a_timeout_seen_to_the_end_is_placed_at_the_albs_10_s():
    w = (Wire().unanswered(PROXY_BACK, 50000, TARGET_B, 8080, retries=(1, 3, 7))
         .answered(CLIENT_1, 40000, NODE_A, 80, at=20.0))
    f = only_finding(collect(w.tracked(), side="target"), "target_connect_timeout")
    assert f.ts_ns == T0 + 10 * SEC
    assert "then stopped" in f.summary


def test_a_single_syn_at_the_end_of_the_capture_is_not_a_failure():
    w = Wire().answered(CLIENT_1, 40000, NODE_A, 80, at=0.0).unanswered(PROXY_BACK, 50000, TARGET_B, 8080, at=9.9)
    report = collect(w.tracked(), side="target")
    assert report.findings == ()
    a = only_address(report, f"{TARGET_B}:8080")
    assert (a.undecided, a.timed_out) == (1, 0)


def test_two_syns_a_second_apart_then_the_capture_ends_are_undecided():
    w = Wire().unanswered(PROXY_BACK, 50000, TARGET_B, 8080, retries=(1,)).answered(CLIENT_1, 40000, NODE_A, 80,
                                                                                   at=2.5)
    assert collect(w.tracked(), side="target").findings == ()


def test_a_single_syn_never_retried_while_the_capture_went_on_is_a_give_up():
    w = Wire().unanswered(PROXY_BACK, 50000, TARGET_B, 8080).answered(CLIENT_1, 40000, NODE_A, 80, at=5.0)
    f = only_finding(collect(w.tracked(), side="target"), "target_connect_timeout")
    assert "no more SYNs" in f.summary and "5.0 s" in f.summary
    assert f.ts_ns == T0 + round(5.007 * SEC)  # capture end (before the ALB's 10 s)


def test_the_opener_giving_up_with_a_rst_is_a_timeout():
    w = Wire().unanswered(PROXY_BACK, 50000, TARGET_B, 8080, retries=(1,)).add(
        1.5, PROXY_BACK, 50000, TARGET_B, 8080, TH_RST, seq=1001)
    f = only_finding(collect(w.tracked(), side="target"), "target_connect_timeout")
    assert f.ts_ns == T0 + round(1.5 * SEC)
    assert f.evidence[-1].what == "RST from the proxy: it gave up" and f.evidence[-1].frame == 3


def test_undecided_attempts_are_judged_again_when_the_capture_end_is_known():
    cf = ConnectFailures()
    conns = Wire().unanswered(PROXY_BACK, 50000, TARGET_B, 8080).tracked()
    cf.add(only(conns), "target")
    assert cf.findings() == ()
    # a later connection (or the caller's capture end) shows the capture went on: it gave up
    assert [f.kind for f in cf.findings(capture_end_ns=T0 + 4 * SEC)] == ["target_connect_timeout"]
    later = Wire().answered(CLIENT_1, 40000, NODE_A, 80, at=4.0).tracked()
    cf.add(only(later), "client")
    assert [f.kind for f in cf.findings()] == ["target_connect_timeout"]
    assert cf.report() == cf.report()  # report() changes nothing


def test_a_new_isn_on_the_same_ports_is_a_new_attempt():
    w = (Wire().add(0, PROXY_BACK, 50000, TARGET_B, 8080, TH_SYN, seq=1000)
         .add(1, PROXY_BACK, 50000, TARGET_B, 8080, TH_SYN, seq=1000)
         .add(3, PROXY_BACK, 50000, TARGET_B, 8080, TH_SYN, seq=1000)
         .add(12, PROXY_BACK, 50000, TARGET_B, 8080, TH_SYN, seq=9000)
         .add(12.001, TARGET_B, 8080, PROXY_BACK, 50000, TH_RST | TH_ACK, seq=0, ack=9001))
    report = collect(w.tracked(), side="target")
    assert [f.kind for f in report.findings] == ["target_connect_timeout", "target_connect_refused"]
    a = only_address(report, f"{TARGET_B}:8080")
    assert (a.attempts, a.refused, a.timed_out) == (2, 1, 1)


# -- client_connect_timeout -----------------------------------------------------------------


def subnet_without_route() -> Wire:
    """Clients alternate between two proxy addresses; NODE_B never answers."""
    w = Wire()
    w.answered(CLIENT_1, 40000, NODE_A, 80, at=0.0)
    w.unanswered(CLIENT_1, 40001, NODE_B, 80, at=0.5, retries=(1, 3, 7))
    w.unanswered(CLIENT_2, 40002, NODE_B, 80, at=1.0, retries=(1, 3, 7))
    w.unanswered(CLIENT_2, 40003, NODE_B, 80, at=2.0, retries=(1, 3, 7))
    w.answered(CLIENT_2, 40004, NODE_A, 80, at=12.0)
    return w


def test_one_unreachable_proxy_address_is_one_finding_with_counts_per_client():
    report = collect(subnet_without_route().tracked(), side="client")
    f = only_finding(report, "client_connect_timeout")
    assert (f.side, f.status, f.severity, f.target_flow) == ("client", None, "error", None)
    assert f.client_flow == f"{CLIENT_1}:40001->{NODE_B}:80"
    assert f.ts_ns == T0 + round(0.5 * SEC)
    assert f"3 connection attempt(s) from 2 client address(es) to proxy address {NODE_B}:80" in f.summary
    assert f"{CLIENT_2}: 2, {CLIENT_1}: 1" in f.summary
    assert f"{NODE_A}:80 answered 2" in f.summary and "subnet without a route" in f.summary
    assert [e.frame for e in f.evidence] == [9, 1]  # the first unanswered SYN, a SYN the sibling answered
    b = only_address(report, f"{NODE_B}:80")
    assert (b.side, b.timed_out, b.answered, b.failures_by_peer) == ("client", 3, 0, ((CLIENT_2, 2), (CLIENT_1, 1)))
    assert report.kind_counts == (("client_connect_timeout", 1),)


def test_no_client_finding_without_an_answering_sibling():
    w = subnet_without_route()
    w.segments = [s for s in w.segments if NODE_A not in (s[1], s[3])]
    assert collect(w.tracked(), side="client").findings == ()


def test_no_client_finding_for_a_single_failed_attempt():
    w = Wire().answered(CLIENT_1, 40000, NODE_A, 80).unanswered(CLIENT_1, 40001, NODE_B, 80, retries=(1, 3, 7))
    assert collect(w.tracked(), side="client").findings == ()
    cf = ConnectFailures(min_client_failures=1)
    for c in w.tracked():
        cf.add(c, "client")
    assert [f.kind for f in cf.findings()] == ["client_connect_timeout"]


def test_no_client_finding_when_the_address_answers_some_clients():
    w = subnet_without_route().answered(CLIENT_1, 40009, NODE_B, 80, at=13.0)
    assert collect(w.tracked(), side="client").findings == ()


def test_siblings_are_the_same_listener_port_unless_the_caller_groups_them():
    w = Wire().answered(CLIENT_1, 40000, NODE_A, 443)
    for i in range(3):
        w.unanswered(CLIENT_1, 40001 + i, NODE_B, 80, at=i, retries=(1, 3, 7))
    assert collect(w.tracked(), side="client").findings == ()
    report = collect(w.tracked(), side="client", group_of=lambda endpoint: "alb-1")
    f = only_finding(report, "client_connect_timeout")
    assert "the same proxy on other addresses" in f.summary


def test_client_timeouts_are_not_target_findings_and_vice_versa():
    w = subnet_without_route().unanswered(PROXY_BACK, 50000, TARGET_B, 8080, retries=(1, 3, 7))
    report = collect(w.tracked(), sides={NODE_A: "client", NODE_B: "client", TARGET_B: "target"})
    assert sorted(f.kind for f in report.findings) == ["client_connect_timeout", "target_connect_timeout"]


# -- unknown side ------------------------------------------------------------------------------


def test_unknown_side_is_told_from_hosts_that_accept_and_open():
    w = subnet_without_route()
    w.answered(NODE_A, 50000, TARGET_A, 8080, at=0.01)  # the proxy opens target connections from NODE_A
    w.refused(NODE_A, 50001, TARGET_B, 8080, at=4.0)
    report = collect(w.tracked(), side=None)
    assert sorted(f.kind for f in report.findings) == ["client_connect_timeout", "target_connect_refused"]
    assert report.unattributed == 0


def test_unknown_side_without_any_proxy_is_unattributed():
    report = collect(Wire().refused(CLIENT_1, 40000, TARGET_A, 8080).tracked(), side=None)
    assert report.findings == () and report.unattributed == 1


def test_the_callers_roles_decide_unknown_sides():
    seen = []

    def side_of(opener, acceptor):
        seen.append((opener, acceptor))
        return "target" if acceptor.endswith(":8080") else None

    report = collect(Wire().refused(CLIENT_1, 40000, TARGET_A, 8080).tracked(), side=None, side_of=side_of)
    assert [f.kind for f in report.findings] == ["target_connect_refused"]
    assert (f"{CLIENT_1}:0", f"{TARGET_A}:8080") in seen


def test_side_must_be_client_target_or_none():
    with pytest.raises(ValueError):
        ConnectFailures().add(only(Wire().refused(CLIENT_1, 40000, TARGET_A, 8080).tracked()), "front")


# -- bounds -------------------------------------------------------------------------------------


def many_refused(n: int) -> list[Connection]:
    w = Wire()
    for i in range(n):
        w.refused(PROXY_BACK, 20000 + i, TARGET_A, 8080, at=i * 0.01)
    return w.tracked()


def test_findings_beyond_keep_per_kind_are_counted_not_kept():
    cf = ConnectFailures(keep_per_kind=5)
    for c in many_refused(12):
        cf.add(c, "target")
    report = cf.report()
    assert len(report.findings) == 5 and report.kind_counts == (("target_connect_refused", 12),)
    assert "12 connection attempt(s), 12 refused" in report.findings[0].summary


def test_attempts_kept_keys_and_pending_are_bounded(monkeypatch):
    monkeypatch.setattr(connect, "MAX_ATTEMPTS", 4)
    monkeypatch.setattr(connect, "MAX_KEYS", 2)
    monkeypatch.setattr(connect, "MAX_PENDING", 1)
    cf = ConnectFailures()
    for c in many_refused(10):
        cf.add(c, "target")
    for i, c in enumerate(Wire().unanswered(PROXY_BACK, 30000, TARGET_B, 8080)
                          .unanswered(PROXY_BACK, 30001, TARGET_B, 8080).tracked()):
        cf.add(c, "target")
    cf.add(only(Wire().refused(PROXY_BACK, 30002, "10.0.3.13", 8080).tracked()), "target")  # a third key
    report = cf.report()
    assert len(cf._attempts) == 4 and len(cf._pending) == 1 and len(cf._tallies) == 2
    assert report.dropped_attempts == 6 and report.untracked == 1
    assert dict(report.kind_counts) == {"target_connect_refused": 10}  # counted from the tallies
    assert only_address(report, f"{TARGET_B}:8080").undecided == 2


def test_peers_shown_in_a_summary_are_bounded():
    w = Wire()
    for i in range(12):
        w.refused(f"10.0.2.{i + 1}", 50000, TARGET_A, 8080, at=i * 0.01)
    f = collect(w.tracked(), side="target").findings[0]
    assert "4 other(s): 4" in f.summary


def test_address_counts_export():
    report = collect(subnet_without_route().tracked(), side="client")
    d = address_counts_dict(only_address(report, f"{NODE_B}:80"))
    assert d == {"side": "client", "address": f"{NODE_B}:80", "attempts": 3, "answered": 0, "refused": 0,
                 "timed_out": 3, "undecided": 0, "failures_by_peer": {CLIENT_2: 2, CLIENT_1: 1}}


def test_kinds_are_the_four_names():
    assert KINDS == ("target_connect_refused", "target_connect_timeout", "client_connect_timeout", "syn_flood")


# -- end to end: a built pcap through the pipeline -------------------------------------------------


def incident() -> Wire:
    """Target side: SYN -> RST to TARGET_A; SYNs to TARGET_B at 0, 1, 3, 7 s then nothing; a healthy target
    connection. Client side: NODE_A answers, NODE_B never does. The capture runs to 15 s."""
    w = Wire()
    w.answered(CLIENT_1, 40000, NODE_A, 80, at=0.0)
    w.answered(PROXY_BACK, 50000, "10.0.3.10", 8080, at=0.002)
    w.refused(PROXY_BACK, 50001, TARGET_A, 8080, at=0.5)
    w.unanswered(PROXY_BACK, 50002, TARGET_B, 8080, at=1.0, retries=(1, 3, 7))
    w.unanswered(CLIENT_1, 40001, NODE_B, 80, at=2.0, retries=(1, 3, 7))
    w.unanswered(CLIENT_2, 40002, NODE_B, 80, at=2.5, retries=(1, 3, 7))
    w.answered(CLIENT_2, 40003, NODE_A, 80, at=15.0)
    return w


ROLES = {NODE_A: "client", NODE_B: "client", "10.0.3.10": "target", TARGET_A: "target", TARGET_B: "target"}


def test_end_to_end_on_a_built_pcap(tmp_path):
    path = tmp_path / "connect.pcap"
    path.write_bytes(incident().pcap_bytes())
    summary, collected = run(path)
    assert summary.connections == 7
    cf = ConnectFailures()
    for c in collected.connections:
        cf.add(c, ROLES[str(ipaddress.ip_address(c.resp))])
    report = cf.report()
    kinds = {f.kind: f for f in report.findings}
    assert sorted(kinds) == sorted(k for k in KINDS if k != "syn_flood") and len(report.findings) == 3  # one each

    refused = kinds["target_connect_refused"]
    assert refused.target_flow == f"{PROXY_BACK}:50001->{TARGET_A}:8080" and refused.status == 502
    assert [e.frame for e in refused.evidence] == [frame_of(path, f"ip.dst=={TARGET_A} && tcp.flags.syn==1"),
                                                   frame_of(path, f"ip.src=={TARGET_A} && tcp.flags.reset==1")]

    timeout = kinds["target_connect_timeout"]
    assert timeout.target_flow == f"{PROXY_BACK}:50002->{TARGET_B}:8080" and timeout.status == 504
    assert timeout.ts_ns == T0 + 11 * SEC  # the ALB's 10 s after the first SYN at 1 s
    assert "4 SYN(s)" in timeout.summary

    client = kinds["client_connect_timeout"]
    assert f"proxy address {NODE_B}:80" in client.summary and f"{NODE_A}:80 answered 2" in client.summary
    assert f"{CLIENT_1}: 1, {CLIENT_2}: 1" in client.summary
    assert {(a.side, a.address): a.failures for a in report.addresses} == {
        ("target", f"{TARGET_A}:8080"): 1, ("target", f"{TARGET_B}:8080"): 1, ("client", f"{NODE_B}:80"): 2}


def frame_of(path, display_filter: str) -> int | None:
    """The first frame matching a display filter, by tshark when it is installed (else None: not checked)."""
    if shutil.which("tshark") is None:
        return None
    out = subprocess.run(["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0])


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_the_built_capture_as_intended(tmp_path):
    path = tmp_path / "connect.pcap"
    path.write_bytes(incident().pcap_bytes())

    def rows(display_filter: str) -> list[list[str]]:
        out = subprocess.run(["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e",
                              "frame.time_relative", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.flags.str",
                              "-e", "_ws.col.Info"], capture_output=True, text=True, check=True).stdout
        return [line.split("\t") for line in out.splitlines()]

    to_b = rows(f"ip.dst=={TARGET_B}")
    assert [round(float(r[0]) - 1.0, 3) for r in to_b] == [0.0, 1.0, 3.0, 7.0]
    assert all("SYN" in r[4] for r in to_b) and "Retransmission" in to_b[1][4]
    assert rows(f"ip.src=={TARGET_B}") == []
    refused = rows(f"ip.addr=={TARGET_A}")
    assert len(refused) == 2 and "[SYN]" in refused[0][4] and "[RST, ACK]" in refused[1][4]
    assert rows(f"ip.src=={NODE_B}") == []
    assert len(rows(f"ip.dst=={NODE_B} && tcp.flags.syn==1")) == 8
    assert len(rows(f"ip.src=={NODE_A} && tcp.flags.syn==1 && tcp.flags.ack==1")) == 2


# -- helpers ---------------------------------------------------------------------------------------


def only_finding(report: connect.ConnectReport, kind: str):
    found = by_kind(report, kind)
    assert len(found) == 1 and len(report.findings) == 1, report.findings
    return found[0]


def only_address(report: connect.ConnectReport, address: str):
    return next(a for a in report.addresses if a.address == address)


# -- one event, one finding: the client's side of a connect failure -----------------------------


def test_a_client_side_502_is_explained_by_the_refusal_once():
    report = collect(Wire().refused(PROXY_BACK, 50000, TARGET_A, 8080, at=1.0).tracked(), side="target")
    refused = report.findings[0]
    assert report.explaining(refused.ts_ns + 2_000_000, 502) is refused
    assert report.explaining(refused.ts_ns + 2_000_000, 502) is None  # claimed: one front error per refusal
    again = collect(Wire().refused(PROXY_BACK, 50000, TARGET_A, 8080, at=1.0).tracked(), side="target")
    assert again.explaining(refused.ts_ns + 5 * SEC, 502) is None  # too late to be its answer
    assert again.explaining(refused.ts_ns, 504) is None  # a refusal is not a 504
    assert again.explaining(refused.ts_ns, 502, back_hosts=("10.9.9.9",)) is None  # another proxy's
    assert again.explaining(refused.ts_ns, 502, back_hosts=(PROXY_BACK,)) == refused


def test_a_client_side_504_is_explained_by_the_connect_timeout():
    report = collect(Wire().unanswered(PROXY_BACK, 50000, TARGET_B, 8080, at=1.0, retries=(1, 3, 7))
                     .answered(CLIENT_1, 40000, NODE_A, 80, at=20.0).tracked(), side="target")
    timeout = only_finding(report, "target_connect_timeout")
    assert report.explaining(T0 + round(0.5 * SEC), 504) is None  # before the first SYN
    assert report.explaining(T0 + 11 * SEC + 1000, 504) is timeout


def test_diagnosis_reports_each_failed_connect_once_and_nothing_else(tmp_path):
    from alb_pcap.diagnosis.diagnose import Diagnosis
    from alb_pcap.outputs.records import result_dict
    from alb_pcap.wire import pipeline

    path = tmp_path / "connect.pcap"
    path.write_bytes(incident().pcap_bytes())
    sink = Diagnosis(proxies=(PROXY_BACK,), listeners=(80,))
    pipeline.analyze([str(path)], [sink])
    result = sink.finish()
    # no idle close, keep-alive close or timer from the attempts that never got a handshake
    assert sorted(f.kind for f in result.findings) == [
        "client_connect_timeout", "target_connect_refused", "target_connect_timeout"]
    assert result.timers == ()
    exported = {a["address"]: a for a in result_dict(result)["connect_failures"]}
    assert exported[f"{TARGET_A}:8080"]["refused"] == 1 and exported[f"{TARGET_B}:8080"]["timed_out"] == 1
    assert exported[f"{NODE_B}:80"]["failures_by_peer"] == {CLIENT_1: 1, CLIENT_2: 1}
