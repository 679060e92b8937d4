"""`pconv serve` against hostile requests (issue 21): each gets a one-line 4xx, and the server keeps serving.

A real server on loopback (tests/test_serving_server.py's helpers); the requests are raw HTTP bodies (JSON and
the binary tensor extension) and raw gRPC messages, so nothing client-side tidies them first.
"""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest
from helpers.serving import (
    Trickler,
    assert_inpainted,
    assert_one_line_refusal,
    assert_still_serving,
    binary_request,
    get_status,
    good_batch,
    json_request,
    post,
    serving,
)

from pconv_deploy.contract import IMAGE, MASK
from pconv_deploy.serving.checks import Limits
from pconv_deploy.serving.fronts import ADMIT_SECONDS, ADMITTED_PER_SLOT, BODY_FLOOR_SECONDS, MIN_BODY_RATE

MULTIPLE = 32  # the small test model's pconv.multiple
BIG = 2**63
INFLIGHT = 4  # inference slots per front: server.py's max(4, max_batch_size * instances), --max-batch-size 4


@pytest.fixture(scope="module")
def attacked(serve_env, small_onnx, tmp_path_factory):  # noqa: F811
    from pconv_deploy.runtime.backends import load_backend

    with serving(small_onnx, tmp_path_factory.mktemp("attacks")) as (server,):
        yield server, load_backend(small_onnx, "auto")


def as_json(image_shape: list, mask_shape: list, image_data: list, mask_data: list, **image: object) -> tuple:
    return json_request(
        {"shape": image_shape, "data": image_data, **image}, {"shape": mask_shape, "data": mask_data}
    ), {}


def as_binary(image: np.ndarray, mask: np.ndarray, image_shape: list | None = None, mask_shape: list | None = None):
    shapes = (image_shape, mask_shape) if image_shape else None
    return binary_request(image, mask, shapes)


def repeated_key(huge: int) -> tuple[bytes, dict]:
    """Python's json keeps a repeated key's last value, tritonserver's RapidJSON its first: a good request
    behind a huge one (this took tritonserver down through the first version of the checks)."""
    good = json.loads(as_json([1, 3, 32, 32], [1, 1, 32, 32], [0.5] * 3072, [1] * 1024)[0])["inputs"]
    bad = json.loads(as_json([1, 3, huge, huge], [1, 1, huge, huge], [0.0], [1.0])[0])["inputs"]
    return f'{{"inputs":{json.dumps(bad)},"inputs":{json.dumps(good)}}}'.encode(), {}


def repeated_shape(huge: int) -> tuple[bytes, dict]:
    image = (
        f'{{"name":"image","datatype":"FP32","shape":[1,3,{huge},{huge}],"shape":[1,3,32,32],"data":{[0.5] * 3072}}}'
    )
    mask = json.dumps({"name": "mask", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [1] * 1024})
    return f'{{"inputs":[{image},{mask}]}}'.encode(), {}


def shape_attacks() -> list[tuple[str, bytes, dict, str]]:
    """(what, body, headers, expected words) for the issue's shape attacks, JSON and binary."""
    zeros, image, mask = np.zeros(0, np.float32), *good_batch()
    huge = 100_000
    no_shm = {"parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 12288}}
    third = [{"name": n, "datatype": "FP32", "shape": [1], "data": [0]} for n in (IMAGE, MASK, "x")]
    cases = [
        ("1x3x100000x100000, JSON", *as_json([1, 3, huge, huge], [1, 1, huge, huge], [0.0], [1.0]), "--max-pixels"),
        ("2^63, empty JSON data", *as_json([1, 3, BIG, 1], [1, 1, BIG, 1], [], []), "--max-pixels"),
        ("2^63, empty binary data", *as_binary(zeros, zeros, [1, 3, BIG, 1], [1, 1, BIG, 1]), "--max-pixels"),
        ("2^64-1 and negative", *as_json([1, 3, 2**64 - 1, -2], [1, 1, 2**64 - 1, -2], [], []), "positive"),
        ("16384^2", *as_binary(zeros, zeros, [1, 3, 16384, 16384], [1, 1, 16384, 16384]), "--max-pixels"),
        ("not a multiple", *as_binary(image[..., :40, :], mask[..., :40, :]), "multiples of 32"),
        ("image and mask sizes differ", *as_binary(image, mask[..., :32, :]), "differ in N, H or W"),
        ("H=W=0", *as_binary(image[..., :0, :0], mask[..., :0, :0]), "positive"),
        ("binary data short", *as_binary(image[..., :32], mask, [1, 3, 64, 64], [1, 1, 64, 64]), "needs 49152 bytes"),
        ("JSON data short", *as_json([1, 3, 32, 32], [1, 1, 32, 32], [0.5] * 7, [1] * 1024), "7 values"),
        ("N > max_batch_size", *as_binary(*(np.repeat(a[..., :32, :32], 5, 0) for a in (image, mask))), "max_batch"),
        ("FP16", *as_json([1, 3, 32, 32], [1, 1, 32, 32], [0] * 3072, [1] * 1024, datatype="FP16"), "must be FP32"),
        ("a third input", json.dumps({"inputs": third}).encode(), {}, "exactly 'image' and 'mask'"),
        ("not JSON", b"\xff{{{", {}, "not valid JSON"),
        ("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, {}, "JSON"),
        ("header past the body", b"{}", {"Inference-Header-Content-Length": "999"}, "Inference-Header-Content-Length"),
        ("a repeated key", *repeated_key(huge), "'inputs' appears twice"),
        ("a repeated shape", *repeated_shape(huge), "'shape' appears twice"),
        ("shared memory", *as_json([1, 3, 32, 32], [1, 1, 32, 32], [0] * 3072, [1] * 1024, **no_shm), "shared-memory"),
    ]
    return cases


VALUE_ATTACKS = [("mask", v, "exactly 0 (hole) or 1 (known)") for v in (0.5, 2.0, -1.0, math.nan, 1e30, math.inf)]
VALUE_ATTACKS += [("image", v, "finite and in [0, 1]") for v in (math.nan, math.inf, -math.inf, 1.5, -0.25)]


def test_shape_attacks_get_one_line_4xx_and_the_server_keeps_serving(attacked):
    server, local = attacked
    for what, body, headers, expected in shape_attacks():
        status, answer, _ = post(server.http, body, headers)
        assert_one_line_refusal(status, answer, expected)
        assert get_status(server.http, "/v2/health/ready") == 200, what
    assert_still_serving(server, local)


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_value_attacks_get_one_line_4xx(attacked, encoding):
    """Non-binary masks and non-finite or out-of-range image values, one value in a hole, are refused."""
    server, local = attacked
    for tensor, value, expected in VALUE_ATTACKS:
        image, mask = good_batch()
        target = mask if tensor == "mask" else image
        target[0, 0, 20, 30] = value  # (20, 30) is in the hole
        if encoding == "binary":
            status, body, _ = post(server.http, *binary_request(image, mask))
        else:
            data = {n: {"shape": list(a.shape), "data": a.ravel().tolist()} for n, a in ((IMAGE, image), (MASK, mask))}
            status, body, _ = post(server.http, json_request(data[IMAGE], data[MASK]))
        message = assert_one_line_refusal(status, body, expected)
        assert "[0, 0, 20, 30]" in message, message
    assert_still_serving(server, local)


def test_grpc_attacks_get_invalid_argument(attacked):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    server, local = attacked
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def request(shapes, raw=None, **typed):
        message = service_pb2.ModelInferRequest(model_name="pconv")
        for name, shape in zip((IMAGE, MASK), shapes):
            tensor = message.inputs.add(name=name, datatype="FP32", shape=shape)
            if name in typed:
                tensor.contents.fp32_contents.extend(typed[name])
        message.raw_input_contents.extend(raw or [])
        return message

    image, mask = good_batch()
    bad_mask = mask.copy()
    bad_mask[0, 0, 0, 0] = 0.5
    cases = [
        (request([[1, 3, 2**62, 2**62], [1, 1, 2**62, 2**62]], [b"", b""]), "--max-pixels"),
        (request([[1, 3, 100_000, 100_000], [1, 1, 100_000, 100_000]]), "--max-pixels"),
        (request([[1, 3, 0, 0], [1, 1, 0, 0]], [b"", b""]), "positive"),
        (request([[1, 3, 40, 64], [1, 1, 40, 64]]), "multiples of 32"),
        (request([[1, 3, 64, 64], [1, 1, 64, 64]], [image.tobytes(), bad_mask.tobytes()]), "exactly 0 (hole) or 1"),
        (request([[1, 3, 64, 64], [1, 1, 64, 64]], [image.tobytes()[:-4], mask.tobytes()]), "needs 49152"),
        (request([[1, 3, 32, 32], [1, 1, 32, 32]], image=[math.nan] * 3072, mask=[1.0] * 1024), "finite"),
    ]
    try:
        for message, expected in cases:
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(message, timeout=60)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
            details = raised.value.details()
            assert expected in details and len(details.splitlines()) == 1, details
        with pytest.raises(grpc.RpcError) as raised:  # not a protobuf message at all
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff\xff", timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ok = stub.ModelInfer(request([[1, 3, 64, 64], [1, 1, 64, 64]], [image.tobytes(), mask.tobytes()]), timeout=60)
        out = np.frombuffer(ok.raw_output_contents[0], "<f4").reshape(1, 3, 64, 64)
        np.testing.assert_allclose(out, local.run(image, mask), atol=1e-4)
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=30).ready
    finally:
        channel.close()
    assert_still_serving(server, local)


def test_control_calls_are_refused_and_the_model_stays_loaded(attacked):
    """Beyond the issue: unloading the model, shared memory, log and trace settings, compressed bodies."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    server, local = attacked
    paths = ["/v2/repository/models/pconv/unload", "/v2/repository/index", "/v2/logging", "/v2/trace/setting"]
    for path in [*paths, "/v2/systemsharedmemory/region/x/register"]:
        status, body, _ = post(server.http, b"{}", path=path)
        assert status == 404 and "not served by pconv serve" in json.loads(body)["error"], (path, status, body)
    image, mask = good_batch()
    body, headers = binary_request(image, mask)
    logged = len(server.log.read_bytes())
    for encoding in ("gzip", "deflate", "br"):  # not compressed at all: the server must not try to decode it
        status, answer, _ = post(server.http, body, {**headers, "Content-Encoding": encoding})
        assert_one_line_refusal(status, answer, "compressed requests are not accepted")
    time.sleep(0.5)  # a body left unread is drained after the answer
    assert b"Traceback" not in server.log.read_bytes()[logged:], server.log.read_text()[-2000:]
    status, answer, _ = post(server.http, body, headers, path="/v2/models/other/infer")
    assert_one_line_refusal(status, answer, "unknown model")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="pconv"), timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()
    assert_still_serving(server, local)


def test_tricklers_on_every_inference_slot_do_not_stop_a_good_request(attacked):
    """Issue 24: a slowloris per inference slot (huge Content-Length, a byte at a time); a good request is
    answered with the right pixels while they still trickle (it waited behind them for 120 s before)."""
    server, local = attacked
    tricklers = [Trickler(server.http, length=100_000_000) for _ in range(INFLIGHT)]
    try:
        time.sleep(1.0)  # each is in the server, its body being read
        image, mask = good_batch(3)
        assert_inpainted(post(server.http, *binary_request(image, mask), timeout=30), image, mask, local)
        assert all(t.answered_at is None for t in tricklers), "a trickler was cut before the good request came back"
    finally:
        for t in tricklers:
            t.close()
    assert_still_serving(server, local)


def test_a_trickler_below_the_minimum_rate_gets_408_in_time(attacked):
    """A body slower than MIN_BODY_RATE is cut once it lags by BODY_FLOOR_SECONDS: one line, connection closed."""
    server, local = attacked
    length = 4096  # the deadline: floor + length / rate, a few seconds
    trickler = Trickler(server.http, length=length, every=0.25, seconds=12)
    try:
        status, headers, body = trickler.status()
    finally:
        trickler.close()
    deadline = BODY_FLOOR_SECONDS + length / MIN_BODY_RATE
    took = trickler.answered_at - trickler.started
    assert_one_line_refusal(status, body, "request body too slow")
    assert status == 408 and headers.get("Connection") == "close", (status, headers)
    assert deadline - 0.5 < took < deadline + 3, took
    assert_still_serving(server, local)


def test_busy_503_when_every_admission_is_taken(attacked):
    """Clients that keep up with MIN_BODY_RATE keep their admissions (bounded: 2 x inflight bodies); one more
    request waits ADMIT_SECONDS, then gets a one-line 503 and its connection closed, rather than queueing."""
    server, local = attacked
    rate = 2 * MIN_BODY_RATE  # 1 MB each half second: kept up with, never cut
    senders = [
        Trickler(server.http, length=60_000_000, every=0.5, chunk=rate // 2, seconds=ADMIT_SECONDS + 8)
        for _ in range(INFLIGHT * ADMITTED_PER_SLOT)
    ]
    try:
        time.sleep(0.5)
        image, mask = good_batch(4)
        start = time.monotonic()
        status, body, headers = post(server.http, *binary_request(image, mask), timeout=30)
        took = time.monotonic() - start
        assert all(s.answered_at is None for s in senders), "a sender was cut while it kept up"
    finally:
        for s in senders:
            s.close()
    message = json.loads(body)["error"]
    assert status == 503 and "busy" in message and len(message.splitlines()) == 1, (status, body[:300])
    assert headers.get("Connection") == "close", headers
    assert ADMIT_SECONDS - 0.5 < took < ADMIT_SECONDS + 3, took
    assert_still_serving(server, local)


def test_grpc_health_answers_while_inference_fills_the_server(attacked):
    """Health, readiness and metadata answer while every inference slot is busy (they were refused: the call
    limit counted them); inference calls beyond what the front admits get one-line RESOURCE_EXHAUSTED."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    server, local = attacked
    image, mask = (np.repeat(a, 4, 0) for a in good_batch(5, size=768))  # ~1 s each, one after the other
    message = service_pb2.ModelInferRequest(model_name="pconv", raw_input_contents=[image.tobytes(), mask.tobytes()])
    for name, array in ((IMAGE, image), (MASK, mask)):
        message.inputs.add(name=name, datatype="FP32", shape=array.shape)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{server.grpc}", options=[(f"grpc.max_{d}_message_length", -1) for d in ("send", "receive")]
    )
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        calls = [stub.ModelInfer.future(message, timeout=120) for _ in range(INFLIGHT * ADMITTED_PER_SLOT + 2)]
        time.sleep(0.3)  # the calls reach the server
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
        assert stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="pconv"), timeout=10).name == "pconv"
        assert sum(not c.done() for c in calls) >= INFLIGHT, "the inference calls ended before the health checks"
        expected, refused = local.run(image, mask), 0
        for call in calls:
            if call.exception() is not None:
                assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, call.exception()
                assert "busy" in call.details() and len(call.details().splitlines()) == 1, call.details()
                refused += 1
                continue
            out = np.frombuffer(call.result().raw_output_contents[0], "<f4").reshape(image.shape)
            np.testing.assert_allclose(out, expected, atol=1e-4)
        assert 1 <= refused <= 2, refused  # the front admits INFLIGHT * ADMITTED_PER_SLOT at once
    finally:
        channel.close()
    assert_still_serving(server, local)


def test_grpc_calls_whose_message_does_not_come_are_cut(serve_env, small_onnx, tmp_path):
    """gRPC says how long a message is only once it came: a call that sends none holds its admission for the
    HTTP deadline of the largest message allowed (small here: --max-pixels 65536), then is cancelled."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    pixels = 65536
    max_body = Limits(multiple=MULTIPLE, max_batch=4, max_pixels=pixels).max_body_bytes
    deadline = BODY_FLOOR_SECONDS + max_body / MIN_BODY_RATE
    image, mask = good_batch(6)
    good = service_pb2.ModelInferRequest(model_name="pconv", raw_input_contents=[image.tobytes(), mask.tobytes()])
    for name, array in ((IMAGE, image), (MASK, mask)):
        good.inputs.add(name=name, datatype="FP32", shape=array.shape)
    done = threading.Event()

    def no_message():
        done.wait(60)  # the client sends nothing until the test ends
        yield from ()

    with serving(small_onnx, tmp_path, 1, "--max-pixels", str(pixels)) as (server,):
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc}")
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            silent = channel.stream_unary("/inference.GRPCInferenceService/ModelInfer")
            held = [silent.future(no_message(), timeout=60) for _ in range(INFLIGHT * ADMITTED_PER_SLOT)]
            start = time.monotonic()
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as raised:  # every admission is held
                stub.ModelInfer(good, timeout=10)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value
            for call in held:
                assert call.exception(timeout=max(deadline + 5 - (time.monotonic() - start), 0.1)) is not None
                assert call.code() == grpc.StatusCode.CANCELLED, call.exception()
            assert deadline - 0.5 < time.monotonic() - start < deadline + 5
            assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
            out = np.frombuffer(stub.ModelInfer(good, timeout=60).raw_output_contents[0], "<f4")
            from pconv_deploy.runtime.backends import load_backend

            local = load_backend(small_onnx, "auto")
            np.testing.assert_allclose(out.reshape(image.shape), local.run(image, mask), atol=1e-4)
        finally:
            done.set()
            channel.close()
