"""The language-model layer under the Search-R3 encoder and the trainer: device, locating, loading, prompt format,
forward passes and generation (README: Layout)."""
