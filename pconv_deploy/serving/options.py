"""The options of `pconv serve` and `pconv triton-repo`: one frozen dataclass each, validated once.

Each default and bound is spelled here only: the typer commands take their defaults from these
classes, the Python API accepts them, and :class:`ServeOptions` is what crosses the process boundary
to the server (JSON on its command line, read back by :func:`ServeOptions.from_json`). Standard library
only: the launcher and the CLI import this in the main environment, the server in the serve one.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from pconv_deploy.contract import DEFAULT_MODEL_NAME, ENGINE_SUFFIXES, ONNX_SUFFIX
from pconv_deploy.errors import PConvError

SAFE_NAME = r"[A-Za-z0-9_.-]+"  # model names and parameter keys: nothing to escape in a config, a path or a URL
MAX_NAME_CHARS = 64  # leaves room for the staging folder's temp suffix under the 255-byte file name limit
KIND_GPU, KIND_CPU = "KIND_GPU", "KIND_CPU"  # Triton's instance_group kinds
INSTANCE_KINDS = (KIND_GPU, KIND_CPU)
PORT_RANGE = (1, 65535)
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's own defaults (clients assume them too)
# Largest N*H*W of one request: 16 MP (4 x 2048^2, 16 x 1024^2) is 256 MiB of float32 image + mask and already
# gigabytes of activations in the network; `pconv infer --server` sends batch x max-side^2 (4 x 1024^2 by default).
MAX_PIXELS = 16 * 1024 * 1024
QUEUE_DELAY_US = 2000  # how long Triton's dynamic batcher waits for more requests (served and repository alike)


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """The dynamic batcher's preferred sizes: half the largest batch and the largest (served and repository alike)."""
    return sorted({b for b in (max_batch_size // 2, max_batch_size) if b >= 1})


def check_name(name: str, flag: str = "--name") -> str:
    """A model name Triton, a folder and a config all take as is: [A-Za-z0-9_.-], 1-64 characters, no leading dot."""
    text = name if isinstance(name, str) else ""  # from JSON: anything; never a name unless a string
    if not re.fullmatch(SAFE_NAME, text) or text.startswith(".") or len(text) > MAX_NAME_CHARS:
        shown = str(name) if len(str(name)) <= 80 else f"{str(name)[:80]}..."
        raise PConvError(
            f"{flag} {shown!r}: a model name is 1-{MAX_NAME_CHARS} characters of A-Z a-z 0-9 _ . - (no leading dot)"
        )
    return name


def check_at_least(values: dict[str, int], low: int = 1, high: int | None = None) -> None:
    """Each ``--flag value`` an integer in [low, high] (booleans are not integers here), else one line."""
    for flag, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            bound = f"{low} to {high}" if high is not None else f"at least {low}"
            raise PConvError(f"{flag} {value!r}: must be an integer {bound}")


def check_model_suffix(model: Path) -> None:
    """Serve and triton-repo take an exported model; a checkpoint gets the command that makes one."""
    if model.suffix.lower() not in (ONNX_SUFFIX, *ENGINE_SUFFIXES):
        raise PConvError(
            f"--model {model}: pconv serve serves an exported model ({ONNX_SUFFIX}, or an engine "
            f"{'/'.join(ENGINE_SUFFIXES)}); "
            f"for a checkpoint run `pconv export --checkpoint {model} --output model.onnx` first"
        )


def field_defaults(options: type) -> dict[str, Any]:
    """``{field: default}`` of an options class: where the typer commands take their defaults from."""
    return {f.name: f.default for f in dataclasses.fields(options) if f.default is not dataclasses.MISSING}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """What `pconv serve` runs: the model, where it listens, how it batches, what one request may hold."""

    model: Path
    name: str = DEFAULT_MODEL_NAME
    host: str = "127.0.0.1"
    http_port: int = DEFAULT_PORTS["http"]
    grpc_port: int = DEFAULT_PORTS["grpc"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    max_batch_size: int = 8
    queue_delay_us: int = QUEUE_DELAY_US
    instances: int = 1
    max_pixels: int = MAX_PIXELS  # N*H*W of one request
    start_seconds: float = 300.0  # how long the model may take to get ready after tritonserver started

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        check_model_suffix(self.model)
        check_name(self.name)
        if not isinstance(self.host, str) or not self.host:
            raise PConvError(f"--host {self.host!r}: must be an address to bind, e.g. 127.0.0.1")
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        check_at_least(ports, *PORT_RANGE)
        if len(set(ports.values())) < len(ports):
            raise PConvError(f"--http-port, --grpc-port and --metrics-port must differ, got {sorted(ports.values())}")
        check_at_least(
            {"--max-batch-size": self.max_batch_size, "--instances": self.instances, "--max-pixels": self.max_pixels}
        )
        check_at_least({"queue_delay_us": self.queue_delay_us}, low=0)
        if not isinstance(self.start_seconds, int | float) or not self.start_seconds > 0:
            raise PConvError(f"start_seconds {self.start_seconds!r}: must be a positive number of seconds")

    def to_json(self) -> str:
        """The options as the server process gets them (the model as an absolute path: it may run elsewhere)."""
        fields = dataclasses.asdict(self)
        fields["model"] = str(self.model.resolve())
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        """Read back what :meth:`to_json` wrote; anything else is one line (unknown fields named)."""
        try:
            fields = json.loads(text)
        except ValueError as e:
            raise PConvError(f"serve options: not JSON ({e})") from None
        if not isinstance(fields, dict):
            raise PConvError("serve options: expected a JSON object")
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown or "model" not in fields:
            raise PConvError(f"serve options: unknown fields {unknown}" if unknown else "serve options: no model")
        return cls(**fields)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RepositoryOptions:
    """What `pconv triton-repo` writes: ``repo/name/version/`` with the model and its ``config.pbtxt``."""

    model: Path
    repo: Path
    name: str = DEFAULT_MODEL_NAME
    version: int = 1
    max_batch_size: int = 8
    instances: int = 1
    kind: str = KIND_GPU
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "repo", Path(self.repo))
        check_name(self.name)
        if self.kind not in INSTANCE_KINDS:
            raise PConvError(f"invalid instance kind {self.kind!r}: {' or '.join(INSTANCE_KINDS)}")
        check_at_least(
            {"--version": self.version, "--max-batch-size": self.max_batch_size, "--instances": self.instances}
        )
