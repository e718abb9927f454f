"""searchr3-eval: evaluate, benchmark and train Search-R3 embedding models."""

__version__ = "0.1.0"
