"""`pconv triton-repo`, `serve` and `app`: the model behind Triton, or behind a page in the browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pconv_deploy.cli.base import (
    InferBackend,
    Strategy,
    app,
    bundled_checkpoint,
)
from pconv_deploy.contract import (
    CROP_MARGIN,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    DEFAULT_MODEL_NAME,
    DEFAULT_STRATEGY,
    ENGINE_SUFFIXES,
    ONNX_SUFFIX,
)
from pconv_deploy.paths import (
    check_input_file,
    check_not_inside,
    check_output_dir,
)
from pconv_deploy.serving.options import KIND_CPU, KIND_GPU, PORT_RANGE, RepositoryOptions, ServeOptions, field_defaults

PORT = {"min": PORT_RANGE[0], "max": PORT_RANGE[1]}
REPO, SERVE = field_defaults(RepositoryOptions), field_defaults(ServeOptions)


@app.command("triton-repo")
def triton_repo(
    model: Annotated[
        Path, typer.Argument(metavar="MODEL", help="An exported .onnx, or a TensorRT .engine/.plan with its sidecar.")
    ],
    repo: Annotated[Path, typer.Option(help="Triton model repository folder.")],
    name: Annotated[str, typer.Option(help="Model name (folder) in the repository.")] = REPO["name"],
    version: Annotated[int, typer.Option(min=1, help="Version folder.")] = REPO["version"],
    max_batch_size: Annotated[int, typer.Option(min=1, help="Largest batch Triton forms (dynamic batching).")] = REPO[
        "max_batch_size"
    ],
    instances: Annotated[int, typer.Option(min=1, help="Model instances (execution contexts).")] = REPO["instances"],
    cpu: Annotated[bool, typer.Option(help=f"{KIND_CPU} instances instead of {KIND_GPU}.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model folder.")] = REPO["overwrite"],
) -> None:
    """Write a Triton model repository entry.

    config.pbtxt and the model, for ONNX Runtime or TensorRT.
    """
    check_input_file(model, "MODEL", (ONNX_SUFFIX, *ENGINE_SUFFIXES))
    check_output_dir(repo, "--repo")
    check_not_inside(model, repo / name, "MODEL", shown="triton-repo")
    from pconv_deploy.serving.repository import write_triton_repo

    kind = KIND_CPU if cpu else KIND_GPU
    options = RepositoryOptions(
        model=model,
        repo=repo,
        name=name,
        version=version,
        max_batch_size=max_batch_size,
        instances=instances,
        kind=kind,
        overwrite=overwrite,
    )
    target = write_triton_repo(options)
    typer.echo(f"wrote {target}/config.pbtxt and {target}/{options.version}/")


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Model to serve: .onnx, or a TensorRT .engine/.plan with its sidecar.")],
    http_port: Annotated[int, typer.Option(**PORT, help="KServe v2 HTTP/REST port.")] = SERVE["http_port"],
    grpc_port: Annotated[int, typer.Option(**PORT, help="KServe v2 gRPC port.")] = SERVE["grpc_port"],
    metrics_port: Annotated[int, typer.Option(**PORT, help="Prometheus metrics port.")] = SERVE["metrics_port"],
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")] = SERVE[
        "host"
    ],
    max_batch_size: Annotated[int, typer.Option(min=1, help="Largest batch Triton's dynamic batcher forms.")] = SERVE[
        "max_batch_size"
    ],
    name: Annotated[str, typer.Option(help="Model name clients ask for.")] = SERVE["name"],
    instances: Annotated[int, typer.Option(min=1, help="Model instances (batches run at once).")] = SERVE["instances"],
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Refuse requests with more pixels (N*H*W) than this, before allocating.")
    ] = SERVE["max_pixels"],
) -> None:
    """Serve a model on a Triton Inference Server.

    Runs PyTriton in .venv-serve until Ctrl-C or SIGTERM.
    """
    from pconv_deploy.serving.launcher import run_server

    options = ServeOptions(
        model=model,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        host=host,
        max_batch_size=max_batch_size,
        name=name,
        instances=instances,
        max_pixels=max_pixels,
    )
    code = run_server(options)
    if code:
        raise typer.Exit(code)


@app.command("app")
def app_command(
    model: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="MODEL", help="Model to try: .onnx, .engine/.plan or .safetensors (torch); repeat to compare them."
        ),
    ] = None,
    server: Annotated[
        list[str] | None,
        typer.Option(metavar="URL", help="Triton http://HOST:PORT or grpc://HOST:PORT (one more model); repeatable."),
    ] = None,
    server_model: Annotated[str, typer.Option(help="Model name on the --server(s).")] = DEFAULT_MODEL_NAME,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback exposes the app.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one, printed).")] = 8765,
    backend: Annotated[InferBackend, typer.Option(help="As for `pconv infer`.")] = InferBackend["auto"],
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime CPU threads [default: all cores].")] = None,
    strategy: Annotated[Strategy, typer.Option(help="As for `pconv infer`: crop keeps big photos fast.")] = (
        Strategy[DEFAULT_STRATEGY]
    ),
    max_side: Annotated[int, typer.Option(min=32, help="Longest side the network sees (not full).")] = DEFAULT_MAX_SIDE,
    margin: Annotated[int, typer.Option(min=0, help="crop: context px around each hole.")] = CROP_MARGIN,
    memory_limit: Annotated[str | None, typer.Option(help="Memory for the app, e.g. 6GiB [default: 80% free].")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse photos of more pixels.")] = DEFAULT_MAX_PIXELS,
    max_upload: Annotated[str, typer.Option(help="Largest request body (photo + mask), e.g. 128MiB.")] = "128MiB",
) -> None:
    """Try models on your own photos in the browser.

    Paint the hole, inpaint, compare models side by side.
    """
    from pconv_deploy.app import AppOptions, run_app
    from pconv_deploy.runtime.inpainter import InpaintOptions
    from pconv_deploy.runtime.memory import parse_memory

    models = tuple(model or ()) or (() if server else (bundled_checkpoint(),))
    for path in models:
        check_input_file(path, "--model", missing=True)
    options = AppOptions(
        models=models,
        servers=tuple(server or ()),
        server_model=server_model,
        host=host,
        port=port,
        backend=backend.value,
        device=device,
        threads=threads,
        inpaint=InpaintOptions(
            strategy=strategy.value,
            max_side=max_side,
            margin=margin,
            memory_limit=parse_memory(memory_limit) if memory_limit else "auto",
        ),
        max_pixels=max_pixels,
        max_upload=parse_memory(max_upload),
    )
    run_app(options, announce=typer.echo)
