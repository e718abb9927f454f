"""searchr3-eval: evaluate, benchmark and train Search-R3 embedding models."""

__version__ = "0.2.0"


def evaluate(*args, **kwargs):
    """Score models on retrieval tasks; see ``searchr3_eval.runner.evaluate``."""
    # imported on call, so that `import searchr3_eval` (which every submodule import runs) stays light
    from searchr3_eval.runner import evaluate as run

    return run(*args, **kwargs)


__all__ = ["evaluate", "__version__"]
