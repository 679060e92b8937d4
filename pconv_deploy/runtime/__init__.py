"""Inference without torch: backends, batching, the folder pipeline."""
