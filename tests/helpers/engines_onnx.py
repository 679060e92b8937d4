"""A tiny ONNX file honouring the model contract, for the engine tests (no torch, no export: milliseconds).

``inpainted = image * mask + 0.5 * (1 - mask)``: the contract's names, dtypes and dynamic
dims, and the pconv.* metadata an export carries, without a network.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def contract_metadata(layers: int = 5, precision: str = "fp32", **overrides: str) -> dict[str, str]:
    metadata = {
        "pconv.format": "1",
        "pconv.layers": str(layers),
        "pconv.width": "0.125",
        "pconv.multiple": str(2**layers),
        "pconv.input_norm": "imagenet",
        "pconv.mask_convention": "1=known,0=hole",
        "pconv.precision": precision,
        "pconv.checkpoint_sha256": "ab" * 32,
        "pconv.producer": "pconv-deploy tests",
    }
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


def write_contract_onnx(
    path: Path,
    metadata: dict[str, str] | None = None,
    input_names: tuple[str, str] = ("image", "mask"),
    output_name: str = "inpainted",
) -> Path:
    image, mask = input_names
    dims = ["batch", "h", "w"]

    def value(name: str, channels: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [dims[0], channels, dims[1], dims[2]])

    nodes = [
        helper.make_node("Mul", [image, mask], ["known"]),
        helper.make_node("Sub", ["one", mask], ["hole"]),
        helper.make_node("Mul", ["hole", "half"], ["fill"]),
        helper.make_node("Add", ["known", "fill"], [output_name]),
    ]
    inits = [
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
    ]
    graph = helper.make_graph(nodes, "contract", [value(image, 3), value(mask, 1)], [value(output_name, 3)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, contract_metadata() if metadata is None else metadata)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_valid_sidecar(engine: Path, onnx_path: Path) -> None:
    """The sidecar build-engine writes (the fallback validates it: same folder, same sha256)."""
    from pconv_deploy.contract import file_sha256
    from pconv_deploy.engines.profiles import default_profiles
    from pconv_deploy.engines.sidecar import Sidecar

    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    Sidecar.new(
        onnx_path=onnx_path,
        onnx_sha256=file_sha256(onnx_path),
        engine_path=engine,
        metadata=meta,
        profiles=default_profiles(int(meta["pconv.multiple"])),
        tensorrt_version="10.9.0.34",
        gpu_name="NVIDIA L4",
        compute_capability="8.9",
        version_compatible=False,
    ).write(engine)
