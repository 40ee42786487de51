"""Inference: frame preprocessing sized by the checkpoint's tower, the batched engine, per-history
state, and the in-process InferenceSession."""
