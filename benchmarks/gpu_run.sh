#!/usr/bin/env bash
# GPU checks, run from the repository root on a CUDA machine with ../shared/data: SciFact evaluation of the shipped
# model (throughput, and the score against the CPU's), SFT speed, the reasoning-format SFT stage and its checkpoint with
# reasoning off and on, the GRPO stage from it and its evaluation, and the whole direct SFT stage. Usage:
#   [STEPS="shipped sft-speed ..."] benchmarks/gpu_run.sh [OUT]
# (OUT defaults to results/gpu; every step's wall time is logged to OUT/gpu_run.log; STEPS picks steps, default all)
set -u
OUT=${1:-results/gpu}
mkdir -p "$OUT" runs
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"

timed() {  # timed NAME COMMAND...: run it, then print its exit status and wall seconds
    local name=$1 start=$EPOCHREALTIME
    shift
    echo "== $name: $*"
    "$@"
    echo "== $name: exit $? after $(awk "BEGIN {print $EPOCHREALTIME - $start}") s"
}
evaluate() {  # evaluate NAME MODEL [OPTIONS...]: SciFact test, results under OUT/eval
    local name=$1 model=$2
    shift 2
    timed "$name" python3 -m searchr3_eval.cli run --tasks SciFact --data-dir ../shared/data/beir --models "searchr3:$model" \
        --device cuda --output-dir "$OUT/eval" --quiet "$@"
}
config() {  # config SOURCE KEY=VALUE...: a copy of a trainer config with keys replaced, written to runs/
    local target="runs/$(basename "$1" .yaml)-gpu.yaml"
    python3 - "$@" > "$target" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
for item in sys.argv[2:]:
    key, value = item.split("=", 1)
    cfg[key] = yaml.safe_load(value)
print(yaml.safe_dump(cfg, sort_keys=False))
PY
    echo "$target"
}

run_step() {
    case $1 in
    shipped) evaluate shipped-direct smollm2-sft ;;
    sft-speed)
        timed data python3 -m trainer.cli data --config trainer/configs/data_smollm2.yaml
        timed sft-speed python3 -m trainer.cli sft --config "$(config trainer/configs/sft_smollm2.yaml \
            output_dir=runs/sft-speed-gpu max_steps=20 eval_file=null save_every=1000)" ;;
    sft-reasoning)
        timed data-reasoning python3 -m trainer.cli data --config trainer/configs/data_reasoning_smollm2.yaml
        timed sft-reasoning python3 -m trainer.cli sft --config "$(config trainer/configs/sft_reasoning_smollm2.yaml \
            output_dir=runs/sft-reasoning-gpu)" ;;
    sft-reasoning-eval)
        evaluate sft-reasoning-off runs/sft-reasoning-gpu/final
        evaluate sft-reasoning-on runs/sft-reasoning-gpu/final --reasoning on --max-new-tokens 32 ;;
    grpo)
        timed grpo python3 -m trainer.cli rl --config "$(config trainer/configs/rl_smollm2.yaml \
            model=runs/sft-reasoning-gpu/final output_dir=runs/rl-reasoning-gpu)"
        evaluate grpo-off runs/rl-reasoning-gpu/final
        evaluate grpo-on runs/rl-reasoning-gpu/final --reasoning on --max-new-tokens 32 ;;
    sft-full)
        timed sft-full python3 -m trainer.cli sft --config "$(config trainer/configs/sft_smollm2.yaml output_dir=runs/sft-smollm2-gpu)"
        evaluate sft-full-off runs/sft-smollm2-gpu/final ;;
    *) echo "unknown step $1" ;;
    esac
}

for step in ${STEPS:-shipped sft-speed sft-reasoning sft-reasoning-eval grpo sft-full}; do
    run_step "$step"
done
