from __future__ import annotations

from alb_pcap.diagnosis.correlate import Cut, Leg, Transaction
from alb_pcap.diagnosis.detect import (
    SEC,
    Clusterer,
    ConnectionEnd,
    TimerBook,
    client_abort,
    client_keepalive_expiry,
    gateway_timeout,
    idle_timeout_close,
    keepalive_race,
    target_keepalive_close,
    target_reset,
    tcp_keepalive_ignored,
)
from alb_pcap.diagnosis.refs import ref_of
from alb_pcap.model import ORIG, RESP

from .diag_builders import (
    CLIENT_FLOW,
    TARGET_FLOW,
    back_exchange,
    close,
    make_connection,
    make_exchange,
    ns,
)

# -- connection detectors -----------------------------------------------------------


def idle_end(side="client", closer=RESP, idle=5.0, outstanding=False, probes=(), **exchange) -> ConnectionEnd:
    flow = CLIENT_FLOW if side == "client" else TARGET_FLOW
    last = ref_of(make_exchange(**exchange), flow)
    conn = make_connection(flow=flow, first=close(closer, last.last_ns / SEC - 1_700_000_000 + idle),
                           probes=probes)
    return ConnectionEnd(conn, side, last.last_ns, last, outstanding)


def test_idle_close_by_proxy_on_client_side():
    f = idle_timeout_close(idle_end())
    assert (f.kind, f.side, f.client_flow, f.target_flow, f.status) == (
        "idle_timeout_close", "client", CLIENT_FLOW, None, None)
    assert "5.00 s" in f.summary
    assert f.evidence[-1].what == "FIN from the proxy"


def test_idle_close_by_proxy_on_target_side():
    f = idle_timeout_close(idle_end(side="target", closer=ORIG))
    assert (f.side, f.target_flow) == ("target", TARGET_FLOW)


def test_client_closing_its_own_idle_connection_is_no_finding():
    assert idle_timeout_close(idle_end(closer=ORIG)) is None


def test_close_after_connection_close_is_not_idle():
    end = idle_end(response_headers={"Connection": "close"})
    assert idle_timeout_close(end) is None


def test_close_with_request_outstanding_is_not_idle():
    assert idle_timeout_close(idle_end(outstanding=True)) is None


def test_short_silence_is_not_idle():
    assert idle_timeout_close(idle_end(idle=0.1)) is None


def test_target_keepalive_close():
    f = target_keepalive_close(idle_end(side="target", closer=RESP, idle=10.0))
    assert (f.kind, f.side, f.target_flow) == ("target_keepalive_close", "target", TARGET_FLOW)
    assert target_keepalive_close(idle_end(side="target", closer=ORIG)) is None


def test_probes_during_idle_are_flagged_not_counted_as_activity():
    end = idle_end(idle=60.0, probes=(45.0,))
    assert idle_timeout_close(end) is not None  # the probe did not reset the idle time
    f = tcp_keepalive_ignored(end)
    assert f.kind == "tcp_keepalive_ignored" and f.ts_ns == end.conn.first_close.ts_ns


def test_probes_before_last_data_do_not_count():
    assert tcp_keepalive_ignored(idle_end(idle=60.0, probes=(-5.0,))) is None


def test_client_keepalive_expiry():
    last = ref_of(make_exchange(index=5, start=61.0, response_headers={"Connection": "close"}), CLIENT_FLOW)
    conn = make_connection(start=0.0, first=close(RESP, 61.02))
    f = client_keepalive_expiry(ConnectionEnd(conn, "client", last.last_ns, last, False))
    assert (f.kind, f.status, f.side) == ("client_keepalive_expiry", 200, "client")
    assert "61.00 s" in f.summary


def test_client_asking_close_is_not_expiry():
    last = ref_of(make_exchange(index=5, headers={"Connection": "close"},
                                response_headers={"Connection": "close"}), CLIENT_FLOW)
    conn = make_connection(first=close(RESP, 0.02))
    assert client_keepalive_expiry(ConnectionEnd(conn, "client", last.last_ns, last, False)) is None


# -- transaction detectors -----------------------------------------------------------------


def back_leg(by="acceptor", at=0.0005, idle_before=5.0, how="fin", start=0.0, **kw) -> Leg:
    ex = ref_of(back_exchange(conn_id=2, index=3, start=start, status=None, ended=how, **kw), TARGET_FLOW)
    direction = RESP if by == "acceptor" else ORIG
    return Leg(ex, Cut(by, close(direction, at, how), None, int(idle_before * SEC)))


def front_leg(status=502, start=-0.001, duration=0.002, cut=None, **kw) -> Leg:
    return Leg(ref_of(make_exchange(conn_id=1, start=start, duration=duration, status=status, **kw), CLIENT_FLOW), cut)


def test_race_when_the_fin_crosses_a_request_on_an_idle_connection():
    tx = Transaction(front_leg(), (back_leg(),))
    f = keepalive_race(tx, TimerBook())
    assert (f.kind, f.side, f.status, f.client_flow, f.target_flow) == (
        "keepalive_race", "target", 502, CLIENT_FLOW, TARGET_FLOW)
    assert f.ts_ns == ns(0.0005)
    assert target_reset(tx, TimerBook()) is None


def test_fin_long_after_the_request_is_a_reset():
    tx = Transaction(front_leg(duration=1.0), (back_leg(at=0.5, idle_before=0.0),))
    assert keepalive_race(tx, TimerBook()) is None
    f = target_reset(tx, TimerBook())
    assert (f.kind, f.status) == ("target_reset", 502)


def test_late_fin_matching_the_keepalive_timer_is_a_race():
    timers = TimerBook()
    timers.observe("target_keepalive_timeout", "198.18.3.11:8080", 2 * SEC)
    tx = Transaction(front_leg(duration=1.0), (back_leg(at=0.5, idle_before=1.5),))
    assert keepalive_race(tx, timers) is not None


def test_race_on_target_side_alone_has_unknown_status():
    f = keepalive_race(Transaction(None, (back_leg(),)), TimerBook())
    assert (f.status, f.client_flow, f.severity) == (None, None, "error")


def test_race_hidden_by_a_retry_is_a_warning_with_the_200():
    retry = Leg(ref_of(back_exchange(conn_id=3, start=0.001), "198.18.2.10:50001->198.18.3.11:8080"))
    f = keepalive_race(Transaction(front_leg(status=200, duration=0.01), (back_leg(), retry)), TimerBook())
    assert (f.status, f.severity) == (200, "warning")
    assert "retried" in f.summary


def test_front_only_502_from_the_alb():
    front = front_leg(response_headers={"Server": "awselb/2.0"})
    f = keepalive_race(Transaction(front, ()), TimerBook())
    assert (f.kind, f.status, f.target_flow) == ("keepalive_race", 502, None)
    assert "awselb/2.0" in f.summary


def test_front_only_slow_502_is_a_reset():
    f = target_reset(Transaction(front_leg(duration=2.0), ()), TimerBook())
    assert f.kind == "target_reset"


def test_gateway_timeout_both_sides():
    tx = Transaction(front_leg(status=504, duration=60.0), (back_leg(by="opener", at=60.0, idle_before=0),))
    f = gateway_timeout(tx, TimerBook())
    assert (f.kind, f.side, f.status, f.ts_ns) == ("gateway_timeout", "target", 504, ns(60.0))


def test_gateway_timeout_when_the_target_answers_into_the_close():
    # the proxy's FIN at 2 s, the target's late 200 at 4 s: still the proxy giving up
    back = back_leg(by="opener", at=2.0, idle_before=0)
    late = Leg(ref_of(back_exchange(conn_id=2, index=3, duration=4.0), TARGET_FLOW), back.cut)
    assert gateway_timeout(Transaction(front_leg(status=504, duration=2.0), (late,)), TimerBook()) is not None


def test_front_only_504():
    f = gateway_timeout(Transaction(front_leg(status=504, duration=60.0), ()), TimerBook())
    assert (f.kind, f.status, f.target_flow) == ("gateway_timeout", 504, None)


def test_client_abort_on_client_side():
    cut = Cut("opener", close(ORIG, 10.0), None, 0)
    tx = Transaction(front_leg(status=None, cut=cut), (back_leg(by="opener", at=10.001, idle_before=0),))
    f = client_abort(tx, TimerBook())
    assert (f.kind, f.side, f.status, f.target_flow) == ("client_abort", "client", None, TARGET_FLOW)
    assert gateway_timeout(tx, TimerBook()) is None


def test_target_side_alone_early_give_up_is_a_client_abort():
    timers = TimerBook()
    timers.observe("proxy_target_idle_timeout", "198.18.2.10", 60 * SEC)
    tx = Transaction(None, (back_leg(by="opener", at=10.0, idle_before=0),))
    assert client_abort(tx, timers).side == "client"
    assert gateway_timeout(tx, timers) is None


def test_clusterer_groups_repeats_and_keeps_the_best_supported():
    c = Clusterer()
    for v in (5.001, 5.003, 4.998, 7.5):
        c.add(v)
    best = c.dominant()
    assert best.n == 3 and abs(best.mean - 5.0) < 0.01 and c.total == 4
