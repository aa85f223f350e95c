"""The PyTorch anchor of scripts/gpu-check.sh: what a PyTorch user runs for the same work as
`activepref bench dpo|score|sample`, on random weights of the same shapes, in the same run.

- DPO: one step of TRL's DPOTrainer computation: policy forward+backward on the concatenated chosen and
  rejected sequences, a reference forward under no_grad, the sigmoid loss, fused AdamW; bf16 autocast over
  f32 master weights on CUDA, SDPA attention (f32 on the CPU).
- score: forward-only sequence log-probs, batch × seq_len tokens.
- sample: HF `generate` with the KV cache, temperature 1, no top-k, every row to the end, bf16 weights on CUDA.

Usage (torch + transformers; never in CI or the tests):
    python3 scripts/bench/torch_anchor.py --device cuda --shapes gpt2-124m,smollm2-135m --out anchor.json
Prints one JSON line per shape; --out writes them all.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

# The shapes of activepref's `lm::testing::named_shape`.
SHAPES = {
    "tiny": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        tie_word_embeddings=True, attn_implementation="sdpa")),
    "gpt2-124m": lambda: GPT2LMHeadModel(GPT2Config(n_positions=1024, attn_implementation="sdpa")),
    "smollm2-135m": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, tie_word_embeddings=True, attn_implementation="sdpa")),
    "qwen2.5-0.5b": lambda: Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, attn_implementation="sdpa")),
    "tinyllama-1.1b": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=2048,
        intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
        max_position_embeddings=2048, tie_word_embeddings=False, attn_implementation="sdpa")),
}


def seq_logps(model, ids, labels_mask):
    logits = model(input_ids=ids).logits[:, :-1].float()
    lp = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (lp * labels_mask[:, 1:]).sum(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="gpt2-124m,smollm2-135m,qwen2.5-0.5b,tinyllama-1.1b")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--score-batch", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median) after warm-ups")
    ap.add_argument("--out")
    a = ap.parse_args()
    dev = a.device
    cuda = dev.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    ac_dtype = torch.bfloat16 if cuda else torch.float32

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timeit(fn, warm=2, reps=a.reps):
        for _ in range(warm):
            fn()
        sync()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[len(ts) // 2]

    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    print(json.dumps(info), flush=True)
    rows = []
    for name in a.shapes.split(","):
        torch.manual_seed(0)
        pol = SHAPES[name]().to(dev)
        ref = SHAPES[name]().to(dev).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        V = pol.config.vocab_size
        L, P, B = a.seq_len, a.seq_len // 2, a.pairs
        ids = torch.randint(0, V, (2 * B, L), device=dev)
        lab = torch.zeros_like(ids, dtype=torch.float)
        lab[:, P:] = 1
        opt = torch.optim.AdamW(pol.parameters(), lr=1e-5, fused=cuda, foreach=not cuda)

        def step():
            with torch.autocast(dev.split(":")[0], dtype=ac_dtype, enabled=cuda):
                with torch.no_grad():
                    r = seq_logps(ref, ids, lab)
                pl = seq_logps(pol, ids, lab)
            logits = 0.1 * ((pl[:B] - r[:B]) - (pl[B:] - r[B:]))
            loss = -F.logsigmoid(logits).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t_step = timeit(step)
        mem = None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            step()
            mem = torch.cuda.max_memory_allocated() / 2**30
        del opt
        pol.zero_grad(set_to_none=True)

        sids = torch.randint(0, V, (a.score_batch, L), device=dev)
        slab = torch.ones_like(sids, dtype=torch.float)

        def score():
            with torch.no_grad(), torch.autocast(dev.split(":")[0], dtype=ac_dtype, enabled=cuda):
                seq_logps(ref, sids, slab)

        t_score = timeit(score)
        gm = ref.to(torch.bfloat16) if cuda else ref
        gids = torch.randint(0, V, (a.sample_batch, a.prompt_len), device=dev)

        def gen():
            with torch.no_grad():
                gm.generate(input_ids=gids, attention_mask=torch.ones_like(gids), do_sample=True,
                            max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, top_k=0, top_p=1.0,
                            temperature=1.0, pad_token_id=0)

        t_gen = timeit(gen, warm=1, reps=max(1, min(3, a.reps)))
        r = {"shape": name, "params_M": round(sum(p.numel() for p in pol.parameters()) / 1e6, 1),
             "dpo_tokens_per_s": 2 * B * L / t_step, "dpo_step_s": t_step, "dpo_peak_mem_GiB": mem,
             "score_tokens_per_s": a.score_batch * L / t_score,
             "sample_new_tokens_per_s": a.sample_batch * a.new_tokens / t_gen}
        print(json.dumps(r), flush=True)
        rows.append(r)
        del pol, ref, gm
        if cuda:
            torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump({**info, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
