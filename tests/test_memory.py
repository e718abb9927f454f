import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "memory_worker.py"


def resident_mib(setting: str) -> float:
    done = subprocess.run([sys.executable, str(WORKER), setting], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator setting is glibc's")
def test_freed_tensor_memory_goes_back_to_the_system():
    """Steps of varying shapes that each keep a small piece fragment glibc's heap under its default settings; with
    ``return_freed_memory`` (which both command lines apply) the process stays far smaller."""
    assert resident_mib("on") < 0.8 * resident_mib("off")
