"""The request checks of `pconv serve` (pconv_deploy.serving.checks) without a server: fast, exact cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pconv_deploy.serving.checks import BadRequest, Limits, check_grpc_infer, check_http_infer, check_shapes

LIMITS = Limits(multiple=32, max_batch=4, max_pixels=64 * 64 * 2)


def json_body(image: object, mask: object, **extra: object) -> bytes:
    inputs = [
        {"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": image},
        {"name": "mask", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": mask},
    ]
    return json.dumps({"inputs": inputs, **extra}).encode()


def test_good_json_is_passed_on_as_checked():
    body = json_body([[0.25] * 1024] * 3, [1] * 1024, outputs=[{"name": "inpainted"}])
    forwarded, header_length = check_http_infer(body, None, LIMITS)
    assert header_length is None and json.loads(forwarded) == json.loads(body)


def test_good_binary_request_keeps_its_tensors_byte_for_byte():
    image = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    mask = np.ones((1, 1, 32, 32), np.float32)
    inputs = [
        {"name": n, "datatype": "FP32", "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
        for n, a in (("image", image), ("mask", mask))
    ]
    header = json.dumps({"inputs": inputs}, indent=2).encode()  # indented: the re-written header is shorter
    forwarded, length = check_http_infer(header + image.tobytes() + mask.tobytes(), len(header), LIMITS)
    assert json.loads(forwarded[:length]) == json.loads(header) and length < len(header)
    assert forwarded[length:] == image.tobytes() + mask.tobytes()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (json_body([0.5] * 3072, [1] * 1023 + [True]), "numbers only"),  # true is not 1 here
        (json_body([0.5] * 3072, [1] * 1023 + ["1"]), "numbers only"),
        (json_body([0.5] * 3072, [1] * 1023 + [None]), "numbers only"),
        (json_body([0.5] * 3072, [1] * 1023 + [[[[[[[[1]]]]]]]]), "nested at most"),
        (json_body([0.5] * 3072, [1] * 1023 + [10**400]), "exactly 0 (hole) or 1"),
        (json_body([0.5] * 3072, [1] * 1023 + [1e39]), "exactly 0 (hole) or 1"),  # inf in float32
        (json_body([0.5] * 3071 + [1e39], [1] * 1024), "finite and in [0, 1]"),
        (json_body([0.5] * 3072, [1] * 1024, parameters={"x": float("nan")}), "not a finite number"),
        (json_body([0.5] * 3072, [1] * 1024, extra=1), "unknown request field"),
        (b'{"inputs": [], "inputs": []}', "'inputs' appears twice"),
        (json.dumps({"inputs": []}).encode("utf-16"), "not valid JSON (UTF-8)"),
    ],
)
def test_json_refusals(body, expected):
    with pytest.raises(BadRequest, match=expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_http_infer(body, None, LIMITS)


def test_shapes_are_checked_with_python_integers():
    def shapes(image, mask):
        return check_shapes({"image": image, "mask": mask}, LIMITS)

    assert shapes([2, 3, 64, 64], [2, 1, 64, 64]) == {"image": (2, 3, 64, 64), "mask": (2, 1, 64, 64)}
    for image, mask, expected in [
        ([1, 3, 2**63, 2**63], [1, 1, 2**63, 2**63], "--max-pixels"),  # 2^126 pixels, no wrap-around
        ([2**64 + 1, 3, 32, 32], [2**64 + 1, 1, 32, 32], "batch size"),
        ([1, 3, 64, 64], [1, 1, 64, 32], "differ"),
        ([1, 3, 32.0, 32], [1, 1, 32, 32], "4 integers"),
        ([1, 3, True, 32], [1, 1, 1, 32], "4 integers"),
        ([1, 1, 32, 32], [1, 1, 32, 32], "shape must be"),
        ([3, 3, 64, 64], [3, 1, 64, 64], "--max-pixels"),
        ([1, 3, 96, 33], [1, 1, 96, 33], "multiples of 32"),
    ]:
        with pytest.raises(BadRequest, match=expected):
            shapes(image, mask)


def test_grpc_requests():
    from tritonclient.grpc import service_pb2

    def request(raw: list[bytes] | None = None, **typed: list[float]) -> object:
        message = service_pb2.ModelInferRequest(model_name="pconv")
        for name, channels in (("image", 3), ("mask", 1)):
            tensor = message.inputs.add(name=name, datatype="FP32", shape=[1, channels, 32, 32])
            tensor.contents.fp32_contents.extend(typed.get(name, []))
        message.raw_input_contents.extend(raw or [])
        return message

    image, mask = np.full((1, 3, 32, 32), 0.5, np.float32), np.ones((1, 1, 32, 32), np.float32)
    check_grpc_infer(request([image.tobytes(), mask.tobytes()]), LIMITS)
    check_grpc_infer(request(image=[0.5] * 3072, mask=[1.0] * 1024), LIMITS)
    with pytest.raises(BadRequest, match="both raw_input_contents and contents"):
        check_grpc_infer(request([image.tobytes(), mask.tobytes()], image=[0.5] * 3072), LIMITS)
    with pytest.raises(BadRequest, match="raw_input_contents has 1 entries for 2 inputs"):
        check_grpc_infer(request([image.tobytes()]), LIMITS)
    with pytest.raises(BadRequest, match="mask value 0.5"):
        check_grpc_infer(request(image=[0.5] * 3072, mask=[0.5] * 1024), LIMITS)
    shm = request([image.tobytes(), mask.tobytes()])
    shm.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(BadRequest, match="shared-memory parameters are not accepted"):
        check_grpc_infer(shm, LIMITS)
