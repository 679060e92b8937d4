#!/usr/bin/env bash
# The first thing to run on a CUDA machine (`make gpu-check`): installs the `gpu` extra, runs the GPU
# tests (`pytest -m gpu -rs`), builds FP16 and INT8 engines of the bundled model (the INT8 one from a
# symmetric Q/DQ export calibrated on scikit-image's photos, compared with ONNX Runtime on the same file
# and with FP32), runs a small `pconv bench`
# (ONNX Runtime and TensorRT, if this checkout has the command), then prints a short report. Exit status: non-zero when any
# step failed; 2 when this is not a CUDA machine. Work files go to ${GPU_CHECK_DIR:-gpu-check-out}/.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${GPU_CHECK_DIR:-gpu-check-out}
# A small `pconv bench` run (the bundled model, one size): override with BENCH_ARGS="...".
BENCH_ARGS=${BENCH_ARGS:---model pconv_deploy/assets/pconv-demo.safetensors --backends onnxruntime,onnxruntime-fp16,tensorrt --sizes 256 --batch-sizes 1,4 --repeats 3 --compare-size 0 --pipeline-images 0}
declare -a REPORT=()
FAILED=0
note() { REPORT+=("$1"); echo "== $1"; }
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember the outcome
    local name=$1; shift
    if "$@" >"$OUT/$name.log" 2>&1; then note "$name: ok"; else note "$name: FAILED (exit $?, see $OUT/$name.log)"; FAILED=1; fi
}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA driver or GPU here (nvidia-smi fails); run this on a CUDA machine" >&2
    exit 2
fi
mkdir -p "$OUT"
note "GPU: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -n 1)"

# onnxruntime and onnxruntime-gpu install the same module: keep only the GPU one.
step install "$BIN/pip" install -q -e '.[gpu,dev]'
if "$BIN/pip" show -q onnxruntime >/dev/null 2>&1; then
    step onnxruntime-gpu bash -c "'$BIN/pip' uninstall -q -y onnxruntime && '$BIN/pip' install -q --force-reinstall --no-deps onnxruntime-gpu"
fi
"$BIN/pconv" doctor >"$OUT/doctor.log" 2>&1
note "doctor: $(grep -E '^(tensorrt|  runs plans|  CUDAExecutionProvider)' "$OUT/doctor.log" | tr -s ' ' | paste -sd ';' -)"

step pytest-gpu "$BIN/pytest" -m gpu -rs -q
note "pytest -m gpu: $(tail -n 1 "$OUT/pytest-gpu.log")"
if ! tail -n 1 "$OUT/pytest-gpu.log" | grep -q passed; then
    note "pytest -m gpu: FAILED: no GPU test ran on a GPU machine (reasons below)"; FAILED=1
fi
grep -E '^SKIPPED' "$OUT/pytest-gpu.log" | head -n 5 | while read -r line; do echo "   $line"; done

step export "$BIN/pconv" export --fp16 -o "$OUT/demo-fp16.onnx"
step build-engine "$BIN/pconv" build-engine "$OUT/demo-fp16.onnx" -o "$OUT/demo-fp16.engine" --fp16 \
    --min-shape 1x256x256 --opt-shape 2x256x256 --max-shape 4x512x512 --timing-cache "$OUT/timing.cache"
# INT8: TensorRT takes symmetric (s8) Q/DQ; calibration on the colour photos in scikit-image's package data.
CAL="$OUT/calibration"
mkdir -p "$CAL"
"$BIN/python" -c "
import sys; from pathlib import Path; from pconv_deploy.train.data import builtin_paths
for p in builtin_paths(): (Path(sys.argv[1]) / p.name).unlink(missing_ok=True); (Path(sys.argv[1]) / p.name).symlink_to(p)
" "$CAL"
step export-int8 "$BIN/pconv" export --precision int8 --int8-activations s8 --calibration "$CAL" \
    -o "$OUT/demo-int8.onnx"
step build-engine-int8 "$BIN/pconv" build-engine "$OUT/demo-int8.onnx" -o "$OUT/demo-int8.engine" --precision int8 \
    --min-shape 1x256x256 --opt-shape 2x256x256 --max-shape 4x512x512 --timing-cache "$OUT/timing.cache"
step int8-engine-vs-ort "$BIN/python" - "$OUT" <<'PY'
import sys
import numpy as np
from pconv_deploy.runtime import Inpainter
out = sys.argv[1]
rng = np.random.default_rng(0)
images = [np.clip(rng.normal(0.5, 0.2, (256, 384, 3)).cumsum(1) / 40 % 1 * 255, 0, 255).astype(np.uint8) for _ in range(4)]
holes = [np.zeros((256, 384), bool) for _ in range(4)]
for i, hole in enumerate(holes):
    hole[40 + 20 * i : 140 + 20 * i, 60:200] = True
    hole[::7, ::5] = True  # 1-pixel holes
runs = {name: Inpainter.from_path(f"{out}/{name}", strategy="full").inpaint(images, holes)
        for name in ("demo-int8.engine", "demo-int8.onnx")}
for got, ref, image, hole in zip(runs["demo-int8.engine"], runs["demo-int8.onnx"], images, holes):
    assert np.array_equal(got[~hole], image[~hole]), "known pixels changed"
    mse = np.mean((got.astype(float) - ref) ** 2)
    psnr = 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)
    print(f"TensorRT INT8 vs ONNX Runtime INT8 (same file): PSNR {psnr:.1f} dB")
    assert psnr >= 30, "TensorRT INT8 differs from ONNX Runtime on the same Q/DQ file"
PY
note "int8: $(tail -n 1 "$OUT/int8-engine-vs-ort.log")"
if "$BIN/pconv" bench --help >/dev/null 2>&1; then
    # shellcheck disable=SC2086 # BENCH_ARGS is a list of options
    step bench "$BIN/pconv" bench $BENCH_ARGS --work-dir "$OUT/bench" --json "$OUT/bench.json"
    echo "   (pconv bench output: $OUT/bench.log, $OUT/bench.json)"
    tail -n 12 "$OUT/bench.log" | sed 's/^/   /'
else
    note "bench: skipped: this checkout has no \`pconv bench\` yet (issue 11)"
fi

echo
echo "gpu-check report ($(date -u +%Y-%m-%dT%H:%MZ), logs in $OUT/)"
for line in "${REPORT[@]}"; do echo "  $line"; done
exit "$FAILED"
