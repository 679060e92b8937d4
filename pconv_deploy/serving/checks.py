"""Every inference request checked against the model contract before tritonserver sees it (``pconv serve``).

Tritonserver allocates what a request declares before it compares the data with it: a JSON request of
a few KB declaring ``1x3x100000x100000`` aborts it (``std::bad_alloc``), and a dimension of 2^63 with
empty data kills the Python stub. So the fronts (:mod:`pconv_deploy.serving.fronts`) parse each request
here first, from what arrived (bounded by the body limit), and only a request that passes reaches
Triton. Numpy only: the checks run in the serve environment and in the tests alike.

The checks, in order, each a one-line :class:`BadRequest`: the request's structure (names ``image`` and
``mask`` only, datatype FP32, 4-D shapes, no shared-memory parameters), the shapes (N from 1 to the
model's ``max_batch_size``, equal N, H, W for image and mask, H and W positive multiples of
``pconv.multiple``, N*H*W at most ``--max-pixels``), the data length equal to the shape, then the values
(image finite and in [0, 1], mask exactly 0 or 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pconv_deploy.contract import CHANNELS, IMAGE, INPUT_NAMES, MASK, OUTPUT

DATATYPE = "FP32"  # the KServe v2 name of float32, the only input type of the contract
FLOAT_BYTES = 4
MAX_HEADER_BYTES = 64 * 1024  # the JSON part of a binary-data request: two small tensor descriptions
MAX_JSON_BYTES = 16 * 1024 * 1024  # a request with the data in JSON (fine for a test; binary for real traffic)
JSON_DEPTH = 6  # nesting of a JSON "data" array (Triton accepts nested rows)
SHARED_MEMORY = "shared_memory"  # parameter prefix of Triton's shared-memory extension: never from outside


class BadRequest(Exception):
    """A request that breaks the contract: the message is the one line the client gets (HTTP 400)."""


@dataclass(frozen=True)
class Limits:
    """What one request may declare."""

    multiple: int  # pconv.multiple
    max_batch: int  # the served model's max_batch_size
    max_pixels: int  # N * H * W of one request

    @property
    def max_body_bytes(self) -> int:
        """The largest binary request: float32 image (3 channels) and mask (1) per pixel, plus the header."""
        return (CHANNELS[IMAGE] + CHANNELS[MASK]) * FLOAT_BYTES * self.max_pixels + MAX_HEADER_BYTES


def plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_shapes(shapes: dict[str, object], limits: Limits) -> dict[str, tuple[int, int, int, int]]:
    """The declared shapes, checked with Python integers (no overflow); returns them as 4-tuples."""
    checked = {}
    for name in INPUT_NAMES:
        shape = shapes[name]
        if not isinstance(shape, list | tuple) or len(shape) != 4 or not all(plain_int(d) for d in shape):
            raise BadRequest(f"{name}: shape must be 4 integers [N,{CHANNELS[name]},H,W], got {short(shape)}")
        if shape[1] != CHANNELS[name]:
            raise BadRequest(f"{name}: shape must be [N,{CHANNELS[name]},H,W], got {short(shape)}")
        checked[name] = tuple(shape)
    (n, _, h, w), (mn, _, mh, mw) = checked[IMAGE], checked[MASK]
    if (n, h, w) != (mn, mh, mw):
        raise BadRequest(f"{IMAGE} {list(checked[IMAGE])} and {MASK} {list(checked[MASK])} differ in N, H or W")
    if not 1 <= n <= limits.max_batch:
        raise BadRequest(f"batch size N={short(n)}: must be 1 to {limits.max_batch} (the model's max_batch_size)")
    if h < 1 or w < 1:
        raise BadRequest(f"H and W must be positive, got {short(h)}x{short(w)}")
    if n * h * w > limits.max_pixels:
        raise BadRequest(
            f"{short(n)}x{short(h)}x{short(w)} = {short(n * h * w)} pixels (N*H*W): more than this server's "
            f"--max-pixels {limits.max_pixels}"
        )
    if h % limits.multiple or w % limits.multiple:
        m = limits.multiple
        raise BadRequest(
            f"H and W must be multiples of {m} (pconv.multiple), got {h}x{w}: pad first (docs/contract.md)"
        )
    return checked


def check_values(image: np.ndarray, mask: np.ndarray) -> None:
    """Image values finite and in [0, 1] (a NaN in a hole spreads over the whole output), mask exactly 0 or 1."""
    good = (image >= 0) & (image <= 1)  # False for NaN and infinities too
    if not good.all():
        where = np.unravel_index(int(np.argmin(good)), image.shape)
        value = float(image[where])  # a Python float: the same text under numpy 1 and 2
        raise BadRequest(f"{IMAGE} value {value!r} at {list(map(int, where))}: must be finite and in [0, 1]")
    binary = (mask == 0) | (mask == 1)
    if not binary.all():
        where = np.unravel_index(int(np.argmin(binary)), mask.shape)
        raise BadRequest(
            f"{MASK} value {float(mask[where])!r} at {list(map(int, where))}: must be exactly 0 (hole) or 1 (known)"
        )


def short(value: object, limit: int = 60) -> str:
    """``repr`` cut to one short line, for values a client sent."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else f"{text[:limit]}..."


def check_parameters(parameters: object, where: str, allowed: Iterable[str] | None = None) -> dict:
    """A ``parameters`` object: a dict of scalars, no shared-memory keys (and only ``allowed`` keys if given)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}: parameters must be an object")
    for key, value in parameters.items():
        if key.startswith(SHARED_MEMORY):
            raise BadRequest(f"{where}: shared-memory parameters are not accepted by pconv serve")
        if allowed is not None and key not in allowed:
            raise BadRequest(f"{where}: unknown parameter {short(key)}")
        if not isinstance(value, str | int | float | bool):
            raise BadRequest(f"{where}: parameter {short(key)} must be a string, number or boolean")
    return parameters


def check_outputs(outputs: object, allowed: Iterable[str]) -> None:
    """Requested outputs: only ``inpainted``, with only ``allowed`` parameters (no classification, no shm)."""
    if outputs is None:
        return
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise BadRequest(f"outputs must be a list with at most the one output {OUTPUT!r}")
    for output in outputs:
        if not isinstance(output, dict) or output.get("name") != OUTPUT:
            raise BadRequest(f"the only output is {OUTPUT!r}")
        check_parameters(output.get("parameters"), f"output {OUTPUT}", allowed)
        if set(output) - {"name", "parameters"}:
            raise BadRequest(f"output {OUTPUT}: unknown field {short(sorted(set(output) - {'name', 'parameters'}))}")


def by_name(inputs: object) -> dict[str, dict]:
    """The two inputs of a JSON request by name: exactly ``image`` and ``mask``, FP32."""
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise BadRequest("inputs must be a list of objects")
    names = [i.get("name") for i in inputs]
    if sorted(map(str, names)) != sorted(INPUT_NAMES) or len(names) != len(INPUT_NAMES):
        raise BadRequest(f"inputs must be exactly {IMAGE!r} and {MASK!r}, got {short(names)}")
    for tensor in inputs:
        if tensor.get("datatype") != DATATYPE:
            raise BadRequest(f"{tensor['name']}: datatype must be {DATATYPE}, got {short(tensor.get('datatype'))}")
        extra = set(tensor) - {"name", "datatype", "shape", "data", "parameters"}
        if extra:
            raise BadRequest(f"{tensor['name']}: unknown field {short(sorted(extra))}")
    return {i["name"]: i for i in inputs}


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are all different: with a repeated key Python keeps the last value and
    tritonserver's RapidJSON the first, so one request would be checked and another one run."""
    value = dict(pairs)
    if len(value) != len(pairs):
        repeated = next(k for k in value if sum(1 for key, _ in pairs if key == k) > 1)
        raise BadRequest(f"the key {short(repeated)} appears twice in one JSON object")
    return value


def parse_json(data: bytes | memoryview, what: str) -> dict:
    try:
        value = json.loads(bytes(data).decode("utf-8"), object_pairs_hook=unique_keys)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"{what} is not valid JSON (UTF-8)") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def flatten(data: object, count: int, name: str) -> np.ndarray:
    """A JSON ``data`` array (flat or nested, numbers only) as float32, of exactly ``count`` values."""
    values: list = []
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, list) or depth > JSON_DEPTH:
            raise BadRequest(f"{name}: data must be an array of numbers (nested at most {JSON_DEPTH} deep)")
        for value in reversed(item):
            if isinstance(value, list):
                stack.append((value, depth + 1))
            elif isinstance(value, float) or plain_int(value):
                values.append(value)
            else:
                raise BadRequest(f"{name}: data must hold numbers only, found {short(value)}")
            if len(values) > count:
                raise BadRequest(f"{name}: data has more than the {count} values its shape declares")
    if len(values) != count:
        raise BadRequest(f"{name}: data has {len(values)} values, its shape declares {count}")
    values.reverse()
    with np.errstate(over="ignore"):  # 1e39 becomes inf in float32, as in Triton: check_values refuses it
        try:
            return np.asarray(values, dtype=np.float32)
        except OverflowError:  # an integer beyond float range
            return np.full(count, np.inf, np.float32)


def check_http_infer(body: bytes, header_length: int | None, limits: Limits) -> tuple[bytes, int | None]:
    """A KServe v2 HTTP infer request: JSON (``header_length`` None) or JSON header + binary tensors.

    Returns what to pass on: the JSON re-written from what was checked (so tritonserver's parser sees
    exactly that), then the binary tensors unchanged, and the new header length.
    """
    if header_length is None:
        if len(body) > MAX_JSON_BYTES:
            raise BadRequest(f"JSON request of {len(body)} bytes: at most {MAX_JSON_BYTES}; send binary tensors")
        header, binary = parse_json(body, "the request"), memoryview(b"")
    else:
        if not 0 < header_length <= min(len(body), MAX_HEADER_BYTES):
            raise BadRequest(f"Inference-Header-Content-Length {header_length}: must be 1 to min(body, 64 KiB)")
        view = memoryview(body)
        header, binary = parse_json(view[:header_length], "the request header"), view[header_length:]
    if set(header) - {"id", "inputs", "outputs", "parameters"}:
        raise BadRequest(
            f"unknown request field {short(sorted(set(header) - {'id', 'inputs', 'outputs', 'parameters'}))}"
        )
    check_parameters(header.get("parameters"), "request")
    check_outputs(header.get("outputs"), ("binary_data",))
    inputs = by_name(header.get("inputs"))
    shapes = check_shapes({n: inputs[n].get("shape") for n in INPUT_NAMES}, limits)
    arrays, offset = {}, 0
    for tensor in header["inputs"]:  # binary tensors follow the header in the order of "inputs"
        name = tensor["name"]
        count = int(np.prod(shapes[name]))
        size = check_parameters(tensor.get("parameters"), name, ("binary_data_size",)).get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise BadRequest(f"{name}: no data and no binary_data_size")
            arrays[name] = flatten(tensor["data"], count, name).reshape(shapes[name])
            continue
        if "data" in tensor or not plain_int(size) or size != count * FLOAT_BYTES:
            raise BadRequest(f"{name}: binary_data_size {short(size)}, its shape needs {count * FLOAT_BYTES} bytes")
        if offset + size > len(binary):
            raise BadRequest(f"{name}: the body ends {offset + size - len(binary)} bytes short of its binary data")
        arrays[name] = np.frombuffer(binary, "<f4", count, offset).reshape(shapes[name])
        offset += size
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary) - offset} bytes beyond the declared binary data")
    check_values(arrays[IMAGE], arrays[MASK])
    try:
        checked = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # a NaN or infinity in a parameter
        raise BadRequest("a parameter of the request is not a finite number") from None
    if header_length is None:
        return checked, None
    return b"".join((checked, binary)), len(checked)


def check_grpc_infer(request: object, limits: Limits) -> None:
    """A KServe v2 gRPC ``ModelInferRequest`` (Triton's protobuf message), the same checks."""
    names = [t.name for t in request.inputs]
    if sorted(names) != sorted(INPUT_NAMES):
        raise BadRequest(f"inputs must be exactly {IMAGE!r} and {MASK!r}, got {short(names)}")
    for tensor in request.inputs:
        if tensor.datatype != DATATYPE:
            raise BadRequest(f"{tensor.name}: datatype must be {DATATYPE}, got {short(tensor.datatype)}")
        check_parameters(grpc_parameters(tensor.parameters), tensor.name, ())
    check_parameters(grpc_parameters(request.parameters), "request")
    check_outputs([{"name": o.name, "parameters": grpc_parameters(o.parameters)} for o in request.outputs], ())
    shapes = check_shapes({t.name: [int(d) for d in t.shape] for t in request.inputs}, limits)
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(names):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(names)} inputs")
    arrays = {}
    for i, tensor in enumerate(request.inputs):
        count = int(np.prod(shapes[tensor.name]))
        typed = [f.name for f, _ in tensor.contents.ListFields()]
        if raw:
            if typed:
                raise BadRequest(f"{tensor.name}: both raw_input_contents and contents")
            if len(raw[i]) != count * FLOAT_BYTES:
                raise BadRequest(f"{tensor.name}: {len(raw[i])} bytes of data, its shape needs {count * FLOAT_BYTES}")
            arrays[tensor.name] = np.frombuffer(raw[i], "<f4").reshape(shapes[tensor.name])
        else:
            if typed not in ([], ["fp32_contents"]) or len(tensor.contents.fp32_contents) != count:
                got = f"{len(tensor.contents.fp32_contents)} fp32_contents" if typed == ["fp32_contents"] else typed
                raise BadRequest(f"{tensor.name}: data {short(got)}, its shape declares {count} FP32 values")
            arrays[tensor.name] = np.asarray(tensor.contents.fp32_contents, np.float32).reshape(shapes[tensor.name])
    check_values(arrays[IMAGE], arrays[MASK])


def grpc_parameters(parameters: object) -> dict:
    """A protobuf ``map<string, InferParameter>`` as a plain dict of its set values."""
    out = {}
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else ""
    return out
