"""SIGTERM during 16 streams of a real `charlm serve`: readiness fails at once, liveness holds, every
stream finishes; and when the drain timeout runs out, every open stream still gets its final event."""

from __future__ import annotations

from tests.service import load
from tests.service.drain import drain_during_streams
from tests.service.test_load import tiny_server

STREAMS = 16


def test_sigterm_fails_readiness_before_any_stream_ends_and_every_stream_completes(tiny_models):
    flags = ("--max-batch-size", str(STREAMS), "--shutdown-grace-s", "120", "--sse-keepalive-s", "1")
    with tiny_server(tiny_models, *flags) as server:
        report = drain_during_streams(server, STREAMS, chars=1500)
        output = server.output()
    assert report.unready_at is not None, output
    # Readiness turned 503 while all 16 streams were still running: the drain is announced first.
    assert report.unready_at < min(end.at for end in report.ends)
    assert report.refused_status == 503
    assert report.live_statuses and set(report.live_statuses) == {200}  # alive all through the drain
    assert [end.reason for end in report.ends] == ["length"] * STREAMS
    assert report.exit_code == 0, output


def test_an_expired_drain_ends_every_open_stream_with_a_final_cancelled_event(tiny_models):
    flags = ("--max-batch-size", str(STREAMS), "--shutdown-grace-s", "1", "--max-new-tokens", str(load.FOREVER))
    with tiny_server(tiny_models, *flags) as server:
        report = drain_during_streams(server, STREAMS, chars=load.FOREVER)
        output = server.output()
    assert report.unready_at is not None and report.refused_status == 503, output
    assert [end.reason for end in report.ends] == ["cancelled"] * STREAMS  # a final event, not a cut
    assert report.exit_code == 0, output
