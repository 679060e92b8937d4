"""A real `pconv serve` on loopback for the tests (processes, ports, readiness) and raw requests to it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from pconv_deploy.contract import IMAGE, MASK, OUTPUT
from pconv_deploy.serving.server import READY_MARK

START_SECONDS = 120  # a cold tritonserver start with model load takes 5-15 s here


def free_ports(n: int) -> list[int]:
    """``n`` free loopback ports below the system's ephemeral range, so that no process (a tritonserver of
    another test server still starting, a client) is handed one of them as a free port meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    for port in random.Random().sample(range(10_000, low), 2000):  # bounded: stops at the first n free ones
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free loopback ports between 10000 and {low}")


class Served:
    """One `pconv serve` process group on loopback ports."""

    def __init__(self, model: Path, log: Path, *extra: str, ports: list[int] | None = None) -> None:
        self.http, self.grpc, self.metrics = ports or free_ports(3)
        self.log = log
        command = [sys.executable, "-m", "pconv_deploy.cli", "serve", "--model", str(model), "--max-batch-size", "4"]
        command += list(extra)
        command += ["--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]
        with open(log, "wb") as out:  # SIGINT ignored, as for a background job of a script: it must still stop
            self.proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
            )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        for _ in range(int(START_SECONDS / 0.2)):
            if READY_MARK in self.log.read_text(errors="replace"):
                import psutil

                self.server_pid = psutil.Process(self.proc.pid).children()[0].pid
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        raise AssertionError(f"pconv serve did not get ready; log tail:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """Kill the launcher, the server and tritonserver at once (a machine dying, not a clean stop)."""
        import psutil

        tree = [psutil.Process(self.proc.pid)]
        tree += tree[0].children(recursive=True)
        for p in reversed(tree):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=10)
        wait_port_closed(self.http)

    def served_requests(self) -> int:
        """Successful inference requests so far, from Triton's Prometheus metrics."""
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as response:
            text = response.read().decode()
        lines = [line for line in text.splitlines() if line.startswith("nv_inference_request_success{")]
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        """Stop it (SIGTERM: the clean way); SIGKILL to the whole group if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group (normally nothing)
        self.proc.wait(timeout=10)
        wait_port_closed(self.http)  # the server process itself (its own session) stops with its launcher
        return self.proc.returncode


def wait_port_closed(port: int, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.2)):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise AssertionError(f"a server still listens on 127.0.0.1:{port} after its launcher stopped")


@contextlib.contextmanager
def serving(model: Path, folder: Path, count: int = 1, *extra: str):
    servers = []
    try:
        for i in range(count):
            servers.append(Served(model, folder / f"serve-{i}.log", *extra))
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


def json_request(image: dict, mask: dict) -> bytes:
    return json.dumps(
        {"inputs": [{"name": IMAGE, "datatype": "FP32", **image}, {"name": MASK, "datatype": "FP32", **mask}]}
    ).encode()


def binary_request(image: np.ndarray, mask: np.ndarray, shapes: tuple | None = None) -> tuple[bytes, dict]:
    """The binary tensor extension: a JSON header, then the raw float32 tensors."""
    shapes = shapes or (list(image.shape), list(mask.shape))
    inputs = [
        {"name": n, "datatype": "FP32", "shape": s, "parameters": {"binary_data_size": a.nbytes}}
        for n, s, a in ((IMAGE, shapes[0], image), (MASK, shapes[1], mask))
    ]
    header = json.dumps({"inputs": inputs, "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}]})
    body = header.encode() + image.astype("<f4").tobytes() + mask.astype("<f4").tobytes()
    return body, {"Inference-Header-Content-Length": str(len(header.encode()))}


def post(
    port: int, body: bytes, headers: dict | None = None, path: str = "/v2/models/pconv/infer", timeout: float = 60
) -> tuple:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/octet-stream", **(headers or {})}
        )
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


class Trickler:
    """A slowloris: the headers of an infer request declaring ``length`` bytes, then ``chunk`` bytes each ``every`` s.

    It stops trickling when the server answers or closes, or after ``seconds`` (bounded), and keeps the answer."""

    def __init__(self, port: int, length: int, every: float = 0.2, seconds: float = 30, chunk: int = 1) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=seconds + 5)
        head = f"POST /v2/models/pconv/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
        self.sock.sendall(f"{head}Content-Type: application/json\r\n\r\n{{".encode())
        self.every, self.chunk, self.left = every, b" " * chunk, min((length - 1) // chunk, int(seconds / every))
        self.answer = b""
        self.answered_at: float | None = None
        self.stopped = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self.trickle, daemon=True)
        self.thread.start()

    def trickle(self) -> None:
        try:
            for _ in range(self.left):
                if select.select([self.sock], [], [], self.every)[0] or self.stopped.is_set():
                    break  # the server answered (or closed), or the test is done
                self.sock.sendall(self.chunk)
            self.sock.settimeout(15)
            while not self.complete() and (chunk := self.sock.recv(65536)):
                self.answer += chunk
        except OSError:
            pass
        self.answered_at = time.monotonic()

    def complete(self) -> bool:
        head, sep, body = self.answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        return bool(sep) and length is not None and len(body) >= int(length.group(1))

    def status(self) -> tuple[int, dict, bytes]:
        """(status, headers, body) of the answer, once trickling stopped."""
        self.thread.join(60)
        if not self.complete():
            return 0, {}, self.answer  # no answer (or half of one)
        head, _, body = self.answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return int(lines[0].split()[1]), headers, body

    def close(self) -> None:
        self.stopped.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # a recv under way returns
        self.thread.join(30)
        self.sock.close()


def get_status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def good_batch(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((1, 1, size, size), np.float32)
    mask[..., 10:40, 20:50] = 0
    image = rng.random((1, 3, size, size), dtype=np.float32) * mask
    return image, mask


def assert_one_line_refusal(status: int, body: bytes, expected: str) -> str:
    assert 400 <= status < 500, (status, body[:500])
    message = json.loads(body)["error"]
    assert len(message.splitlines()) == 1 and "Traceback" not in message and ".py" not in message, message
    assert "/tmp" not in message and "/work" not in message, message
    assert expected in message, message
    return message


def assert_inpainted(answer: tuple, image: np.ndarray, mask: np.ndarray, local) -> np.ndarray:
    """A binary infer answer (``post``'s) holds ONNX Runtime's pixels (``local``, the same model) for the batch."""
    status, body, headers = answer
    assert status == 200, body[:500]
    header = int(headers["Inference-Header-Content-Length"])
    out = np.frombuffer(body[header:], "<f4").reshape(image.shape)
    np.testing.assert_allclose(out, local.run(image, mask), atol=1e-4)
    assert np.array_equal(out[:, :, mask[0, 0] == 1], image[:, :, mask[0, 0] == 1])  # known pixels unchanged
    return out


def assert_still_serving(server, local) -> None:
    """Ready, and a good request gives ONNX Runtime's pixels (the local backend on the same model)."""
    assert get_status(server.http, "/v2/models/pconv/ready") == 200
    assert get_status(server.http, "/v2/health/ready") == 200
    image, mask = good_batch(7)
    out = assert_inpainted(post(server.http, *binary_request(image, mask)), image, mask, local)
    data = {n: {"shape": list(a.shape), "data": a.ravel().tolist()} for n, a in ((IMAGE, image), (MASK, mask))}
    status, body, _ = post(server.http, json_request(data[IMAGE], data[MASK]))  # JSON in and out
    assert status == 200, body[:500]
    (output,) = json.loads(body)["outputs"]
    assert output["name"] == OUTPUT and output["shape"] == [1, 3, 64, 64]
    np.testing.assert_allclose(np.asarray(output["data"], np.float32).reshape(out.shape), out, atol=1e-6)
