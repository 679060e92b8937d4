"""`TritonBackend` (the client of `pconv infer --server`) against a real `pconv serve` on loopback that is full.

A busy server (every admission taken, here by other clients) is healthy: the batch waits and tries again
instead of stopping the job, and stops with one line only when the server stays busy past the bound.
"""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
from helpers.serving import Trickler, free_ports, good_batch, serving

from pconv_deploy.serving import client
from pconv_deploy.serving.client import ServersUnavailable, TritonBackend, is_busy
from pconv_deploy.serving.fronts import ADMIT_SECONDS, ADMITTED_PER_SLOT, MIN_BODY_RATE

ADMISSIONS = 4 * ADMITTED_PER_SLOT  # inference slots per front (--max-batch-size 4) times the admitted per slot
HOLD_SECONDS = 1.5  # how long the gRPC admissions stay taken: the client must wait them out


@pytest.fixture(scope="module")
def served(serve_env, small_onnx, tmp_path_factory):  # noqa: F811
    from pconv_deploy.runtime.backends import load_backend

    with serving(small_onnx, tmp_path_factory.mktemp("busy")) as (server,):
        yield server, load_backend(small_onnx, "auto")


@contextlib.contextmanager
def grpc_admissions_taken(server):
    """Every admission of the gRPC front held by a ModelInfer call that sends no message until released
    (``release()`` ends them: the front answers INVALID_ARGUMENT and frees its admissions)."""
    import grpc

    done = threading.Event()

    def no_message():
        done.wait(60)
        yield from ()

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc}")
    silent = channel.stream_unary("/inference.GRPCInferenceService/ModelInfer")
    held = [silent.future(no_message(), timeout=60) for _ in range(ADMISSIONS)]
    time.sleep(0.5)  # the calls reach the front

    def release() -> None:
        done.set()
        for call in held:
            call.exception(timeout=30)

    try:
        yield release
    finally:
        release()
        channel.close()


def run_timed(backend: TritonBackend, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.monotonic()
    try:
        return backend.run(image, mask), time.monotonic() - start
    finally:
        backend.close()


def test_grpc_busy_server_is_waited_for(served):
    """RESOURCE_EXHAUSTED "busy" while other calls hold every admission: the batch waits, then runs."""
    server, local = served
    image, mask = good_batch(11)
    with grpc_admissions_taken(server) as release:
        backend = TritonBackend([server.grpc_url])
        timer = threading.Timer(HOLD_SECONDS, release)
        timer.start()
        try:
            out, took = run_timed(backend, image, mask)
        finally:
            timer.cancel()
    assert took >= HOLD_SECONDS - 0.6, took  # it did wait for the admissions (taken 0.5 s before it started)
    np.testing.assert_allclose(out, local.run(image, mask), atol=1e-4)
    assert backend.servers[0].failures == 0


def test_http_busy_server_is_waited_for(served):
    """HTTP 503 "busy" after ADMIT_SECONDS behind senders that keep up with MIN_BODY_RATE: the batch tries
    again, and runs once they are gone."""
    server, local = served
    image, mask = good_batch(12)
    senders = [
        Trickler(server.http, length=60_000_000, every=0.5, chunk=MIN_BODY_RATE, seconds=ADMIT_SECONDS + 8)
        for _ in range(ADMISSIONS)
    ]

    def release() -> None:
        assert all(s.answered_at is None for s in senders), "a sender was cut while it kept up"
        for s in senders:
            s.close()

    timer = threading.Timer(ADMIT_SECONDS + 1.5, release)  # after the first 503 (ADMIT_SECONDS + 0.5)
    try:
        time.sleep(0.5)  # the senders are admitted
        timer.start()
        out, took = run_timed(TritonBackend([server.http_url]), image, mask)
    finally:
        timer.cancel()
        for s in senders:
            s.close()
    assert ADMIT_SECONDS < took < ADMIT_SECONDS + 8, took
    np.testing.assert_allclose(out, local.run(image, mask), atol=1e-4)


def test_a_batch_stops_with_one_line_when_busy_past_the_bound(served, monkeypatch):
    """Busy (one server) and down (the other) for longer than BUSY_SECONDS: ServersUnavailable, one line
    naming both, after the bound and not before; the busy server is not rested as failed."""
    server, _ = served
    monkeypatch.setattr(client, "BUSY_SECONDS", 1.0)
    down = f"http://127.0.0.1:{free_ports(1)[0]}"
    with grpc_admissions_taken(server):
        backend = TritonBackend([server.grpc_url, down])
        start = time.monotonic()
        with pytest.raises(ServersUnavailable) as stopped:
            run_timed(backend, *good_batch(13))
        took = time.monotonic() - start
    message = str(stopped.value)
    assert len(message.splitlines()) == 1, message
    assert "busy for 1 s" in message and f"{server.grpc_url}: InferenceServerException" in message, message
    assert f"{down}: " in message and "busy" not in message.split(f"{down}: ")[1], message
    assert backend.servers[0].failures == 0 and backend.servers[1].failures >= 2, backend.servers
    assert 1.0 <= took < 5, took  # tried again until the bound (the old client stopped at once)


def test_busy_is_only_a_full_server():
    """What a full server answers is busy; "not ready", a model server that did not answer, a message over the
    size limit and a refused connection are failures (the server rests, the batch goes on without it)."""
    from tritonclient.utils import InferenceServerException as Answer

    grpc_full = "StatusCode.RESOURCE_EXHAUSTED"
    assert is_busy(Answer("busy: 8 requests are already being received or run; try again", status="503"))
    assert is_busy(Answer("busy: 8 inference calls are already in this server; try again", status=grpc_full))
    assert is_busy(Answer("Concurrent RPC limit exceeded!", status=grpc_full))
    assert not is_busy(Answer("not ready", status="503"))
    assert not is_busy(Answer("the model server did not answer; try again", status="503"))
    assert not is_busy(Answer("Received message larger than max (300 vs. 200)", status=grpc_full))
    assert not is_busy(Answer("busy: 8 requests", status="400"))
    assert not is_busy(ConnectionRefusedError("[Errno 111] Connection refused"))
