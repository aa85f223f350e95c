"""The PyTorch peer of `activepref bench lm` and `bench dpo` on the CPU: the same shapes and the same work,
written as a careful PyTorch user would (what issue #11 calls the fair peer).

- f32, THREADS threads (default 2), random SmolLM2-135M-shaped Llama (transformers, sdpa attention);
- one warm-up step, then the median of STEPS timed steps (default 3);
- the LM head only on the positions that predict completion tokens, log-softmax in f32;
- DPO: the sigmoid loss (β = 0.1), gradient clipping at 1.0, PyTorch's fused AdamW (foreach if fused is
  missing); LoRA r 16, α 32 on every linear layer of the blocks (PEFT "all-linear"), no dropout;
- each DPO mode in its own process when run through scripts/bench_compare.py, so peak RSS is per mode.

Usage: python torch_peer_cpu.py lm | dpo MODE   (MODE: full-live, full-cache, lora-live, lora-cache)
Prints one JSON line per measure. Needs torch, transformers and peft (a venv; never CI or the tests).
"""
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(0)
STEPS = int(os.environ.get("STEPS", "3"))
CFG = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                  max_position_embeddings=8192, rms_norm_eps=1e-5)
CFG._attn_implementation = "sdpa"
V = CFG.vocab_size


def emit(**k):
    k["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(k), flush=True)


def timed(f):
    f()
    runs = []
    for _ in range(STEPS):
        t = time.perf_counter()
        f()
        runs.append(time.perf_counter() - t)
    return sorted(runs)[len(runs) // 2]


def completion_logps(model, ids, split):
    """Summed log-probs of ids[:, split:] given the rest; the head sees completion positions only."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = inner.model(ids).last_hidden_state[:, split - 1:-1]
    logits = inner.lm_head(h).float()
    return torch.gather(logits.log_softmax(-1), 2, ids[:, split:, None]).squeeze(2).sum(-1)


def adamw(params):
    try:
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=True)
    except Exception:
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, foreach=True)


def lm():
    m = LlamaForCausalLM(CFG).eval()
    b, t = 4, 128
    ids = (torch.arange(b * t) * 7919 % V).view(b, t)
    with torch.no_grad():
        tf = timed(lambda: m(ids).logits.sum().item())
    emit(measure=f"forward {b}x{t}", tokens_per_s=b * t / tf)
    m.train()

    def fwd_bwd():
        completion_logps(m, ids, t // 2).sum().backward()
        m.zero_grad(set_to_none=True)

    emit(measure=f"fwd+bwd {b}x{t}", tokens_per_s=b * t / timed(fwd_bwd))
    m.eval()
    prompts = torch.tensor([[(i * 31 + j * 17) % V for j in range(16)] for i in range(32)])
    g = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        m.generate(prompts, max_new_tokens=2, min_new_tokens=2, **g)
        t1 = timed(lambda: m.generate(prompts, max_new_tokens=1, min_new_tokens=1, **g))
        tn = timed(lambda: m.generate(prompts, max_new_tokens=64, min_new_tokens=64, **g))
    # New tokens per second without the prefill, as `bench lm` measures decode.
    emit(measure="decode batch 32", tokens_per_s=32 * 63 / (tn - t1))
    emit(measure="generate batch 32 (+prefill)", tokens_per_s=32 * 64 / tn)


def dpo(mode):
    pairs, t, beta = 2, 64, 0.1
    ids = (torch.arange(2 * pairs * t) * 7919 % V).view(2 * pairs, t)  # chosen rows, then rejected rows
    lora, cache = mode.startswith("lora"), mode.endswith("cache")
    pol = LlamaForCausalLM(CFG)
    if lora:
        from peft import LoraConfig, get_peft_model
        pol = get_peft_model(pol, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))

        def ref_logps():
            with torch.no_grad(), pol.disable_adapter():
                return completion_logps(pol, ids, t // 2)
    else:
        ref = LlamaForCausalLM(CFG).eval()
        ref.load_state_dict(pol.state_dict())
        ref.requires_grad_(False)

        def ref_logps():
            with torch.no_grad():
                return completion_logps(ref, ids, t // 2)
    pol.train()
    params = [p for p in pol.parameters() if p.requires_grad]
    opt = adamw(params)
    cached = ref_logps() if cache else None

    def step():
        lp = completion_logps(pol, ids, t // 2)
        rl = cached if cache else ref_logps()
        margin = (lp[:pairs] - rl[:pairs]) - (lp[pairs:] - rl[pairs:])
        loss = -F.logsigmoid(beta * margin).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    emit(measure=f"dpo {mode}", tokens_per_s=2 * pairs * t / timed(step))


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "lm"
    if what == "lm":
        lm()
    elif what == "dpo" and len(sys.argv) > 2:
        dpo(sys.argv[2])
    else:
        sys.exit(__doc__)
