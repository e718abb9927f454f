"""Command line: ``searchr3-eval run | report | verify | page | tasks | train``. This module sets the process up (the
allocator, quiet libraries) before the library loads; ``commands`` holds the parser and the handlers."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from searchr3_eval.memory import configure_command_line

QUIET_ENV = {"TQDM_DISABLE": "1"}


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence library progress bars too (weight loading, GGUF de-quantizing; tqdm reads TQDM_DISABLE when first
    imported, which in the command-line process is after this), and restore everything afterwards."""
    saved = {name: os.environ.get(name) for name in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if bars:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run from the shell: long encodes and training steps need an allocator that reuses memory
        argv = sys.argv[1:]
        configure_command_line(training=argv[:1] == ["train"])
    # tqdm reads TQDM_DISABLE when first imported, which building the parser already does
    with quiet_libraries() if "--quiet" in argv else nullcontext():
        # the library loads only now: after the allocator restart (nothing heavy loads twice) and with the quiet
        # environment set (tqdm reads it when first imported)
        from searchr3_eval.commands import run_command

        return run_command(argv)



if __name__ == "__main__":
    sys.exit(main())

