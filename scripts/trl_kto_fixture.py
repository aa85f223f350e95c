"""Writes crates/dpo/tests/fixtures/trl_kto.json: TRL's own KTO code (the release pinned below) run on fixed small
inputs, for `crates/dpo/tests/trl_kto_parity.rs` to compare `dpo::kto` with, number for number.

Run (once; the JSON file is committed):

    python3 -m venv /tmp/venv-trl
    /tmp/venv-trl/bin/pip install trl==0.27.2 torch "transformers==4.57.6" "datasets<4.5" "accelerate<1.13"
    /tmp/venv-trl/bin/python scripts/trl_kto_fixture.py

The pins are scripts/trl_loss_fixture.py's (same release as the DPO parity fixture). In 0.27.2 the trainer lives in
`trl/experimental/kto/kto_trainer.py` (`trl.KTOTrainer` is a deprecated alias of it).

What is recorded, and how TRL is called without a real model or dataset:
- `kto_loss` cases: `KTOTrainer.kto_loss(self_like, ...)` on fixed sequence log-prob tensors, a SimpleNamespace
  standing in for `self` with the attributes the method reads (`beta`, `loss_type`, the two weights,
  `calculate_KL`, `accelerator`). Covers both loss types, unequal weights, a negative KL estimate (clamped to 0)
  and batches with only desirable or only undesirable rows.
- `batches` + `logged`: two micro-batches through TRL's `get_batch_loss_metrics` (its `forward`,
  `_compute_kl_logps`, `get_batch_logps`, `kto_loss` and per-batch metric names), with a stand-in causal "model"
  whose logits are a fixed function of the input ids, and precomputed reference log-probs in the batch (TRL's
  `precompute_ref_log_probs` path). The KL rows are built by TRL's own `_get_kl_dataset`. Then TRL's `log`
  aggregates the stored per-batch metrics into the logged ones (`rewards/chosen` = Σ rewards/chosen_sum / Σ
  count/chosen, ...); `transformers.Trainer.log` is patched to capture the dict instead of printing it.
- `kl_rotation` and `unpaired`: the order `_get_kl_dataset` and `unpair_preference_dataset` put rows in.
"""

import json
import os
from collections import defaultdict
from types import SimpleNamespace

import torch
import transformers
import trl
from accelerate import Accelerator
from datasets import Dataset
from trl.data_utils import unpair_preference_dataset
from trl.experimental.kto import KTOTrainer
from trl.experimental.kto.kto_trainer import _get_kl_dataset

assert trl.__version__ == "0.27.2", f"pinned TRL 0.27.2, found {trl.__version__}"
torch.set_default_dtype(torch.float64)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "dpo", "tests", "fixtures", "trl_kto.json")
ACC = Accelerator(cpu=True)
PAD = -100  # TRL's label_pad_token_id


def loss_self(loss_type, beta, wd, wu):
    return SimpleNamespace(
        beta=beta,
        loss_type=loss_type,
        desirable_weight=wd,
        undesirable_weight=wu,
        calculate_KL=loss_type != "apo_zero_unpaired",  # kto_trainer.py:499-501
        accelerator=ACC,
    )


def kto_loss_cases():
    # Six rows; `label` says which are desirable. KL log-probs belong to the mismatched pairs of the same rows.
    policy = [-12.5, -30.25, -8.0, -21.75, -15.5, -9.125]
    reference = [-13.0, -29.0, -9.5, -20.5, -15.0, -10.0]
    policy_kl = [-40.0, -33.5, -27.25, -45.0, -38.75, -31.0]
    ref_kl_pos = [-41.5, -34.0, -28.0, -44.25, -40.0, -31.5]  # mean(policy_kl - ref) > 0
    ref_kl_neg = [-39.0, -33.0, -26.0, -46.0, -38.0, -30.5]  # mean(policy_kl - ref) < 0: clamped to 0
    cases = []
    for name, loss_type, beta, wd, wu, label, ref_kl in [
        ("kto", "kto", 0.1, 1.0, 1.0, [True, False, True, True, False, False], ref_kl_pos),
        ("kto beta 0.5 weights", "kto", 0.5, 1.0, 1.33, [True, False, True, True, False, False], ref_kl_pos),
        ("kto negative kl", "kto", 0.3, 0.7, 1.0, [False, True, True, False, True, False], ref_kl_neg),
        ("kto only desirable", "kto", 0.2, 1.0, 1.0, [True] * 6, ref_kl_pos),
        ("kto only undesirable", "kto", 0.2, 1.0, 1.5, [False] * 6, ref_kl_pos),
        ("apo_zero_unpaired", "apo_zero_unpaired", 0.5, 0.8, 1.2, [True, False, True, True, False, False], None),
    ]:
        lab = torch.tensor(label)
        p, r = torch.tensor(policy), torch.tensor(reference)
        pk = torch.tensor(policy_kl)
        rk = torch.tensor(ref_kl) if ref_kl is not None else None
        s = loss_self(loss_type, beta, wd, wu)
        losses, chosen_rewards, rejected_rewards, kl = KTOTrainer.kto_loss(
            s, p[lab], p[~lab], pk if s.calculate_KL else None, r[lab], r[~lab], rk
        )
        cases.append(
            {
                "name": name,
                "loss_type": loss_type,
                "beta": beta,
                "desirable_weight": wd,
                "undesirable_weight": wu,
                "label": label,
                "policy_logps": policy,
                "reference_logps": reference,
                "policy_KL_logps": policy_kl if s.calculate_KL else None,
                "reference_KL_logps": ref_kl,
                # TRL's order: the desirable rows' losses, then the undesirable rows' (kto_trainer.py:1061-1064).
                "losses": losses.tolist(),
                "loss": float(losses.nanmean()),
                "chosen_rewards": chosen_rewards.tolist(),
                "rejected_rewards": rejected_rewards.tolist(),
                "kl": float(kl.reshape(-1)[0]),
            }
        )
    return cases


class StandIn(torch.nn.Module):
    """A causal 'model' whose logits at position t depend on the ids up to t (fixed random tables)."""

    def __init__(self, vocab, dim, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(vocab, dim, generator=g)
        self.out = torch.randn(dim, vocab, generator=g)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        e = self.emb[input_ids]  # (B, T, D)
        ctx = e.cumsum(1) / torch.arange(1, e.shape[1] + 1).reshape(1, -1, 1)
        return SimpleNamespace(logits=(e + 0.5 * ctx) @ self.out)


def pad_rows(rows, value):
    t = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (t - len(r)) for r in rows]), torch.tensor(
        [[1] * len(r) + [0] * (t - len(r)) for r in rows]
    )


def trl_batch(prompts, answers, labels, ref_model):
    """A padded KTO batch as TRL's collator makes it, KL rows from TRL's `_get_kl_dataset` and reference log-probs
    precomputed (the `reference_logps` / `reference_KL_logps` columns)."""
    kl_answers = _get_kl_dataset(
        {"answer_input_ids": list(answers), "answer_attention_mask": [[1] * len(a) for a in answers]}
    )["answer_input_ids"]
    batch = {"label": labels}
    for prefix, ans in [("", answers), ("KL_", kl_answers)]:
        ids = [p + a for p, a in zip(prompts, ans)]
        labs = [[PAD] * len(p) + a for p, a in zip(prompts, ans)]
        batch[f"{prefix}completion_input_ids"], batch[f"{prefix}completion_attention_mask"] = pad_rows(ids, 0)
        batch[f"{prefix}completion_labels"], _ = pad_rows(labs, PAD)
    with torch.no_grad():
        get = KTOTrainer.get_batch_logps
        batch["reference_logps"] = get(
            ref_model(batch["completion_input_ids"]).logits, batch["completion_labels"], False, PAD
        )
        batch["reference_KL_logps"] = get(
            ref_model(batch["KL_completion_input_ids"]).logits, batch["KL_completion_labels"], False, PAD
        )
    return batch


def trainer_like(loss_type, beta, wd, wu):
    t = KTOTrainer.__new__(KTOTrainer)  # no __init__: only the attributes get_batch_loss_metrics and log read
    t.accelerator = ACC
    t.args = SimpleNamespace(use_liger_kernel=False)
    t.calculate_KL = loss_type != "apo_zero_unpaired"
    t.aux_loss_enabled = False
    t.label_pad_token_id = PAD
    t.loss_type = loss_type
    t.beta = beta
    t.desirable_weight = wd
    t.undesirable_weight = wu
    t._stored_metrics = defaultdict(lambda: defaultdict(list))
    return t


def metric_batches():
    vocab = 9
    policy = StandIn(vocab, 5, 7)
    reference = StandIn(vocab, 5, 8)
    micro = [
        # (prompt ids, completion ids, label): a mix, then a batch of one label only (no rejected rows).
        [([1, 4], [5, 6, 2], True), ([1, 3, 3], [7, 2], False), ([1, 8], [4, 4, 6, 2], True), ([1], [6, 2], False)],
        [([1, 5, 5], [3, 2], True), ([1, 7], [8, 8, 2], True), ([1, 2, 6], [5, 2], True)],
    ]
    params = {"loss_type": "kto", "beta": 0.25, "desirable_weight": 1.0, "undesirable_weight": 1.2}
    t = trainer_like(params["loss_type"], params["beta"], params["desirable_weight"], params["undesirable_weight"])
    out = []
    losses = []
    for rows in micro:
        prompts = [r[0] for r in rows]
        answers = [r[1] for r in rows]
        labels = [r[2] for r in rows]
        batch = trl_batch(prompts, answers, labels, reference)
        with torch.no_grad():
            # The sequence log-probs TRL's forward computes (what the crate's scorer gives the loss).
            logps = KTOTrainer.get_batch_logps(
                policy(batch["completion_input_ids"]).logits, batch["completion_labels"], False, PAD
            )
            kl_logps = KTOTrainer.get_batch_logps(
                policy(batch["KL_completion_input_ids"]).logits, batch["KL_completion_labels"], False, PAD
            )
            loss, metrics = KTOTrainer.get_batch_loss_metrics(t, policy, batch)
        t.store_metrics(metrics, train_eval="train")
        losses.append(float(loss))
        out.append(
            {
                "label": labels,
                "policy_logps": logps.tolist(),
                "reference_logps": batch["reference_logps"].tolist(),
                "policy_KL_logps": kl_logps.tolist(),
                "reference_KL_logps": batch["reference_KL_logps"].tolist(),
                "loss": float(loss),
                "metrics": {k: float(v) for k, v in metrics.items()},
            }
        )
    captured = {}
    transformers.Trainer.log = lambda self, logs, start_time=None: captured.update(logs)
    # HF's loop logs the window's mean loss (and grad_norm, learning_rate, epoch, which TRL does not touch).
    KTOTrainer.log(t, {"loss": sum(losses) / len(losses)})
    return params, out, captured


def kl_rotation():
    ids = [[10], [11], [12], [13]]
    got = _get_kl_dataset({"answer_input_ids": ids, "answer_attention_mask": [[1]] * 4})["answer_input_ids"]
    return [ids.index(x) for x in got]


def unpaired():
    ds = Dataset.from_dict(
        {"prompt": ["p0", "p1", "p2"], "chosen": [" c0", " c1", " c2"], "rejected": [" r0", " r1", " r2"]}
    )
    return [dict(r) for r in unpair_preference_dataset(ds)]


def main():
    params, batches, logged = metric_batches()
    fixture = {
        "generated_by": "scripts/trl_kto_fixture.py",
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "kto_loss": kto_loss_cases(),
        "batch_params": params,
        "batches": batches,
        "logged": logged,
        "kl_rotation": kl_rotation(),
        "unpaired": unpaired(),
    }
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
