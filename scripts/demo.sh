#!/usr/bin/env bash
# The demo behind `make demo`: export the bundled model, check it, inpaint the sample images,
# write the results and a side-by-side picture. Everything lands in demo-out/.
set -euo pipefail
out=demo-out
mkdir -p "$out"
model=pconv_deploy/assets/pconv-demo.safetensors

echo "== the bundled model"
pconv info "$model" --size 512x512

echo "== export to ONNX (graph checks + Polygraphy parity against PyTorch run before the file appears)"
pconv export --checkpoint "$model" --output "$out/pconv-demo.onnx"

echo "== parity check of the exported file, on its own"
pconv check "$out/pconv-demo.onnx" --checkpoint "$model"

echo "== inpaint examples/images with examples/masks (white = hole)"
pconv infer --images examples/images --masks examples/masks --output "$out/inpainted" \
  --model "$out/pconv-demo.onnx" --report "$out/report.json" --overwrite

python scripts/side_by_side.py examples/images examples/masks "$out/inpainted" "$out/side_by_side.png"
echo "== done: $out/inpainted/*.png, $out/report.json, $out/side_by_side.png"
