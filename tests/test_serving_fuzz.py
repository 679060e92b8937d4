"""A bounded, seeded fuzz of `pconv serve` on loopback (issue 21): 1,200 malformed requests over HTTP (JSON
and binary tensors, raw bodies) and gRPC, then the server still answers a good request with the local
ONNX Runtime's pixels, and the memory of its process tree stayed within a stated bound."""

from __future__ import annotations

import http.client
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from helpers.serving import assert_still_serving, binary_request, good_batch, json_request, serving

from pconv_deploy.contract import IMAGE, MASK

SEED = 21
REQUESTS = 1200
GROWTH_BOUND = 128 * 2**20  # the server tree's RSS may grow at most this much over its warmed-up size
DIMS = [0, 1, 2, 3, 31, 32, 33, 64, 96, 4096, 16384, 100_000, 2**31, 2**32 + 32, 2**62, 2**63 - 1, 2**63, -1, -(2**63)]
DATATYPES = ["FP32", "FP16", "FP64", "INT64", "BYTES", "BOOL", "fp32", "", None, 7]
VALUES = [0.0, 1.0, 0.5, -1.0, 2.0, math.nan, math.inf, -math.inf, 1e30, -0.0, 1e-45, True, "1", None, [], {}]


def rss_of_tree(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def random_shape(rng: np.random.Generator, channels: int) -> list:
    if rng.random() < 0.15:
        return [int(rng.choice(DIMS)) for _ in range(int(rng.integers(0, 7)))]
    small = rng.random() < 0.5
    pick = (lambda: int(rng.choice([32, 64]))) if small else (lambda: int(rng.choice(DIMS)))
    return [int(rng.choice([1, 1, 2, 9, 0])), channels if rng.random() < 0.9 else 2, pick(), pick()]


def random_data(rng: np.random.Generator, shape: list) -> object:
    count = int(np.prod([max(d, 0) for d in shape])) if shape and all(0 <= d < 5000 for d in shape) else 4
    count = min(count, 20_000)
    if rng.random() < 0.3:
        count = int(rng.integers(0, count + 3))
    kind = rng.random()
    if kind < 0.6:
        values = rng.random(count).round(3).tolist()
    elif kind < 0.8:
        values = rng.integers(0, 2, count).astype(float).tolist()
    else:
        values = [VALUES[int(i)] for i in rng.integers(0, len(VALUES), count)]
    if count and rng.random() < 0.3:  # one hostile value in otherwise good data
        values[int(rng.integers(0, count))] = VALUES[int(rng.integers(0, len(VALUES)))]
    return [values] if rng.random() < 0.1 else values


def json_case(rng: np.random.Generator) -> tuple[bytes, dict]:
    inputs = []
    for name, channels in ((IMAGE, 3), (MASK, 1)):
        shape = random_shape(rng, channels)
        tensor = {
            "name": name if rng.random() < 0.9 else str(rng.choice(["x", "", "IMAGE", "mask "])),
            "datatype": DATATYPES[0] if rng.random() < 0.8 else DATATYPES[int(rng.integers(len(DATATYPES)))],
            "shape": shape,
            "data": random_data(rng, shape),
        }
        if rng.random() < 0.05:
            tensor["parameters"] = {"shared_memory_region": "x", "binary_data_size": int(rng.choice(DIMS))}
        inputs.append(tensor)
    if rng.random() < 0.1:
        inputs.append(dict(inputs[0]))
    request = {"inputs": inputs if rng.random() < 0.95 else inputs[0]}
    if rng.random() < 0.1:
        request["outputs"] = [{"name": str(rng.choice(["inpainted", "x"])), "parameters": {"classification": 3}}]
    body = json.dumps(request).encode()
    if rng.random() < 0.05:  # a repeated key: the two JSON parsers would disagree on which value counts
        body = b'{"inputs":' + json.dumps(inputs).encode() + b"," + body[1:]
    if rng.random() < 0.1:
        body = body[: int(rng.integers(0, len(body)))]  # truncated
    return body, {}


def binary_case(rng: np.random.Generator) -> tuple[bytes, dict]:
    shapes = (random_shape(rng, 3), random_shape(rng, 1))
    image = rng.random(int(rng.integers(0, 3 * 64 * 64 + 1)), dtype=np.float32)
    mask = rng.integers(0, 2, int(rng.integers(0, 64 * 64 + 1))).astype(np.float32)
    if rng.random() < 0.3:
        mask[: int(rng.integers(0, 4))] = rng.choice([0.5, np.nan, 2.0, -1.0])
    body, headers = binary_request(image, mask, shapes)
    roll = rng.random()
    if roll < 0.1:
        headers["Inference-Header-Content-Length"] = str(rng.choice(["-5", "0", "x", str(len(body) + 1), "1e3", ""]))
    elif roll < 0.2:
        body = body[: int(rng.integers(0, len(body) + 1))]
    elif roll < 0.25:
        body += rng.bytes(int(rng.integers(1, 100)))
    return body, headers


def near_valid_case(rng: np.random.Generator) -> tuple[bytes, dict]:
    """A good 32x32 request with one thing changed (or none): the cases closest to passing."""
    image, mask = good_batch(int(rng.integers(1000)), 32)
    change = int(rng.integers(6))
    if change == 1:
        (image if rng.random() < 0.5 else mask).flat[int(rng.integers(1024))] = rng.choice(VALUES[:11])
    elif change == 2:
        image, mask = image[..., :31, :], mask[..., :31, :]
    elif change == 3:
        mask = mask[..., :, :16]
    if rng.random() < 0.5:
        return binary_request(image, mask)
    data = {n: {"shape": list(a.shape), "data": a.ravel().tolist()} for n, a in ((IMAGE, image), (MASK, mask))}
    return json_request(data[IMAGE], data[MASK]), {}


def raw_case(rng: np.random.Generator) -> tuple[bytes, dict]:
    body = rng.bytes(int(rng.integers(0, 2048)))
    headers = {"Inference-Header-Content-Length": str(int(rng.integers(-10, 3000)))} if rng.random() < 0.5 else {}
    return body, headers


def grpc_case(rng: np.random.Generator) -> object:
    from tritonclient.grpc import service_pb2

    if rng.random() < 0.15:
        return rng.bytes(int(rng.integers(0, 512)))
    message = service_pb2.ModelInferRequest(model_name="pconv" if rng.random() < 0.95 else "other")
    raw = rng.random() < 0.7
    for name, channels in ((IMAGE, 3), (MASK, 1)):
        shape = [max(-(2**63), min(d, 2**63 - 1)) for d in random_shape(rng, channels)]
        tensor = message.inputs.add(name=name, datatype="FP32" if rng.random() < 0.9 else "FP16", shape=shape)
        count = int(rng.integers(0, 5000))
        if raw:
            message.raw_input_contents.append(
                rng.random(count, dtype=np.float32).tobytes()[: count * 4 - int(rng.random() < 0.5)]
            )
        else:
            tensor.contents.fp32_contents.extend(rng.choice([0.0, 1.0, 0.5, np.nan], count).tolist())
    return message.SerializeToString()


def send_http(port: int, case: tuple[bytes, dict]) -> tuple[int, bytes]:
    body, headers = case
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/v2/models/pconv/infer", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def send_grpc(channel: object, message: bytes) -> tuple[int, str]:
    import grpc

    try:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(message, timeout=60)
        return 0, ""
    except grpc.RpcError as e:
        return e.code().value[0], e.details() or ""


def test_fuzzed_requests_leave_the_server_serving_with_bounded_memory(serve_env, small_onnx, tmp_path):  # noqa: F811
    import grpc

    from pconv_deploy.runtime.backends import load_backend

    local = load_backend(small_onnx, "auto")
    rng = np.random.default_rng(SEED)
    makers = [json_case] * 3 + [binary_case] * 3 + [near_valid_case] * 2 + [raw_case]
    with serving(small_onnx, tmp_path) as (server,):
        assert_still_serving(server, local)  # warmed up: the baseline includes one inference
        baseline = peak = rss_of_tree(server.proc.pid)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc}")
        started, answers, accepted = time.monotonic(), [], 0
        try:
            with ThreadPoolExecutor(4) as pool:
                for _ in range(0, REQUESTS, 100):
                    http_cases = [makers[int(rng.integers(len(makers)))](rng) for _ in range(80)]
                    grpc_cases = [grpc_case(rng) for _ in range(20)]
                    answers += list(pool.map(lambda c: ("http", *send_http(server.http, c)), http_cases))
                    answers += list(pool.map(lambda m: ("grpc", *send_grpc(channel, m)), grpc_cases))
                    peak = max(peak, rss_of_tree(server.proc.pid))
        finally:
            channel.close()
        seconds = time.monotonic() - started
        for protocol, status, body in answers:
            if protocol == "http" and status == 200:
                accepted += 1
                continue
            if protocol == "http":
                assert 400 <= status < 500, (status, body[:300])
                message = json.loads(body)["error"]
            else:
                assert status in (3, 5, 8), (status, body)  # INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED
                message = body
            assert message and len(message.splitlines()) == 1 and "Traceback" not in message, message
            assert ".py" not in message and "/tmp/" not in message, message
        assert len(answers) >= 1000
        assert_still_serving(server, local)
        peak = max(peak, rss_of_tree(server.proc.pid))
        print(
            f"fuzz: {len(answers)} requests in {seconds:.1f} s, {accepted} valid; RSS {baseline / 2**20:.0f} MiB "
            f"-> peak {peak / 2**20:.0f} MiB (bound +{GROWTH_BOUND / 2**20:.0f} MiB)"
        )
        assert peak - baseline <= GROWTH_BOUND, (baseline, peak)
