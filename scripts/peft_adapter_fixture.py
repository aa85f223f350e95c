#!/usr/bin/env python3
"""PEFT's own adapter files, and the logits PEFT computes with them, for crates/lm/tests/adapter.rs.

The bases are activepref's tiny random test models (`lm::testing::tiny_model`, seed 7), written as HF
directories by the ignored test `write_bases_for_the_peft_fixture`; transformers loads them, PEFT wraps them
with LoRA (B initialised non-zero, so the adapter changes the model), saves the adapter with
`save_pretrained` and the logits of a fixed token sequence go beside it, computed in float64 by PEFT's own
forward (unmerged: base + scale * B A x per module).

Usage (PEFT 0.18.1, transformers 4.57, torch):
  cargo test -p activepref-lm --test adapter -- --ignored write_bases_for_the_peft_fixture  # writes /tmp/peft-bases
  python3 scripts/peft_adapter_fixture.py /tmp/peft-bases crates/lm/tests/fixtures/peft
"""
import json, os, sys
import torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
import peft

TOKENS = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]

CASES = {
    # A list of module names: the TRL CLI's usual form.
    "llama-list": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])),
    # A regex string, rsLoRA scaling and per-module rank and alpha.
    "llama-regex-rslora-patterns": ("llama", dict(
        r=4, lora_alpha=6, target_modules=r".*\.(gate_proj|up_proj|down_proj|k_proj)", use_rslora=True,
        rank_pattern={"down_proj": 2}, alpha_pattern={"layers\\.1\\.mlp\\.up_proj": 3})),
    # GPT-2's Conv1D layers through "all-linear" (fan_in_fan_out is set by PEFT).
    "gpt2-all-linear": ("gpt2", dict(r=3, lora_alpha=5, target_modules="all-linear", fan_in_fan_out=True)),
}

def main(bases, out):
    torch.manual_seed(0)
    for name, (base, kw) in CASES.items():
        model = AutoModelForCausalLM.from_pretrained(os.path.join(bases, base), torch_dtype=torch.float64)
        model.eval()
        cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", init_lora_weights=False, **kw)
        pm = get_peft_model(model, cfg)
        pm.eval()
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        pm.save_pretrained(d, safe_serialization=True)
        with torch.no_grad():
            ids = torch.tensor([TOKENS])
            logits = pm(input_ids=ids).logits[0]
            base_logits = model.get_base_model()(input_ids=ids).logits[0] if hasattr(model, "get_base_model") else None
            with pm.disable_adapter():
                base_logits = pm(input_ids=ids).logits[0]
        json.dump({
            "peft": peft.__version__, "base": base, "tokens": TOKENS,
            "logits": logits.tolist(),
            "max_abs_change": float((logits - base_logits).abs().max()),
        }, open(os.path.join(d, "expected.json"), "w"))
        # README.md is PEFT's model card; the test does not need it.
        readme = os.path.join(d, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        print(name, "max |Δlogit| vs base", float((logits - base_logits).abs().max()))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
