"""Shipping a trained adapter into the package: the manifest's declared case folding, bf16-stored LoRA factors and
the package's size limit."""
import json

import numpy as np
import torch
from safetensors.torch import load_file

import trainer.ship
from searchr3_eval.models import ModelOptions, describe, parse_model_spec
from searchr3_eval.models.lm import locate
from searchr3_eval.models.searchr3 import SearchR3Encoder
from tests.test_query_adapter import document_model, query_sft_config  # noqa: F401 (a fixture)
from trainer.sft import train_sft


def test_a_shipped_adapter_declares_its_fold_and_may_store_its_factors_in_bf16(document_model, data_dir, tmp_path,
                                                                              monkeypatch, capsys):
    cfg = query_sft_config(document_model, data_dir, tmp_path, max_steps=2, eval_every=None, eval_file=None)
    train_sft(cfg, show_progress=False)
    final = tmp_path / "out" / "final"
    monkeypatch.setattr(locate, "SHIPPED_DIR", tmp_path / "weights")  # the package's folder stays as it is
    monkeypatch.setattr(trainer.ship, "SHIPPED_DIR", tmp_path / "weights")
    target = trainer.ship.ship(final, "tiny-query", case_fold="all-caps", adapter_dtype="bfloat16")

    assert json.loads((target / locate.MANIFEST).read_text())["case_fold"] == "all-caps"
    assert {t.dtype for t in load_file(str(target / "adapter_model.safetensors")).values()} == {torch.bfloat16}
    assert {t.dtype for t in load_file(str(final / "adapter_model.safetensors")).values()} == {torch.float32}
    assert describe(parse_model_spec("searchr3:tiny-query"), ModelOptions()).settings["case_fold"] == "all-caps"
    shipped = SearchR3Encoder.from_pretrained("tiny-query", show_progress=False)
    trained = SearchR3Encoder.from_pretrained(str(final), show_progress=False)
    plain = shipped.encode(["find the apple"], "query")[0]
    assert float(plain @ trained.encode(["find the apple"], "query")[0]) > 0.999  # bf16 factors: nearly the same
    np.testing.assert_array_equal(shipped.encode(["FIND THE APPLE"], "query")[0], plain)  # folded by default
    np.testing.assert_array_equal(shipped.encode(["NOTES ABOUT APPLE HERE"], "document"),  # its documents too
                                  shipped.encode(["notes about apple here"], "document"))

    float32_bytes = trainer.ship.stored_bytes(final, "float32")  # above the limit: refused, nothing written
    assert trainer.ship.stored_bytes(final, "bfloat16") < float32_bytes
    monkeypatch.setattr(trainer.ship, "MAX_BYTES", float32_bytes - 1)
    assert trainer.ship.main([str(final), "too-big"]) == 2
    assert not (tmp_path / "weights" / "too-big").exists()
    error = capsys.readouterr().err.split("ship: error: ")[1]
    assert len(error.strip().splitlines()) == 1 and "above the" in error
