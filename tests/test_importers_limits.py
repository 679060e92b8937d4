"""import-checkpoint against hostile and broken source files: memory bounded by what the file holds,
every tensor checked (finite, real, dense, expected shape) with its key named, one line per refusal.

The memory cases run in a subprocess that reports its peak RSS (VmHWM) and runs under an
address-space limit, so that a regression fails the test instead of taking the machine's memory.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from helpers.reference import make_project_unet

from pconv_deploy.model.importers import ImportCheckpointError, import_checkpoint

SCALE = 0.125
LEVELS = 4
PEAK_RSS_LIMIT = 1 << 30  # 1 GiB: importing torch costs ~0.4 GiB; the hostile files below declare 4-8 GiB


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = make_project_unet("xiefan-guo", LEVELS, SCALE).eval()
    path = tmp_path_factory.mktemp("src") / "model.pth"
    torch.save({"n_iter": 6, "generator": net.state_dict()}, path)
    return path


def _state(source: Path) -> dict:
    return torch.load(source, weights_only=True)


def _save(obj: dict, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _refused(source: Path, tmp_path: Path, *needles: str) -> str:
    output = tmp_path / "out.safetensors"
    with pytest.raises(ImportCheckpointError) as info:
        import_checkpoint(source, output)
    message = str(info.value)
    assert "\n" not in message and str(source) in message, message
    for needle in needles:
        assert needle in message, message
    assert not output.exists()
    assert not [p.name for p in output.parent.iterdir() if ".pconv-tmp-" in p.name]
    return message


# --- memory: what the file declares is checked before anything is materialised ---------------------

GIB4 = (1 << 32) - 1  # the largest record size without zip64


def _deflated_zeros(size: int) -> bytes:
    """A raw deflate stream of ``size`` zero bytes, built from one compressed 64 MiB block repeated."""
    block_size = 64 << 20
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(block_size)) + comp.flush(zlib.Z_FULL_FLUSH)  # history reset: repeatable
    full, rest = divmod(size, block_size)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    return block * full + tail.compress(bytes(rest)) + tail.flush()


def _write_zip(path: Path, records: list[tuple[str, bytes, int, int]]) -> None:
    """A zip of (name, payload, method, uncompressed size) written by hand (zipfile cannot store pre-deflated data)."""
    out, central = bytearray(), bytearray()
    for name, payload, method, usize in records:
        raw = name.encode()
        crc = zlib.crc32(payload) if method == zipfile.ZIP_STORED else 0
        fields = (20, 0, method, 0, 0x21, crc, len(payload), usize, len(raw))
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, 0, len(out)) + raw
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields, 0) + raw + payload
    count = len(records)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def _peak_rss_of_import(source: Path, output: Path) -> tuple[int, str]:
    """Run the import in a fresh process (8 GiB address-space cap); (its peak RSS in bytes, its outcome)."""
    code = (
        "import resource, sys\n"
        "from pconv_deploy.model.importers import import_checkpoint\n"
        "try:\n"
        "    import_checkpoint(sys.argv[1], sys.argv[2]); outcome = 'imported'\n"
        "except BaseException as e:\n"
        "    outcome = f'{type(e).__name__}: {e}'\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of a big pytest reads big
        "print(int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')).split()[1]) * 1024)\n"
        "print(outcome.splitlines()[0] if outcome else '')\n"
    )

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    run = subprocess.run(
        [sys.executable, "-c", code, str(source), str(output)], capture_output=True, text=True, preexec_fn=cap
    )
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and len(lines) == 2, (run.returncode, run.stdout, run.stderr[-2000:])
    return int(lines[0]), lines[1]


def test_deflated_4gib_record_is_refused_from_the_zip_directory(source, tmp_path):
    with zipfile.ZipFile(source) as zf:
        records = [(i.filename, zf.read(i.filename), zipfile.ZIP_STORED, i.file_size) for i in zf.infolist()]
    storage = next(i for i, r in enumerate(records) if r[0].endswith("/data/0"))
    records[storage] = (records[storage][0], _deflated_zeros(GIB4), zipfile.ZIP_DEFLATED, GIB4)
    bomb = tmp_path / "bomb.pth"
    _write_zip(bomb, records)
    assert bomb.stat().st_size < 8 << 20
    with zipfile.ZipFile(bomb) as zf:  # a valid zip: the record really inflates to ~4 GiB
        assert zf.getinfo(records[storage][0]).file_size == GIB4
    peak, outcome = _peak_rss_of_import(bomb, tmp_path / "out.safetensors")
    assert outcome.startswith("ImportCheckpointError") and "data/0" in outcome and "compressed" in outcome, outcome
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**30:.2f} GiB"
    assert not (tmp_path / "out.safetensors").exists()


def test_a_record_larger_than_the_limit_is_refused(source, tmp_path, monkeypatch):
    from pconv_deploy.model import sources

    monkeypatch.setattr(sources, "MAX_SOURCE_BYTES", source.stat().st_size // 2)
    _refused(source, tmp_path, "uncompressed", "limit")


def _naoto_2018(tmp_path: Path, mask_bias: torch.Tensor) -> Path:
    torch.manual_seed(7)
    net = make_project_unet("naoto0804", LEVELS, SCALE)
    old = {}
    for key, value in net.state_dict().items():
        old[key.replace(".input_conv.", ".conv2d.").replace(".mask_conv.", ".mask2d.")] = value
        if key.endswith("mask_conv.weight"):
            old[key.replace(".mask_conv.weight", ".mask2d.bias")] = torch.zeros(value.shape[0])
    old["enc_2.conv.mask2d.bias"] = mask_bias
    return _save({"n_iter": 1, "model": old}, tmp_path / "strided.pth")


def test_stride_0_tensor_of_2_31_elements_is_refused_before_it_is_read(tmp_path):
    hostile = _naoto_2018(tmp_path, torch.zeros(1).expand(1 << 31))  # 8 GiB as float32, 4 bytes stored
    assert hostile.stat().st_size < 1 << 20
    peak, outcome = _peak_rss_of_import(hostile, tmp_path / "out.safetensors")
    assert outcome.startswith("ImportCheckpointError") and "enc_2.conv.mask2d.bias" in outcome, outcome
    assert "2147483648 elements" in outcome, outcome
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**30:.2f} GiB"


def test_expanded_view_within_limits_is_still_refused(source, tmp_path):
    state = _state(source)
    key = "dc_images_2.bn.running_mean"
    state["generator"][key] = torch.zeros(1).expand(state["generator"][key].shape)
    _refused(_save(state, tmp_path / "expanded.pth"), tmp_path, key, "overlapping")


# --- values: finite, real, non-negative variances, the key named --------------------------------


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("ec_images_2.conv.weight", float("nan"), "non-finite"),
        ("dc_images_1.conv.bias", float("inf"), "non-finite"),
        ("ec_images_3.bn.running_var", -1.0, "negative"),
        ("ec_images_2.bn.running_mean", float("-inf"), "non-finite"),
    ],
)
def test_non_finite_and_negative_variance_are_refused_at_import(source, tmp_path, key, value, needle):
    state = _state(source)
    state["generator"][key].view(-1)[1] = value
    _refused(_save(state, tmp_path / "bad.pth"), tmp_path, key, needle)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool, torch.int32])
def test_non_real_floating_weights_are_refused(source, tmp_path, dtype):
    state = _state(source)
    key = "ec_images_3.conv.weight"
    state["generator"][key] = state["generator"][key].to(dtype)
    _refused(_save(state, tmp_path / "dtype.pth"), tmp_path, key, str(dtype).replace("torch.", ""))


def test_half_precision_source_imports(source, tmp_path):
    state = _state(source)
    state["generator"] = {k: v.half() if v.is_floating_point() else v for k, v in state["generator"].items()}
    result = import_checkpoint(_save(state, tmp_path / "half.pth"), tmp_path / "half.safetensors")
    assert result.config.layers == LEVELS


# --- structure: keys, dimensions, layouts --------------------------------------------------------


def test_odd_contents_are_refused_in_one_line(source, tmp_path):
    base = _state(source)

    def edited(edit) -> Path:
        state = {"n_iter": 6, "generator": dict(base["generator"])}
        edit(state["generator"])
        return _save(state, tmp_path / "odd.pth")

    _refused(edited(lambda s: s.update({7: torch.zeros(3)})), tmp_path, "key 7", "not a string")
    _refused(edited(lambda s: s.update({"ec_images_1.conv.weight": torch.tensor(1.0)})), tmp_path, "shape []")
    _refused(edited(lambda s: s.update({"dc_images_3.conv.weight": torch.tensor(1.0)})), tmp_path, "dc_images_3")
    meta = torch.empty(base["generator"]["ec_images_2.conv.weight"].shape, device="meta")
    _refused(edited(lambda s: s.update({"ec_images_2.conv.weight": meta})), tmp_path, "meta tensor")
    sparse = base["generator"]["ec_images_2.conv.weight"].to_sparse()
    _refused(edited(lambda s: s.update({"ec_images_2.conv.weight": sparse})), tmp_path, "sparse")
    var = base["generator"]["ec_images_2.bn.running_var"]
    quantized = torch.quantize_per_tensor(var, 0.1, 0, torch.quint8)
    _refused(edited(lambda s: s.update({"ec_images_2.bn.running_var": quantized})), tmp_path, "quantized")
    tracked = "ec_images_2.bn.num_batches_tracked"
    _refused(edited(lambda s: s.update({tracked: torch.zeros(3, dtype=torch.long)})), tmp_path, tracked, "shape [3]")
    _refused(edited(lambda s: s.update({tracked: torch.tensor(1.5)})), tmp_path, tracked, "integer")
    _refused(edited(lambda s: s.update({tracked: torch.tensor(-4)})), tmp_path, tracked, "negative")


def test_a_bool_mask_bias_in_the_2018_layout_is_refused(tmp_path):
    _refused(_naoto_2018(tmp_path, torch.zeros(16, dtype=torch.bool)), tmp_path, "enc_2.conv.mask2d.bias", "bool")


# --- where it reads and writes ----------------------------------------------------------------


def test_output_equal_to_input_is_refused(tmp_path, source, small_checkpoint):
    from safetensors.torch import save_file

    own = tmp_path / "state.safetensors"  # a bare state dict as safetensors: importable, and the same suffix
    save_file(_state(source)["generator"], str(own))
    before = own.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(own)
    hard = tmp_path / "hard.safetensors"
    os.link(own, hard)
    for output in (own, link, hard, tmp_path / "." / "state.safetensors"):
        with pytest.raises(ImportCheckpointError, match="is the source"):
            import_checkpoint(own, output)
    assert own.read_bytes() == before


def test_source_that_is_not_a_regular_file(tmp_path):
    for name, target in (("zero.pth", "/dev/zero"), ("random.pth", "/dev/urandom")):
        (tmp_path / name).symlink_to(target)
        _refused(tmp_path / name, tmp_path, "not a regular file")
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    _refused(fifo, tmp_path, "not a regular file")  # never opened: reading it would block


def _cli(args: list[str], *, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if fsize is not None:  # a full disk, as a write sees it: EFBIG instead of SIGXFSZ
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    code = "from pconv_deploy.cli import main; main()"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, preexec_fn=limit, env=env
    )


def _one_line_error(run: subprocess.CompletedProcess, *needles: str) -> None:
    lines = run.stderr.strip().splitlines()
    assert run.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_write_failures_are_one_line_and_leave_nothing(source, tmp_path):
    _one_line_error(_cli(["import-checkpoint", str(source), "-o", "/proc/x.safetensors"]), "/proc")
    out = tmp_path / "out"
    out.mkdir()
    full = _cli(["import-checkpoint", str(source), "-o", str(out / "m.safetensors")], fsize=4096)
    _one_line_error(full, "m.safetensors", "cannot write")
    full = _cli(["init", str(out / "i.safetensors"), "--layers", "4", "--width", "0.125"], fsize=4096)
    _one_line_error(full, "i.safetensors", "cannot write")
    assert list(out.iterdir()) == []


def test_export_no_check_on_a_full_disk(small_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = _cli(["export", "--checkpoint", str(small_checkpoint), "-o", str(out / "m.onnx"), "--no-check"], fsize=8192)
    _one_line_error(run, "m.onnx", "cannot write")
    assert list(out.iterdir()) == []


def test_cli_refuses_the_source_as_output(tmp_path, source):
    from safetensors.torch import save_file

    own = tmp_path / "state.safetensors"
    save_file(_state(source)["generator"], str(own))
    before = own.read_bytes()
    _one_line_error(_cli(["import-checkpoint", str(own), "-o", str(own)]), "state.safetensors")
    assert own.read_bytes() == before
    assert json.loads(json.dumps(sorted(p.name for p in tmp_path.iterdir()))) == ["state.safetensors"]


def test_many_small_deflated_records_are_refused_together(source, tmp_path):
    """Each record under the per-record floor (1 MiB from 2 KB), 600 of them: 600 MiB from ~1 MB."""
    with zipfile.ZipFile(source) as zf:
        records = [(i.filename, zf.read(i.filename), zipfile.ZIP_STORED, i.file_size) for i in zf.infolist()]
    prefix = records[0][0].split("/")[0]
    small = _deflated_zeros(1 << 20)
    records += [(f"{prefix}/data/extra{i}", small, zipfile.ZIP_DEFLATED, 1 << 20) for i in range(600)]
    many = tmp_path / "many.pth"
    _write_zip(many, records)
    assert many.stat().st_size < 2 << 20
    _refused(many, tmp_path, "inflate", "in all")
