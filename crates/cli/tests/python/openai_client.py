"""Drives `activepref serve --openai` with the official `openai` Python package, as a user would.

Called by crates/cli/tests/openai_client.rs: argv = base_url, api key, model id, adapter dir, prompt token ids
(JSON). Prints one JSON object of what came back; the Rust test checks the numbers against the library.
"""
import json
import sys

import openai

base_url, key, model, adapter, ids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
c = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
out = {"openai_version": openai.__version__}

out["models"] = [m.id for m in c.models.list()]

# Scoring a token-id prompt: echo with logprobs and no completion.
r = c.completions.create(model=model, prompt=ids, max_tokens=0, echo=True, logprobs=0,
                         extra_body={"return_tokens_as_token_ids": True})
lp = r.choices[0].logprobs
out["echo"] = {"tokens": lp.tokens, "token_logprobs": lp.token_logprobs, "text": r.choices[0].text}

# Sampling with the most likely tokens and vLLM's extras through extra_body.
r = c.completions.create(model=model, prompt="Hello", max_tokens=5, n=2, seed=3, logprobs=2,
                         extra_body={"top_k": -1, "return_token_ids": True})
out["sample"] = [{"text": ch.text, "token_ids": ch.model_extra.get("token_ids"),
                  "token_logprobs": ch.logprobs.token_logprobs, "top": ch.logprobs.top_logprobs} for ch in r.choices]

# Chat log-probs in OpenAI's shape, and the same request streamed.
args = dict(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, seed=1)
r = c.chat.completions.create(logprobs=True, top_logprobs=2, **args)
out["chat"] = {"text": r.choices[0].message.content,
               "content": [{"token": t.token, "logprob": t.logprob, "top": [x.logprob for x in t.top_logprobs]}
                           for t in r.choices[0].logprobs.content]}
out["chat_streamed"] = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **args)
                               if ch.choices)

# vLLM's adapter routes through the client's own request machinery.
resp = c.post("/load_lora_adapter", body={"lora_name": "adapted", "lora_path": adapter}, cast_to=str)
out["load"] = resp
out["models_after_load"] = [m.id for m in c.models.list()]
r = c.completions.create(model="adapted", prompt=ids, max_tokens=0, echo=True, logprobs=0)
out["adapter_echo"] = r.choices[0].logprobs.token_logprobs

# Errors arrive as the client's own exception types.
def status_of(f):
    try:
        f()
    except openai.APIStatusError as e:
        return [type(e).__name__, e.status_code]
    return None

out["errors"] = {
    "unknown_model": status_of(lambda: c.completions.create(model="nope", prompt="x", max_tokens=1)),
    "too_many_logprobs": status_of(lambda: c.completions.create(model=model, prompt="x", max_tokens=1, logprobs=21)),
    "wrong_key": status_of(lambda: openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()),
    "load_twice": status_of(lambda: c.post("/load_lora_adapter", body={"lora_name": "adapted", "lora_path": adapter},
                                           cast_to=str)),
}
print(json.dumps(out))
