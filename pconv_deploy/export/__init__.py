"""torch -> ONNX (FP32 and FP16), graph checks, Polygraphy parity."""
