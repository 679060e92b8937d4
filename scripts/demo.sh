#!/usr/bin/env bash
# The demo behind `make demo`: builds and describes a model (later steps export, check and inpaint).
set -euo pipefail
out=demo-out
mkdir -p "$out"
pconv init "$out/model.safetensors" --layers 7 --width 0.25
pconv info "$out/model.safetensors" --size 256x256
