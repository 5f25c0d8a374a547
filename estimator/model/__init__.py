"""The model side: architecture facts (ModelSpec) from HF configs and presets, weight tensors,
checkpoint headers and flax models — what a model is, before any device is involved."""
