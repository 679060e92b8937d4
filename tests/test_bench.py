"""pconv bench: the comparison networks compute what they claim, and a tiny run produces the table and JSON.

Speed itself is not asserted (timed tests are flaky on shared machines); the bench reports ratios.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics

import pytest
import torch
from typer.testing import CliRunner

from pconv_deploy.bench.prepare import export_key, random_model
from pconv_deploy.bench.report import render, write_json
from pconv_deploy.bench.run import run_bench
from pconv_deploy.bench.spec import BenchReport, BenchSettings, Row, WorkerSpec
from pconv_deploy.bench.workers import feeds, run_worker
from pconv_deploy.cli import app
from pconv_deploy.errors import PConvError
from pconv_deploy.export.graph import ExportNet
from pconv_deploy.export.onnx_export import export_onnx
from pconv_deploy.export.variants import variant_net
from pconv_deploy.model import composite


def adversarial_masks(size: int) -> torch.Tensor:
    """Stroke-like holes, an all-hole block larger than any window, and a sparse row of known pixels."""
    _, mask = feeds(2, size, seed=3)
    mask = torch.from_numpy(mask)
    mask[0, :, : size // 2, : size // 2] = 0.0
    mask[1, :, : size // 2] = 0.0
    mask[1, :, 5, ::7] = 1.0
    return mask


def test_variants_against_the_model():
    """Ours and naive are the partial-conv U-Net (to float32 noise); plain is not (holes are not ignored)."""
    model = random_model(4, 0.25, seed=1)
    image = torch.rand(2, 3, 64, 96)
    mask = adversarial_masks(96)[:, :, :64]
    with torch.no_grad():
        reference = torch.clamp(composite(image, mask, model(image, mask)), 0, 1)
        ours = ExportNet(model)(image, mask)
        naive = variant_net(model, "naive")(image, mask)
        plain = variant_net(model, "plain")(image, mask)
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=0)
    torch.testing.assert_close(naive, reference, atol=2e-6, rtol=0)
    assert (plain - reference).abs().max() > 1e-2
    torch.testing.assert_close(plain * mask, image * mask)  # known pixels are composited in every variant


def test_random_model_has_nonzero_folded_biases():
    """The exporter drops all-zero biases, which would change ONNX Runtime's fusions: the bench's model has none."""
    net = ExportNet(random_model(3, 0.125))
    assert all(layer.bias.abs().max() > 0 for layer in [*net.encoder, *net.decoder])


def test_compare_and_pipeline_workers(small_onnx, small_checkpoint, tmp_path):
    """The interleaved comparison and the pipeline run in their own processes and report consistent numbers."""
    settings = BenchSettings(
        threads=1,
        warmup=1,
        repeats=1,
        compare_repeats=2,
        compare_size=32,
        gemm_size=128,
        pipeline_images=2,
        pipeline_batch=2,
    )
    files = {"checkpoint": str(small_checkpoint), "ours": str(small_onnx), "plain": str(small_onnx)}
    files["naive"] = str(small_onnx)  # the same file in every role: the worker's arithmetic, not speed, is tested
    c = run_worker(WorkerSpec("compare", settings, files))
    expected = {"ours", "plain", "naive", "gemm_torch", "gemm_numpy"}
    assert set(c["ms_all"]) == expected | ({"openvino"} if importlib.util.find_spec("openvino") else set())
    assert all(len(v) == 2 for v in c["ms_all"].values())
    t = c["ms_all"]
    per_round = statistics.median(o / p for o, p in zip(t["ours"], t["plain"]))
    assert c["mask_path_cost"] == pytest.approx(per_round, rel=1e-3)
    assert c["from_medians"]["mask_path_cost"] == pytest.approx(c["ms"]["ours"] / c["ms"]["plain"], rel=1e-3)
    best = max(c["gemm_gflops"].values())
    assert c["from_medians"]["efficiency"] == pytest.approx(c["ours_gflops"] / best, rel=1e-3)
    assert c["conv_gmacs"]["ours"] > 0 and c["peak_mib"] > 0
    p = run_worker(WorkerSpec("pipeline", settings, files, folder=str(tmp_path)))
    assert p["images"] == 2 and p["pipeline_images_per_s"] > 0 and p["model_images_per_s"] > 0
    assert len(list((tmp_path / "pipeline" / "out").glob("*.png"))) == 2
    with pytest.raises(PConvError, match="benchmark worker .* failed"):
        run_worker(WorkerSpec("pipeline", settings, {"ours": str(tmp_path / "missing.onnx")}, folder=str(tmp_path)))


def test_tiny_bench_run(small_checkpoint, small_onnx, tmp_path):
    """End to end on the small test model: two backends in subprocesses, table and JSON.

    The export of the session fixture is placed where the bench keeps its exports (the key of this
    checkpoint and this code), so the run reuses it instead of exporting again.
    """
    work = tmp_path / "work"
    (work / export_key(small_checkpoint)).mkdir(parents=True)
    shutil.copy(small_onnx, work / export_key(small_checkpoint) / "ours.onnx")
    settings = BenchSettings(
        model=small_checkpoint,
        sizes=(32,),
        batch_sizes=(1, 2),
        backends=("onnxruntime", "torch", "openvino"),
        threads=1,
        repeats=1,
        compare_size=0,
        pipeline_images=0,
        quality=False,
        work_dir=work,
    )
    lines: list[str] = []
    report = run_bench(settings, say=lines.append)
    assert not any(line.startswith("exported") for line in lines)  # reused
    ran = [r for r in report.rows if r.size]
    backends = ("onnxruntime", "torch") + (("openvino",) if importlib.util.find_spec("openvino") else ())
    assert {(r.backend, r.batch) for r in ran} == {(b, n) for b in backends for n in (1, 2)}
    for r in ran:
        assert r.images_per_s == pytest.approx(r.batch / (r.latency_ms / 1000), rel=1e-2)
        assert r.peak_mib >= r.base_mib > 0 and r.gemm_gflops > 0
        expected = 2 * report.conv_macs[32] * r.batch / (r.latency_ms / 1000) / 1e9 / r.gemm_gflops
        assert report.efficiency(r) == pytest.approx(expected)
    if any(r.backend == "openvino" and not r.size for r in report.rows):
        assert any("openvino: skipped" in line for line in lines)  # not installed here: said, not failed
    data = json.loads(write_json(report, tmp_path / "bench.json").read_text())
    assert {t["target"] for t in data["targets"]} >= {"mask-path cost (ours / plain U-Net)", "whole run"}
    assert next(t for t in data["targets"] if t["target"].startswith("mask"))["met"] is None  # not measured
    assert data["machine"]["threads"] == 1 and len(data["machine"]["load_average_start"]) == 3
    assert render(report) is not None


def test_cli_bench_rejects_bad_sizes(tmp_path):
    args = ["bench", "--layers", "3", "--width", "0.125", "--sizes", "30", "--compare-size", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "size 30 is not a multiple of 8" in result.output
    result = CliRunner().invoke(app, ["bench", "--sizes", "a,b"])
    assert result.exit_code == 1 and "--sizes must be comma-separated integers" in result.output


def test_ratios_of_the_main_table():
    """Speed-up over ONNX Runtime FP32 at the same size and batch; efficiency against the GEMM timed beside it."""
    rows = [
        Row("onnxruntime", 512, 1, latency_ms=400.0, gemm_gflops=190.0),
        Row("openvino-bf16", 512, 1, latency_ms=160.0, gemm_gflops=150.0),
        Row("openvino-bf16", 256, 1, latency_ms=50.0, gemm_gflops=190.0),
        Row("onnxruntime-int8", 512, 4, latency_ms=900.0, gemm_gflops=180.0),
    ]
    report = BenchReport({}, {}, rows, conv_macs={512: 38_000_000_000, 256: 9_500_000_000})
    assert report.speedup(rows[1]) == pytest.approx(400 / 160)
    assert report.speedup(rows[2]) is None and report.speedup(rows[3]) is None  # no baseline at that size/batch
    assert report.efficiency(rows[1]) == pytest.approx(2 * 38e9 / 0.160 / 150e9)  # its own GEMM, not another's
    assert report.efficiency(rows[2]) == pytest.approx(2 * 9.5e9 / 0.050 / 190e9)
    assert report.efficiency(rows[3]) == pytest.approx(4 * 2 * 38e9 / 0.900 / 180e9)  # four images per batch
    assert report.efficiency(Row("torch", 128, 1, latency_ms=5.0, gemm_gflops=1.0)) is None  # no MAC count
    data = report.to_json()
    assert data["rows"][1]["speedup_vs_onnxruntime_fp32"] == pytest.approx(2.5)


def test_quality_worker_scores_a_configuration_against_fp32(small_checkpoint, small_onnx, tmp_path):
    """Mean hole L1 of a configuration and of ONNX Runtime FP32 on the same held-out samples: zero difference
    for the FP32 file itself, a small one for PyTorch (float32 noise), a real one for a worse model."""
    settings = BenchSettings(threads=1)
    files = {"checkpoint": str(small_checkpoint), "ours": str(small_onnx)}
    same = run_worker(WorkerSpec("quality", settings, files, backend="onnxruntime", folder=str(tmp_path)))
    assert same["difference"] == 0 and same["hole_l1"] == same["hole_l1_fp32"] > 0
    assert same["samples"] == 4 * 3 * 2 and "4 photos" in same["images"]  # held-out photos x bins x masks
    torch_run = run_worker(WorkerSpec("quality", settings, files, backend="torch", folder=str(tmp_path)))
    assert abs(torch_run["difference"]) < 0.05 and torch_run["hole_l1_fp32"] == same["hole_l1_fp32"]
    other = export_onnx(random_model(5, 0.125, seed=3), tmp_path / "other.onnx")  # another network entirely
    swapped = {**files, "ours_int8": str(other)}
    worse = run_worker(WorkerSpec("quality", settings, swapped, backend="onnxruntime-int8", folder=str(tmp_path)))
    assert abs(worse["difference"]) > 0.2 and worse["hole_l1_fp32"] == same["hole_l1_fp32"]
    calibration = {p.name for p in (tmp_path / "photos" / "calibration").iterdir()}
    held_out = {p.name for p in (tmp_path / "photos" / "held-out").iterdir()}
    assert len(calibration) == len(held_out) == 4 and not calibration & held_out
