"""`pconv serve` on a real Triton server (PyTriton, on loopback) and `pconv infer --server` against it.

Every server is started through the CLI in its own process group and stopped in a ``finally``
(SIGTERM, then SIGKILL of the group); every wait below has a deadline and a bounded number of polls.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import infer_command
from helpers.serving import START_SECONDS, Served, free_ports, serving
from PIL import Image

from pconv_deploy.contract import IMAGE, MASK, OUTPUT
from pconv_deploy.serving.server import READY_MARK

RUN_SECONDS = 180
POLL = 0.05
SIZES = [(96, 128), (200, 160), (64, 64), (130, 70)]


def make_folder(root: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"p{i:03d}.png")
        hole = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h - 24), rng.integers(0, w - 24)
        hole[y : y + 24, x : x + 24] = 255
        Image.fromarray(hole).save(masks / f"p{i:03d}.png")
    return images, masks


def run_infer(*command_args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(infer_command(*command_args), capture_output=True, text=True, timeout=RUN_SECONDS)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int16)


def assert_like_local(remote: Path, local: Path, images: Path) -> None:
    names = sorted(p.stem for p in images.iterdir())
    assert sorted(p.stem for p in remote.iterdir()) == names  # no file missing, no stray temp file
    for name in names:
        assert np.abs(pixels(remote / f"{name}.png") - pixels(local / f"{name}.png")).max() <= 1, name


def assert_no_partial_file(output: Path) -> None:
    for path in output.iterdir() if output.exists() else []:
        assert not path.name.startswith("."), f"temp file left: {path.name}"
        with Image.open(path) as im:
            im.load()  # a truncated PNG raises here


@pytest.fixture(scope="module")
def work(small_onnx, tmp_path_factory):
    """A folder of 12 images and its local inference (the reference for every remote run)."""
    root = tmp_path_factory.mktemp("serve")
    images, masks = make_folder(root, 12)
    r = run_infer(images, masks, root / "local", "--model", str(small_onnx))
    assert r.returncode == 0, r.stderr
    return root, images, masks


@pytest.fixture(scope="module")
def one_server(serve_env, small_onnx, work):
    with serving(small_onnx, work[0]) as (server,):
        yield server
        started = time.monotonic()
        assert server.stop(signal.SIGINT) == 0  # Ctrl-C: a clean stop, exit 0
        log = server.log.read_text()
        assert time.monotonic() - started < 30 and "pconv serve: stopping" in log and "pconv serve: stopped" in log
        workspaces = Path(tempfile.gettempdir()) / "pconv-serve"
        assert not list(workspaces.glob(f"pid{server.server_pid}-*")), "PyTriton's workspace was left behind"


def test_infer_over_http_and_grpc_matches_local(one_server, work, tmp_path):
    root, images, masks = work
    for url in (one_server.http_url, one_server.grpc_url):
        out = tmp_path / url.split(":")[0]
        r = run_infer(images, masks, out, "--server", url, "--report", str(tmp_path / "report.json"))
        assert r.returncode == 0, r.stderr
        assert "12 inpainted" in r.stdout and "triton (1/1 servers)" in r.stdout
        assert_like_local(out, root / "local", images)
    # resume exactly as locally: done files are skipped, missing ones are redone
    for name in ("p000.png", "p005.png"):
        (out / name).unlink()
    r = run_infer(images, masks, out, "--server", one_server.grpc_url)
    assert r.returncode == 0 and "2 inpainted, 10 skipped" in r.stdout, r.stdout + r.stderr
    assert_like_local(out, root / "local", images)


def test_served_config_matches_the_contract_and_triton_repo(one_server, small_onnx, tmp_path):
    """The served model's config: the same tensors and pconv.* parameters as the triton-repo config, and the ONNX."""
    import onnx
    import tritonclient.http as http
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from pconv_deploy.serving.client import check_config
    from pconv_deploy.serving.options import KIND_CPU, RepositoryOptions
    from pconv_deploy.serving.repository import write_triton_repo

    client = http.InferenceServerClient(f"127.0.0.1:{one_server.http}")
    served = client.get_model_config("pconv")
    client.close()
    folder = write_triton_repo(
        RepositoryOptions(model=small_onnx, repo=tmp_path / "repo", max_batch_size=4, kind=KIND_CPU)
    )
    pbtxt = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    repo = json_format.MessageToDict(pbtxt, preserving_proto_field_name=True)

    def tensors(config: dict) -> list:
        return [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"] + config["output"]]

    assert (
        tensors(served)
        == tensors(repo)
        == [(IMAGE, "TYPE_FP32", [3, -1, -1]), (MASK, "TYPE_FP32", [1, -1, -1]), (OUTPUT, "TYPE_FP32", [3, -1, -1])]
    )
    assert served["max_batch_size"] == repo["max_batch_size"] == 4
    assert served["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    metadata = {p.key: p.value for p in onnx.load(str(small_onnx), load_external_data=False).metadata_props}
    assert metadata["pconv.multiple"] == "32"
    for config in (served, repo):
        assert {k: v["string_value"] for k, v in config["parameters"].items() if k.startswith("pconv.")} == metadata
        assert check_config(config, "x").multiple == 32


def test_server_refuses_unpadded_batches_with_a_clear_error(one_server):
    """The server serves the contract as the ONNX does: the caller pads to pconv.multiple."""
    import tritonclient.http as http

    from pconv_deploy.serving.client import TritonBackend, error_line

    client = http.InferenceServerClient(f"127.0.0.1:{one_server.http}")
    image, mask = np.zeros((1, 3, 40, 64), np.float32), np.ones((1, 1, 40, 64), np.float32)
    inputs, outputs = TritonBackend.request_tensors("http", image, mask)
    with pytest.raises(Exception) as raised:
        client.infer("pconv", inputs, outputs=outputs)
    client.close()
    expected = "must be multiples of 32 (pconv.multiple), got 40x64: pad first (docs/contract.md)"
    assert error_line(raised.value).endswith(expected), error_line(raised.value)


def test_a_server_stopping_mid_run_leaves_the_folder_to_the_other(serve_env, small_onnx, tmp_path):
    """Two servers; one dies while the folder runs: every file still comes out, through the other."""
    images, masks = make_folder(tmp_path, 80, seed=1)
    local = tmp_path / "local"
    assert run_infer(images, masks, local, "--model", str(small_onnx)).returncode == 0
    out = tmp_path / "remote"
    with serving(small_onnx, tmp_path, count=2) as (a, b):
        warm_up = {a: a.served_requests(), b: b.served_requests()}  # each answered its warm-up request already
        args = ["--server", a.http_url, "--server", b.grpc_url, "--batch-size", "1"]
        args += ["--report", str(tmp_path / "r.json")]
        with open(tmp_path / "infer.log", "wb") as log:
            proc = subprocess.Popen(infer_command(images, masks, out, *args), stdout=log, stderr=subprocess.STDOUT)
        try:
            done_when_stopped = wait_for_outputs(out, 3, proc)
            served_by_a = a.served_requests() - warm_up[a]
            a.kill()  # requests in flight on it fail, later ones find it refusing connections
            running_when_stopped = proc.poll() is None
            assert proc.wait(timeout=RUN_SECONDS) == 0, (tmp_path / "infer.log").read_text()
            served_by_b = b.served_requests() - warm_up[b]
        finally:
            if proc.poll() is None:
                proc.kill()
    assert running_when_stopped and done_when_stopped < 80, "the run ended before a server died: use more images"
    assert served_by_a > 0 and 0 < served_by_b < 80  # both served: some outputs came through the one that died
    assert "80 inpainted" in (tmp_path / "infer.log").read_text()
    assert_like_local(out, local, images)
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["ok"] == 80


def wait_for_outputs(folder: Path, count: int, proc: subprocess.Popen) -> int:
    """Poll (bounded) until ``count`` outputs exist; returns how many there are then."""
    deadline = time.monotonic() + RUN_SECONDS
    for _ in range(int(RUN_SECONDS / POLL)):
        done = len([p for p in folder.glob("*.png")]) if folder.exists() else 0
        if done >= count or proc.poll() is not None or time.monotonic() > deadline:
            return done
        time.sleep(POLL)
    return done


def test_every_server_down_at_start(serve_env, work, tmp_path):
    _, images, masks = work
    http_port, grpc_port = free_ports(2)
    r = run_infer(
        images,
        masks,
        tmp_path / "out",
        "--server",
        f"http://127.0.0.1:{http_port}",
        "--server",
        f"grpc://127.0.0.1:{grpc_port}",
        "--server-wait",
        "0",
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Triton servers unavailable"), r.stderr
    assert f"127.0.0.1:{http_port}" in lines[0] and f"127.0.0.1:{grpc_port}" in lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_every_server_stopping_mid_run_stops_the_job_and_resume_finishes_it(serve_env, small_onnx, tmp_path):
    images, masks = make_folder(tmp_path, 80, seed=2)
    out = tmp_path / "remote"
    with serving(small_onnx, tmp_path) as (server,):
        with open(tmp_path / "infer.log", "wb") as log:
            command = infer_command(images, masks, out, "--server", server.http_url, "--batch-size", "1")
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for_outputs(out, 3, proc)
            server.kill()  # the only server dies
            code = proc.wait(timeout=RUN_SECONDS)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "infer.log").read_text()
    assert code == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Triton servers unavailable"), stderr
    assert "Traceback" not in stderr and "failed:" not in stderr
    assert_no_partial_file(out)
    done = len(list(out.glob("*.png")))
    assert 0 < done < 80
    local = tmp_path / "local"
    assert run_infer(images, masks, local, "--model", str(small_onnx)).returncode == 0
    (tmp_path / "again").mkdir()
    with serving(small_onnx, tmp_path / "again") as (server,):
        r = run_infer(images, masks, out, "--server", server.grpc_url)
    assert r.returncode == 0 and f"{80 - done} inpainted, {done} skipped" in r.stdout, r.stdout + r.stderr
    assert_like_local(out, local, images)


def test_serve_refuses_bad_names_and_limits_in_one_line(serve_env, small_onnx):
    for args, expected in [
        (
            ["--name", 'a" b'],
            "error: --name 'a\" b': a model name is 1-64 characters of A-Z a-z 0-9 _ . - (no leading dot)",
        ),
        (["--max-pixels", "1000"], "error: --max-pixels 1000: below the smallest request (32x32, pconv.multiple)"),
    ]:
        r = subprocess.run(
            [sys.executable, "-m", "pconv_deploy.cli", "serve", "--model", str(small_onnx), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 1 and r.stderr.strip() == expected, r.stderr


def test_serve_without_model_file_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pconv_deploy.cli", "serve", "--model", str(tmp_path / "none.onnx")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr.strip() == f"error: --model {tmp_path / 'none.onnx'}: no such model file"
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    r = subprocess.run(
        [sys.executable, "-m", "pconv_deploy.cli", "serve", "--model", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr.startswith(f"error: --model {checkpoint}: pconv serve serves an exported")
    assert len(r.stderr.strip().splitlines()) == 1


def test_servers_down_at_start_are_skipped_and_other_models_refused(one_server, work, tmp_path):
    from helpers.engines_onnx import write_contract_onnx

    root, images, masks = work
    down = f"http://127.0.0.1:{free_ports(1)[0]}"
    r = run_infer(images, masks, tmp_path / "out", "--server", down, "--server", one_server.grpc_url)
    assert r.returncode == 0 and "12 inpainted" in r.stdout and "triton (1/2 servers)" in r.stdout, r.stderr
    assert_like_local(tmp_path / "out", root / "local", images)
    other = write_contract_onnx(tmp_path / "other.onnx")  # same contract, another checkpoint
    with serving(other, tmp_path) as (second,):
        r = run_infer(images, masks, tmp_path / "mixed", "--server", one_server.http_url, "--server", second.http_url)
    assert r.returncode == 1
    assert not (tmp_path / "mixed").exists() or not list((tmp_path / "mixed").iterdir())
    assert r.stderr.strip() == (
        f"error: {second.http_url} serves a different model than {one_server.http_url} "
        "(different pconv.checkpoint_sha256)"
    ), r.stderr


def test_serve_on_a_port_in_use_is_one_line(one_server, small_onnx):
    grpc, metrics = free_ports(2)
    command = [
        sys.executable,
        "-m",
        "pconv_deploy.cli",
        "serve",
        "--model",
        str(small_onnx),
        "--http-port",
        str(one_server.http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
    ]
    r = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    port = one_server.http
    assert r.stderr.strip() == f"error: --http-port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)"


def test_ready_only_when_the_model_answers(serve_env, small_onnx, tmp_path):
    """From launch to "ready": the public health endpoint never says ready before the model does, and the
    first request right after the ready line succeeds (issue 21: it failed with "unknown model")."""
    import http.client

    def status(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            response.read()
            return response.status
        except OSError:
            return 0  # not listening yet
        finally:
            connection.close()

    image = np.zeros((1, 3, 32, 32), np.float32)
    mask = np.ones((1, 1, 32, 32), np.float32)
    tensors = ((IMAGE, image), (MASK, mask))
    inputs = [
        {"name": n, "datatype": "FP32", "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
        for n, a in tensors
    ]
    header = json.dumps({"inputs": inputs})
    body = header.encode() + image.tobytes() + mask.tobytes()
    infer_headers = {"Inference-Header-Content-Length": str(len(header.encode()))}
    server = Served(small_onnx, tmp_path / "serve.log")
    seen = []
    try:
        deadline = time.monotonic() + START_SECONDS
        for _ in range(int(START_SECONDS / POLL)):
            ready_line = READY_MARK in server.log.read_text(errors="replace")
            if ready_line:
                first = status(server.http, "POST", "/v2/models/pconv/infer", body, infer_headers)
                break
            health = status(server.http, "GET", "/v2/health/ready")
            model = status(server.http, "GET", "/v2/models/pconv/ready")
            seen.append((health, model))
            assert server.proc.poll() is None and time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(POLL)
        assert ready_line, server.log.read_text()[-2000:]
        assert first == 200
        assert [s for s in seen if s[0] == 200 and s[1] != 200] == [], "health said ready before the model was"
        assert status(server.http, "GET", "/v2/health/ready") == 200
        assert status(server.http, "GET", "/v2/models/pconv/ready") == 200
        log = server.log.read_text()
        assert not [line for line in log.splitlines() if line.startswith("E1") or line.startswith("E0")], log
    finally:
        server.stop()


def test_infer_started_before_the_server_waits_for_it(serve_env, small_onnx, work, tmp_path):
    """`pconv infer --server` started first waits (bounded) for the model, then runs the folder."""
    root, images, masks = work
    ports = free_ports(3)
    url = f"http://127.0.0.1:{ports[0]}"
    with open(tmp_path / "infer.log", "wb") as log:
        proc = subprocess.Popen(
            infer_command(images, masks, tmp_path / "out", "--server", url, "--server-wait", str(START_SECONDS)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = None
    try:
        time.sleep(2)  # infer is waiting by now: nothing listens yet
        assert proc.poll() is None, (tmp_path / "infer.log").read_text()
        server = Served(small_onnx, tmp_path / "serve.log", ports=ports)
        code = proc.wait(timeout=START_SECONDS + RUN_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
        if server is not None:
            server.stop()
    text = (tmp_path / "infer.log").read_text()
    assert code == 0 and "12 inpainted" in text and f"waiting up to {START_SECONDS} s for model 'pconv'" in text, text
    assert_like_local(tmp_path / "out", root / "local", images)


def test_infer_server_wait_gives_up_in_one_line(serve_env, work, tmp_path):
    _, images, masks = work
    port = free_ports(1)[0]
    started = time.monotonic()
    r = run_infer(images, masks, tmp_path / "out", "--server", f"http://127.0.0.1:{port}", "--server-wait", "3")
    elapsed = time.monotonic() - started
    assert r.returncode == 1 and 3 <= elapsed < 60, (elapsed, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "waiting up to 3 s for model 'pconv' on 1 server(s)", r.stderr
    assert len(lines) == 2 and lines[1].startswith(
        "error: Triton servers unavailable (no server had model 'pconv' ready within 3 s)"
    ), r.stderr
    assert f"127.0.0.1:{port}" in lines[1] and "Traceback" not in r.stderr


def test_a_dead_model_stub_ends_the_server_with_one_line(serve_env, small_onnx, tmp_path):
    """Tritonserver keeps saying ready when the model's Python stub died (killed, out of memory) and answers
    every request "Stub process is not healthy": pconv serve stops instead, so a supervisor restarts it."""
    import http.client

    import psutil

    with serving(small_onnx, tmp_path) as (server,):
        tree = psutil.Process(server.proc.pid).children(recursive=True)
        stubs = [p for p in tree if "triton_python_backend_stub" in " ".join(p.cmdline())]
        assert len(stubs) == 1, [p.cmdline()[:2] for p in tree]
        stubs[0].kill()
        for _ in range(100):  # not our child: it stays a zombie until tritonserver reaps it
            with contextlib.suppress(psutil.NoSuchProcess):
                if stubs[0].status() != psutil.STATUS_ZOMBIE:
                    time.sleep(0.1)
                    continue
            break
        image, mask = np.zeros((1, 3, 32, 32), np.float32), np.ones((1, 1, 32, 32), np.float32)
        inputs = [
            {"name": n, "datatype": "FP32", "shape": list(a.shape), "data": a.ravel().tolist()}
            for n, a in ((IMAGE, image), (MASK, mask))
        ]
        connection = http.client.HTTPConnection("127.0.0.1", server.http, timeout=60)
        connection.request("POST", "/v2/models/pconv/infer", body=json.dumps({"inputs": inputs}))
        response = connection.getresponse()
        answer = json.loads(response.read())["error"]
        connection.close()
        assert response.status == 500 and answer == "internal error in the model (details in the server log)"
        code = server.proc.wait(timeout=60)
    log = server.log.read_text()
    assert code == 1, log[-2000:]
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: the model stopped answering (Stub process 'pconv_0_0' is not healthy.); "
        "exiting so that it can be restarted"
    ], log[-2000:]


def test_tritonserver_never_gets_a_public_port():
    """The public fronts bind only after the warm-up; meanwhile the system may offer one of their ports as free
    (a test run saw tritonserver take the public HTTP port and the front fail to listen)."""
    from pconv_deploy.errors import PConvError
    from pconv_deploy.serving.upstream import PORT_ATTEMPTS, private_ports

    handed_out: set[int] = set()
    for _ in range(20):  # ports handed out and closed are free again: they must never come back
        ports = private_ports(2, public=handed_out)
        assert len(set(ports)) == 2 and not set(ports) & handed_out, (ports, len(handed_out))
        handed_out |= set(ports)
    with pytest.raises(PConvError, match="no free loopback ports for tritonserver") as raised:
        private_ports(1, public=range(1, 65536))  # every port is public: refused, never one of them
    assert len(str(raised.value).splitlines()) == 1 and PORT_ATTEMPTS >= 10
