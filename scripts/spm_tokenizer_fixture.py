#!/usr/bin/env python3
"""Independent reference for the SentencePiece GGUF tokenizer test: token ids of a few hundred strings
(ASCII, accents, many scripts, emoji, whitespace runs, newlines, digits, HTML, spelled control tokens)
under two tokenizers built from nothing but the same GGUF file, neither sharing code with activepref:

- Google's `sentencepiece` library, given a model proto rebuilt from the file's tokens, scores and types
  (BPE, byte fallback, no dummy prefix when `tokenizer.ggml.add_space_prefix` is false, spaces escaped to
  `▁`); user-defined runs of spaces are spelled with `▁`, as in the original model and as transformers
  respells them. Its ids are the fixture's `ids`.
- transformers' GGUF tokenizer conversion (an HF `tokenizers` BPE with merges recovered from the
  vocabulary), with control-token matching off, as activepref encodes every text that is not template
  scaffolding. Where it disagrees with sentencepiece the case also carries `transformers_ids`: on Gemma
  that is only a run of more spaces than the longest space token, which its merges split differently.

activepref's tokenizer follows llama.cpp's SentencePiece merge (crates/lm/src/tokenizer/spm.rs).

Writes crates/lm/tests/fixtures/gemma3_spm_tokens.json.
Needs: pip install gguf sentencepiece protobuf transformers tokenizers (no torch: the converter is called
directly).
Usage: python3 scripts/spm_tokenizer_fixture.py assets/gemma3-270m/gemma-3-270m-q4_k_m.gguf OUT.json
"""
import hashlib, json, os, random, sys

import gguf
import sentencepiece
import tokenizers
import transformers
from sentencepiece import sentencepiece_model_pb2 as sp_pb
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

FIXED = [
    "The capital of France is",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "a  b",
    "a   b",
    "a                                        b",  # longer than the longest space-run token
    "tab\tseparated\tvalues",
    "\t\tindented with tabs",
    "line one\nline two",
    "para one\n\npara two",
    "many\n\n\n\n\n\nnewlines",
    "windows\r\nline ends\r\n",
    "",
    " ",
    "\n",
    "x",
    "12345 67890 3.14159 2026-11-27 1,000,000",
    "Numbers 12345 and symbols: <b>&amp;</b>",
    "<table><tr><td>cell</td></tr></table>",
    "<h1>Title</h1><p>para</p>",
    "Café, naïve, résumé, Ångström, Straße, Ærø",
    "Tiếng Việt có dấu: Hà Nội, Thành phố Hồ Chí Minh",
    "Ελληνικά: Καλημέρα κόσμε",
    "Русский текст: Привет, мир!",
    "עברית: שלום עולם",
    "العربية: مرحبا بالعالم",
    "हिन्दी: नमस्ते दुनिया",
    "中文：你好，世界！",
    "日本語：こんにちは、世界。カタカナ",
    "한국어: 안녕하세요 세계",
    "ไทย: สวัสดีชาวโลก",
    "emoji 🎬🍿😀👍🏽 and 👨‍👩‍👧‍👦 family",
    "flags 🇫🇷🇩🇪🇯🇵",
    "math ∑∫√∞≠≤≥ and arrows →⇒↔",
    "rare CJK 𠀀𠀁𪚥 and private use \ue000\uf8ff",
    "control chars \x00\x01\x07\x1b[0m end",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "combining e\u0301 vs \u00e9",
    "ﬁ ligature and ＦＵＬＬＷＩＤＴＨ",
    "code: fn main() { println!(\"hi\"); }",
    "def f(x):\n    return x ** 2  # square\n",
    "https://example.com/path?query=1&b=2#frag",
    "email: someone@example.org",
    "<start_of_turn>user\nhi<end_of_turn>\n",
    "<bos><eos><pad><unk><mask>",
    "spelled control tokens <start_of_turn>model in user text",
    "<0x41> is not the byte token",
    "▁ is the space marker",
    "▁▁ two markers",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, there was a little girl named Lily.",
    "It was the best of times, it was the worst of times.",
    "A" * 300,
    "ab" * 100,
    "ÿ" * 20,
]

WORDS = (
    "the of and to in is was for on that with as by at from his her it an be this which or had are not but "
    "what all were when we there can been has more if will one about up out them so some would into than "
    "people time year way day man thing woman life child world school state family student group country "
    "movie film great terrible boring beautiful quiet strange wonderful awful plot actor scene ending music"
).split()
POOLS = [
    WORDS,
    ["Café", "naïve", "Straße", "ångström", "résumé", "piñata", "Dvořák", "Łódź", "Ærø", "façade"],
    ["你好", "世界", "映画", "こんにちは", "カタカナ", "안녕", "세계", "中文", "東京", "北京"],
    ["🎬", "🍿", "😀", "👍🏽", "🇫🇷", "👨‍👩‍👧", "✨", "🔥", "💯", "🤖"],
    ["0", "7", "42", "3.14", "1e-9", "2026", "100%", "$5", "#1", "-17"],
    [".", ",", "!", "?", ";", ":", "...", "—", "(", ")", "\"", "'", "<", ">", "/", "\\", "&", "*"],
    [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "      "],
    ["<b>", "</b>", "<td>", "<start_of_turn>", "<end_of_turn>", "<eos>", "<0x0A>", "[multimodal]"],
]


def random_strings(n, seed=20261128):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 14)):
            pool = POOLS[rng.choices(range(len(POOLS)), weights=[8, 2, 2, 1, 2, 2, 3, 1])[0]]
            parts.append(rng.choice(pool))
            if rng.random() < 0.6:
                parts.append(" ")
        out.append("".join(parts))
    return out


def read(path):
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if k.startswith(("tokenizer.", "general."))}


def transformers_tokenizer(md):
    d = {name: md[f"tokenizer.{key}"] for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
         if f"tokenizer.{key}" in md}
    tok, _ = convert_gguf_tokenizer(md["general.architecture"], d)
    tok.encode_special_tokens = True
    return tok


def sentencepiece_tokenizer(md):
    m = sp_pb.ModelProto()
    m.trainer_spec.model_type = sp_pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.vocab_size = len(md["tokenizer.ggml.tokens"])
    for key, field in [("unknown", "unk_id"), ("bos", "bos_id"), ("eos", "eos_id"), ("padding", "pad_id")]:
        setattr(m.trainer_spec, field, md.get(f"tokenizer.ggml.{key}_token_id", -1))
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    tokens, types, scores = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"], md["tokenizer.ggml.scores"]
    for t, ty, sc in zip(tokens, types, scores):
        p = m.pieces.add()
        p.piece = "\u2581" * len(t) if ty == 4 and t and not t.strip(" ") else t
        p.score, p.type = sc, ty
    return sentencepiece.SentencePieceProcessor(model_proto=m.SerializeToString())


def main(path, out):
    md = read(path)
    sp, hf = sentencepiece_tokenizer(md), transformers_tokenizer(md)
    texts = FIXED + random_strings(300)
    cases, disagree = [], 0
    for t in texts:
        case = {"text": t, "ids": sp.encode(t)}
        other = hf.encode(t, add_special_tokens=False).ids
        if other != case["ids"]:
            case["transformers_ids"] = other
            disagree += 1
        cases.append(case)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    fx = {
        "model": os.path.basename(path),
        "model_sha256": sha,
        "reference": f"sentencepiece {sentencepiece.__version__} on a model proto rebuilt from the GGUF; "
                     f"transformers {transformers.__version__} GGUF conversion (tokenizers {tokenizers.__version__}) "
                     f"agrees on {len(cases) - disagree} of {len(cases)}; no BOS, control-token matching off",
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "add_bos_token": md.get("tokenizer.ggml.add_bos_token"),
    }
    # One case a line: small diffs when the fixture is regenerated.
    head = json.dumps(fx, ensure_ascii=False, indent=1)[:-2]
    body = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
    with open(out, "w", encoding="utf-8") as f:
        f.write(f'{head},\n "cases": [\n{body}\n]}}\n')
    print(f"{len(cases)} cases -> {out}; transformers disagrees with sentencepiece on {disagree}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
