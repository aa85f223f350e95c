#!/usr/bin/env python3
"""Independent reference for the golden-logit test: a float64 numpy forward of the SmolLM2 GGUF.

It dequantises the GGUF tensors with the `gguf` package (llama.cpp's own Python reader, not candle),
keeps llama.cpp's permuted Q/K layout and applies llama.cpp's interleaved ("NORM") RoPE to it -- so it
shares neither the dequantiser nor the Q/K un-permutation nor the RoPE code with activepref.

Writes crates/lm/tests/fixtures/smollm2_reference.json. Needs: pip install gguf numpy
Usage: python3 scripts/reference_logits.py assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf OUT.json
"""
import json, sys
import numpy as np
import gguf

# Token ids from activepref's tokenizer (checked separately by the tokenizer test) and continuations.
CASES = [
    {"text": "The movie was", "prompt": [504, 7704, 436], "completion": [3338, 28, 306, 253]},
    {"text": "I loved this film because", "prompt": [57, 5732, 451, 4771, 975], "completion": [357, 314, 1435]},
    {"text": "Numbers 12345 and symbols: <b>&amp;</b>",
     "prompt": [39006, 216, 33, 34, 35, 36, 37, 284, 7349, 42, 2067, 82, 46, 22, 1613, 43, 9617, 82, 46],
     "completion": [198, 504]},
]

def main(path, out):
    r = gguf.GGUFReader(path)
    f = {k: v for k, v in r.fields.items()}
    def scalar(k):
        return f[k].contents()
    L = scalar("llama.block_count"); d = scalar("llama.embedding_length")
    nh = scalar("llama.attention.head_count"); nkv = scalar("llama.attention.head_count_kv")
    eps = scalar("llama.attention.layer_norm_rms_epsilon"); base = scalar("llama.rope.freq_base")
    hd = d // nh
    W = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        W[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim != len(t.shape) or list(a.shape) != [int(x) for x in reversed(t.shape)] else a
    emb = W["token_embd.weight"]  # (V, d)
    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
    def rope_interleaved(x, pos):  # x: (T, H, hd); llama.cpp NORM mode rotates adjacent pairs
        i = np.arange(hd // 2)
        theta = pos[:, None] * base ** (-2.0 * i / hd)  # (T, hd/2)
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2] = x0 * c - x1 * s
        y[..., 1::2] = x0 * s + x1 * c
        return y
    def forward(ids):
        T = len(ids); x = emb[ids]; pos = np.arange(T, dtype=np.float64)
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for l in range(L):
            p = f"blk.{l}."
            h = rms(x, W[p + "attn_norm.weight"])
            q = (h @ W[p + "attn_q.weight"].T).reshape(T, nh, hd)
            k = (h @ W[p + "attn_k.weight"].T).reshape(T, nkv, hd)
            v = (h @ W[p + "attn_v.weight"].T).reshape(T, nkv, hd)
            q = rope_interleaved(q, pos); k = rope_interleaved(k, pos)
            rep = nh // nkv
            k = np.repeat(k, rep, axis=1); v = np.repeat(v, rep, axis=1)
            att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
            att = np.exp(att - att.max(-1, keepdims=True)); att /= att.sum(-1, keepdims=True)
            y = np.einsum("hts,shd->thd", att, v).reshape(T, d)
            x = x + y @ W[p + "attn_output.weight"].T
            h = rms(x, W[p + "ffn_norm.weight"])
            g = h @ W[p + "ffn_gate.weight"].T
            u = h @ W[p + "ffn_up.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
        x = rms(x, W["output_norm.weight"])
        head = W.get("output.weight", emb)
        logits = x @ head.T
        return logits - (np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) + logits.max(-1, keepdims=True))
    cases = []
    for c in CASES:
        lp = forward(c["prompt"] + c["completion"])
        last = lp[len(c["prompt"]) - 1]
        top = np.argsort(-last)[:10]
        comp = sum(lp[len(c["prompt"]) - 1 + j][t] for j, t in enumerate(c["completion"]))
        cases.append({**c, "next_top10_ids": [int(i) for i in top], "next_top10_logprobs": [float(last[i]) for i in top],
                      "completion_logprob_sum": float(comp)})
        print(c["text"], [int(i) for i in top[:5]], float(comp))
    json.dump({"model": path.split("/")[-1], "generator": "scripts/reference_logits.py (numpy float64, gguf dequantize)",
               "tolerance_abs": 1e-3, "cases": cases}, open(out, "w"), indent=1)

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
