"""alb-pcap against a peer: Zeek's own conn.log/http.log for real traces of Zeek's test suite.

Each trace in ../shared/peer/zeek/ is analysed by the real pipeline and compared on what
the issue asks for: each connection's ``conn_state`` and the HTTP transactions
(method, uri, status). Where alb-pcap differs on purpose, ``DELIBERATE`` names the trace,
says why, and pins what alb-pcap reports instead, so a change either way fails loudly.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter

import pytest

from alb_pcap.model import format_addr

from .analysis import run
from .conftest import shared_dir

SHARED = shared_dir()
TRACES = sorted((SHARED / "peer" / "zeek").glob("*/expected.json")) if SHARED else []
pytestmark = pytest.mark.skipif(not TRACES, reason="../shared/peer/zeek not found (set ALB_PCAP_SHARED)")

# trace -> (why we differ, what alb-pcap reports instead). Filled from real runs.
DELIBERATE_CONN: dict[str, tuple[str, dict]] = {}
DELIBERATE_HTTP: dict[str, tuple[str, Counter]] = {}


def _norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr))


def _trace(expected_path):
    spec = json.loads(expected_path.read_text())
    return spec, expected_path.parent / spec["files"]["trace"]


def _ids(paths):
    return [p.parent.name for p in paths]


def _our_conn_states(collected) -> dict[tuple, str]:
    return {(format_addr(c.orig), c.orig_port, format_addr(c.resp), c.resp_port): c.conn_state
            for c in collected.connections}


@pytest.mark.parametrize("expected_path", TRACES, ids=_ids(TRACES))
def test_conn_state_agrees_with_zeek(expected_path):
    spec, trace = _trace(expected_path)
    zeek = {(_norm(r["orig_h"]), r["orig_p"], _norm(r["resp_h"]), r["resp_p"]): r["conn_state"]
            for r in (spec.get("conn") or {}).get("tcp") or [] if r.get("conn_state")}
    if not zeek:
        pytest.skip("Zeek's baseline has no conn_state column for this trace")
    _, collected = run(trace)
    ours = _our_conn_states(collected)
    name = expected_path.parent.name
    if name in DELIBERATE_CONN:
        why, pinned = DELIBERATE_CONN[name]
        assert {k: ours.get(k) for k in pinned} == pinned, why
        zeek = {k: v for k, v in zeek.items() if k not in pinned}
    assert {k: ours.get(k) for k in zeek} == zeek


def _transactions(pairs) -> Counter:
    return Counter((ex.method, ex.uri, ex.status) for ex, _ in pairs)


@pytest.mark.parametrize("expected_path", TRACES, ids=_ids(TRACES))
def test_http_transactions_agree_with_zeek(expected_path):
    spec, trace = _trace(expected_path)
    rows = (spec.get("http") or {}).get("transactions_list")
    if rows is None:
        pytest.skip("Zeek's baseline has no http.log for this trace")
    zeek = Counter((r.get("method"), r.get("uri"), r.get("status_code")) for r in rows)
    _, collected = run(trace)
    ours = _transactions(collected.exchanges)
    name = expected_path.parent.name
    if name in DELIBERATE_HTTP:
        why, pinned = DELIBERATE_HTTP[name]
        assert ours == pinned, why
    else:
        assert ours == zeek


@pytest.mark.parametrize("expected_path", TRACES, ids=_ids(TRACES))
def test_every_frame_is_accounted_for(expected_path):
    spec, trace = _trace(expected_path)
    summary, _ = run(trace)
    (stats,) = summary.captures
    assert stats.frames == spec["trace_info"]["packets"]
    assert stats.frames == stats.decoded + stats.duplicates + sum(stats.skipped.values())
