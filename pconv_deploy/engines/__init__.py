"""TensorRT engine building and the engine sidecar metadata."""
