"""The held-out nDCG@10 of a query adapter's SFT teacher at several BM25 shares (``teacher_bm25``): the teacher's own
ranking of the config's judged held-out train queries over the whole index (``trainer.sft.teacher_bm25_sweep``).

    python scripts/teacher_heldout.py trainer/configs/query_sft_teacher_hybrid_layers16_smollm2.yaml --shares 0,0.3,1
"""
from __future__ import annotations

import argparse

from searchr3_eval.errors import UserError
from trainer.config import SFTConfig, load_config
from trainer.sft import teacher_bm25_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sft_config")
    parser.add_argument("--shares", default="0,0.2,0.3,0.4,0.5,0.6,0.7,1", help="comma list of BM25 shares in [0, 1]")
    args = parser.parse_args()
    try:
        shares = [float(s) for s in args.shares.split(",")]
        print("teacher_bm25\theldout_ndcg_at_10")
        for share, score in teacher_bm25_sweep(load_config(args.sft_config, SFTConfig), shares).items():
            print(f"{share:g}\t{score:.4f}")
    except ValueError:
        raise SystemExit(f"error: --shares {args.shares!r}: write numbers separated by commas") from None
    except UserError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
