#!/usr/bin/env bash
# One round of DPO with TRL (pinned and read: 0.27.2) for activepref's command trainer. In the run config:
#
#   [trainer]
#   backend = "command"
#   command = "examples/trl/dpo_round.sh {base} {data_dir} {output} {seed} {beta} {learning_rate} {epochs} {lora_r} {lora_alpha}"
#
# (the command runs in the run directory: give this script's absolute path there). It writes a PEFT adapter
# to {output}, which activepref checks and makes the round's policy.
#
# Why not `trl dpo` itself: in TRL 0.27.2 `trl dpo` starts accelerate with its defaults and silently drops
# --accelerate_config and --num_processes (fixed in 0.29.0, PR huggingface/trl#5059), so this script calls
# `accelerate launch` on TRL's own trl/scripts/dpo.py, which is what `trl dpo` runs. TRL reads a local
# directory holding train.jsonl as the dataset (its dpo.py has no data_files flag).
#
# Environment:
#   PYTHON            the Python with trl, peft and accelerate installed (default: python3)
#   NUM_PROCESSES     processes (GPUs) for accelerate (default 1)
#   ACCELERATE_CONFIG an accelerate config file, e.g. TRL's accelerate_configs/zero2.yaml for DeepSpeed ZeRO-2
#                     ($PYTHON -c 'import trl, os; print(os.path.dirname(trl.__file__))')/accelerate_configs/
#   BATCH             per-device batch size (default 4); DTYPE (default float32) and BF16 (default false;
#                     TRL 0.27 turns bf16 on by default, which a CPU refuses): DTYPE=bfloat16 BF16=true on GPUs
#   EXTRA             more dpo.py flags, e.g. "--loss_type ipo --gradient_accumulation_steps 4"
set -euo pipefail
if [ $# -ne 9 ]; then
  echo "usage: $0 BASE DATA_DIR OUTPUT SEED BETA LEARNING_RATE EPOCHS LORA_R LORA_ALPHA" >&2
  exit 2
fi
base=$1 data_dir=$2 output=$3 seed=$4 beta=$5 lr=$6 epochs=$7 r=$8 alpha=$9
PYTHON=${PYTHON:-python3}
dpo=$("$PYTHON" -c 'import trl.scripts.dpo as m; print(m.__file__)')
launch=("$PYTHON" -m accelerate.commands.launch --num_processes "${NUM_PROCESSES:-1}")
if [ -n "${ACCELERATE_CONFIG:-}" ]; then
  launch+=(--config_file "$ACCELERATE_CONFIG")
fi
# lora_target_modules all-linear: every linear layer of the blocks, as activepref's own LoRA; no
# modules_to_save and no DoRA, so vLLM can load the adapter too.
# shellcheck disable=SC2086
exec "${launch[@]}" "$dpo" \
  --model_name_or_path "$base" --dtype "${DTYPE:-float32}" --bf16 "${BF16:-false}" \
  --dataset_name "$data_dir" --dataset_train_split train \
  --output_dir "$output" --save_strategy no --report_to none \
  --use_peft --lora_r "$r" --lora_alpha "$alpha" --lora_dropout 0 --lora_target_modules all-linear \
  --beta "$beta" --learning_rate "$lr" --num_train_epochs "$epochs" --seed "$seed" \
  --per_device_train_batch_size "${BATCH:-4}" ${EXTRA:-}
