"""Training and evaluation: data, masks, losses, the loop, metrics."""
