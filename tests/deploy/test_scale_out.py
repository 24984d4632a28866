"""Scale-out for real: two `charlm serve` processes behind Debian's nginx running docker/nginx.conf,
its upstream servers rewritten to the processes' loopback ports."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from tests.deploy.helpers import render_nginx_conf
from tests.helpers import missing_tool
from tests.service.helpers import LONG, free_port, healthy, serve_process, wait_until

STREAMS = 20
CHARS = 30
BATCH = 2  # per replica: small, so that a few long streams fill both


@dataclass(frozen=True)
class Cluster:
    nginx: str
    replicas: list[str]
    access_log: Path
    processes: list[subprocess.Popen]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ["/usr/sbin/nginx"] if Path(p).is_file()), None)


@contextlib.contextmanager
def nginx_process(conf: Path, prefix: Path) -> Iterator[subprocess.Popen]:
    binary = nginx_binary()
    assert binary is not None
    command = [binary, "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", f"daemon off; pid {prefix}/nginx.pid;"]
    with (prefix / "access.log").open("w") as log, (prefix / "error.log").open("w") as errors:
        process = subprocess.Popen(command, stdout=log, stderr=errors)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)


@contextlib.contextmanager
def running_cluster(models: Path, prefix: Path, *flags: str) -> Iterator[Cluster]:
    """Two replicas on the tiny models and nginx in front of them, with the project's configuration."""
    if nginx_binary() is None:
        missing_tool("nginx is not installed (Debian: apt-get install nginx; .ci/deploy-checks install does)")
    args = ("--models-dir", str(models), "--default-model", "tiny-gpt", "--max-batch-size", str(BATCH),
            "--max-new-tokens", str(LONG), "--sse-keepalive-s", "0.1", "--log-level", "warning", *flags)
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(serve_process(*args)) for _ in range(2)]
        bases = [replica.url for replica in replicas]
        for replica in replicas:
            replica.wait_healthy()
        ports = [int(base.rsplit(":", 1)[1]) for base in bases]
        conf = prefix / "nginx.conf"
        listen = free_port()
        conf.write_text(render_nginx_conf(ports, listen, prefix))
        nginx = stack.enter_context(nginx_process(conf, prefix))
        front = f"http://127.0.0.1:{listen}"
        up = wait_until(lambda: healthy(front) or nginx.poll() is not None, timeout=30) and nginx.poll() is None
        assert up, (prefix / "error.log").read_text()
        yield Cluster(front, bases, prefix / "access.log", [replica.process for replica in replicas])


@pytest.fixture(scope="module")
def cluster(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tiny_models, tmp_path_factory.mktemp("nginx")) as running:
        yield running


def stream_through(base: str, seed: int) -> list[dict]:
    body = {"inputs": "the", "parameters": {"max_new_tokens": CHARS, "seed": seed, "do_sample": True}}
    with httpx.Client(timeout=120) as client, connect_sse(client, "POST", f"{base}/generate_stream", json=body) as s:
        assert s.response.status_code == 200
        return [json.loads(event.data) for event in s.iter_sse()]


def test_concurrent_streams_through_nginx_all_complete_and_both_replicas_serve(cluster):
    before = [served_count(base, "/generate_stream") for base in cluster.replicas]
    with ThreadPoolExecutor(STREAMS) as pool:
        streams = list(pool.map(lambda seed: stream_through(cluster.nginx, seed), range(STREAMS)))
    for events in streams:
        assert len(events) == CHARS
        assert events[-1]["details"]["finish_reason"] == "length"
        assert "".join(e["token"]["text"] for e in events) == events[-1]["generated_text"]
    served = [served_count(base, "/generate_stream") - b for base, b in zip(cluster.replicas, before, strict=True)]
    assert sum(served) == STREAMS
    assert all(count > 0 for count in served), f"streams per replica: {served}"


def test_a_seeded_stream_is_the_same_through_nginx_as_from_a_replica(cluster):
    """nginx passes every event through unchanged, whichever replica answers."""
    through_nginx = stream_through(cluster.nginx, seed=7)
    assert stream_through(cluster.replicas[0], seed=7) == through_nginx


def test_request_ids_pass_through_nginx(cluster):
    answer = httpx.post(f"{cluster.nginx}/generate", json={"inputs": "a", "parameters": {"max_new_tokens": 1}},
                        headers={"X-Request-Id": "trace-42"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-42"
    generated = httpx.get(f"{cluster.nginx}/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated), "nginx gives a request without an id its own"
    assert wait_until(lambda: f"request_id={generated} " in cluster.access_log.read_text(), timeout=10), \
        "nginx's own request id never reached its access log"


def queued(base: str, model: str = "tiny-gpt") -> int:
    return int(httpx.get(f"{base}/health").json()["models"][model]["queued"])


def active(base: str, model: str = "tiny-gpt") -> int:
    return int(httpx.get(f"{base}/health").json()["models"][model]["active"])


def test_a_stream_reaches_the_client_through_nginx_before_its_generation_has_even_started(cluster):
    """Both replicas' batches are full of endless streams, so a new stream waits in a queue and its
    only bytes are keep-alive comments. One arriving through nginx while the stream still waits
    shows that nginx forwards each piece at once: its whole answer (a few events) would fit in
    nginx's buffers, so a buffering proxy would hold everything until the generation ended."""
    endless = {"inputs": "the", "parameters": {"max_new_tokens": LONG}}
    short = {"inputs": "the", "parameters": {"max_new_tokens": 8, "seed": 1, "do_sample": True}}
    with httpx.Client(timeout=60) as client, contextlib.ExitStack() as blockers:
        for base in cluster.replicas:
            for _ in range(BATCH):
                blocker = blockers.enter_context(client.stream("POST", f"{base}/generate_stream", json=endless))
                assert blocker.status_code == 200
        assert wait_until(lambda: all(active(base) == BATCH for base in cluster.replicas)), "the blockers never all ran"
        with client.stream("POST", f"{cluster.nginx}/generate_stream", json=short) as waiting:
            lines = waiting.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith(":"), f"expected a keep-alive comment first, got {first!r}"
            assert sum(queued(base) for base in cluster.replicas) == 1, "the stream is no longer waiting"
            blockers.close()  # the endless streams go away, and the waiting one gets its turn
            events = [json.loads(line.removeprefix("data:")) for line in lines if line.startswith("data:")]
    assert len(events) == 8 and events[-1]["details"]["finish_reason"] == "length"


def test_a_draining_replica_hands_new_requests_to_the_other(tiny_models, tmp_path):
    """A rolling restart (depends on two other processes): one replica gets SIGTERM while it
    still serves a stream, so it drains. nginx learns that it is going away in one of two ways,
    and either is fine: a request on a connection nginx already holds gets 503, a new connection is
    refused once the replica has finished its stream and exited. Either way nginx sends every new
    request, POSTs included, to the other replica, no client sees an error, and the draining
    replica's own stream runs to its end."""
    held_chars = 2000
    held_body = {"inputs": "the", "parameters": {"max_new_tokens": held_chars}}
    body = {"inputs": "the", "parameters": {"max_new_tokens": 4}}
    with running_cluster(tiny_models, tmp_path, "--shutdown-grace-s", "120") as cluster, \
            httpx.Client(timeout=60) as client:
        draining, other = cluster.replicas
        with connect_sse(client, "POST", f"{draining}/generate_stream", json=held_body) as held:
            assert held.response.status_code == 200
            cluster.processes[0].send_signal(signal.SIGTERM)
            assert wait_until(lambda: not healthy(draining), timeout=10), "the replica did not start draining"
            before = served_count(other, "/generate")
            statuses = [client.post(f"{cluster.nginx}/generate", json=body).status_code for _ in range(10)]
            assert statuses == [200] * 10
            assert served_count(other, "/generate") - before == 10
            events = [json.loads(event.data) for event in held.iter_sse()]
        assert len(events) == held_chars
        assert events[-1]["details"]["finish_reason"] == "length"
        assert cluster.processes[0].wait(30) == 0, "the drained replica exits cleanly"


def served_count(base: str, route: str) -> float:
    pattern = re.compile(rf'^charlm_requests_total{{route="{route}",status="200"}} (\S+)$', re.MULTILINE)
    found = pattern.search(httpx.get(f"{base}/metrics").text)
    return float(found.group(1)) if found else 0.0
