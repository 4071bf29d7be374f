"""Which proxy it is: hints from what proxies write, checked on real lab captures too."""

from __future__ import annotations

import pytest

from alb_pcap.diagnosis.software import from_request, from_response, words

from .conftest import SAMPLES
from .test_diagnose import diagnose


def test_a_relayed_response_speaks_for_the_target_not_the_proxy():
    assert from_response((("Server", "nginx/1.22.1"),), 200) is None
    assert from_response((("Server", "nginx/1.22.1"),), 502) == "nginx"
    assert from_response((("Server", "awselb/2.0"),), 504) == "ALB"


def test_haproxy_lower_cases_and_envoy_and_apache_sign_their_requests():
    assert from_response((("content-length", "107"), ("cache-control", "no-cache")), 502) == "HAProxy"
    assert from_request((("host", "a"), ("user-agent", "curl"))) == "HAProxy"
    assert from_request((("Host", "a"), ("X-Forwarded-Server", "web1"))) == "Apache"
    assert from_request((("host", "a"), ("x-envoy-expected-rq-timeout-ms", "15000"))) == "Envoy"
    assert from_request((("Host", "a"), ("User-Agent", "curl"))) is None


def test_unknown_software_gets_generic_words():
    assert "the proxy" == words(None)["proxy"] and "keepalive_time" == words("nginx")["max_age"]


@pytest.mark.parametrize("capture,software", [
    ("keepalive-race-haproxy.pcap", "HAProxy"), ("slow-target-504-nginx.pcap", "nginx"),
    ("alb-keepalive-race-mirror.pcap", "ALB"),
])
def test_real_proxies_are_named_and_advised_in_their_own_settings(capture, software):
    if not (SAMPLES / capture).exists():
        pytest.skip("no sample")
    result = diagnose(SAMPLES / capture)
    assert [p.software for p in result.proxies] == [software]
    fixes = {f.recommendation for f in result.findings if f.kind in ("keepalive_race", "gateway_timeout")}
    assert fixes and all(words(software)["proxy"] in fix for fix in fixes)


def test_alb_target_side_only_infers_what_the_client_got(tmp_path):
    """Traffic Mirroring on the target instance alone: the ALB's 502 is inferred, and says so."""
    from .rewrite import only_host

    source = SAMPLES / "alb-keepalive-race.pcap"
    if not source.exists():
        pytest.skip("no crafted ALB captures")
    target_side = only_host(source, tmp_path / "target.pcap", "198.18.3.11")
    result = diagnose(target_side)
    (race,) = [f for f in result.findings if f.kind == "keepalive_race"]
    assert (race.client_flow, race.status, race.status_inferred) == (None, 502, True)
    assert "inferred" in race.summary
    assert [p.software for p in result.proxies] == ["ALB"]
