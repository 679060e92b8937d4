"""TensorRT engines: building (``build``), optimization profiles (``profiles``), the sidecar beside each
engine (``sidecar``), and the one adapter to the TensorRT and CUDA Python APIs (``trt_api``) that the
runtime's backend uses too."""
