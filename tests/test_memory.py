import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from searchr3_eval.memory import NO_TCMALLOC_ENV, tcmalloc_library

WORKER = Path(__file__).parent / "memory_worker.py"
ALLOCATOR_WORKER = Path(__file__).parent / "allocator_worker.py"


def resident_mib(setting: str) -> float:
    done = subprocess.run([sys.executable, str(WORKER), setting], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator setting is glibc's")
def test_freed_tensor_memory_goes_back_to_the_system():
    """Steps of varying shapes that each keep a small piece fragment glibc's heap under its default settings; with
    ``return_freed_memory`` (which both command lines apply without tcmalloc) the process stays far smaller."""
    assert resident_mib("on") < 0.8 * resident_mib("off")


def command_line_allocator(command: str = "run", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", NO_TCMALLOC_ENV)}
    worker = subprocess.Popen([sys.executable, str(ALLOCATOR_WORKER), command, "--quiet"], env={**clean, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    report = json.loads(out)
    assert report["pid"] == worker.pid and report["argv"] == [command, "--quiet"]  # the same process, arguments kept
    return report


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tcmalloc is preloaded on Linux only")
@pytest.mark.skipif(tcmalloc_library() is None, reason="tcmalloc is not installed (apt install libtcmalloc-minimal4)")
def test_a_command_line_restarts_itself_with_tcmalloc_where_installed():
    assert command_line_allocator()["allocator"] == "tcmalloc"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps is Linux's")
def test_a_command_line_keeps_glibc_when_told_or_when_something_else_is_preloaded():
    assert command_line_allocator(**{NO_TCMALLOC_ENV: "1"})["allocator"] == "glibc"
    # without tcmalloc only training bounds its memory with fresh pages; evaluation keeps glibc's cheaper default
    assert command_line_allocator("run", **{NO_TCMALLOC_ENV: "1"})["chosen"] == "glibc default"
    assert command_line_allocator("train", **{NO_TCMALLOC_ENV: "1"})["chosen"] == "glibc returning freed memory"
    libc = "libc.so.6"  # a preload that is not tcmalloc: the user's choice stands
    assert command_line_allocator(LD_PRELOAD=libc)["allocator"] == "glibc"
