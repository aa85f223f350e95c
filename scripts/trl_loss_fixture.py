"""Writes the TRL-parity fixtures of crates/dpo/tests: every loss and option of `dpo::loss` computed by TRL's own
code (the release pinned below) on fixed small log-prob tensors, and PyTorch's RAdam on a fixed gradient sequence.

Run (once; the JSON files are committed):

    python3 -m venv /tmp/venv-trl
    /tmp/venv-trl/bin/pip install trl==0.27.2 torch "transformers==4.57.6" "datasets<4.5" "accelerate<1.13"
    /tmp/venv-trl/bin/python scripts/trl_loss_fixture.py

Why these pins: TRL 0.27.2 is the newest release with every option the crate takes (`f_divergence_type`,
`use_weighting`, `ld_alpha`, `rpo_alpha`, `aot`, `aot_pair`); it imports with transformers 4.57 (5.x changed a
helper it calls) and a datasets/accelerate of its time.

How TRL is called without a model or dataset: its loss methods are plain functions of `self`, so each is called
as `DPOTrainer.dpo_loss(self_like, ...)` with a SimpleNamespace carrying the attributes it reads. Sequence-level
losses go through `dpo_loss` (and `CPOTrainer.cpo_loss`, `ORPOTrainer.odds_ratio_loss`); the options that look
inside completions (`use_weighting`, `ld_alpha`, `rpo_alpha`, `sft`) go through `get_batch_loss_metrics` and
`concatenated_forward` with a stand-in model that returns fixed logits, so TRL itself computes the per-token
log-probs, the pooled NLL, the WPO weights and the LD-DPO sums.

Two layout choices keep TRL 0.27.2's indexing from shifting what it measures (both are noted in dpo::loss):
- every completion ends with a token the stand-in model predicts with probability 1 (log-prob 0, log Σp² 0), so
  TRL's WPO mean, which pairs each token's log-prob with the next position's log Σp² and leaves out the last
  log-prob, equals the aligned mean the crate computes;
- for LD-DPO, TRL compares the split point with positions in the whole prompt + completion row; appending one
  more probability-1 token to each completion in TRL's input (one per prompt token) puts its split exactly at
  the shorter completion's length, the paper's definition that the crate implements, without changing any sum.
"""

import json
import math
import os
import types
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import trl
from accelerate import Accelerator
from trl import DPOTrainer
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl.trainer.dpo_config import FDivergenceConstants, FDivergenceType
from trl.trainer.utils import RunningMoments

assert trl.__version__ == "0.27.2", f"pinned TRL 0.27.2, found {trl.__version__}"
torch.set_default_dtype(torch.float64)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "dpo", "tests", "fixtures")
ACC = Accelerator(cpu=True)

V = 6  # vocabulary; id 0 is padding (TRL's NLL ignores label 0)
CERTAIN = -1e4  # logit gap that makes a token's probability exactly 1 in f64
CHOSEN_LEN = [3, 5, 2, 4]
REJECTED_LEN = [4, 2, 2, 6]
B = len(CHOSEN_LEN)
# Reference sequence log-probs (precomputed, as TRL's precompute_ref_log_probs): the policy's sums shifted so
# the log-ratios differ in sign and size from pair to pair.
REF_SHIFT_CHOSEN = [0.7, -1.3, 0.4, -0.2]
REF_SHIFT_REJECTED = [-0.5, 0.9, -0.8, 1.1]


def make_rows(extra_certain):
    """Token ids and stand-in logits for the 2B rows [chosen..., rejected...], each `[prompt] + completion`.

    The completion's last token is certain; `extra_certain` appends that many more certain tokens (for LD-DPO).
    Returns (prompt ids, chosen ids, rejected ids, logits (2B, S, V))."""
    g = torch.Generator().manual_seed(20240607)
    lens = CHOSEN_LEN + REJECTED_LEN
    width = 1 + max(lens) + extra_certain
    logits = torch.zeros(2 * B, width, V)
    comps = []
    for r, n in enumerate(lens):
        toks = (torch.randint(1, V, (n,), generator=g)).tolist()
        # Position j predicts the token at j + 1; completion token k sits at 1 + k.
        for k in range(n + extra_certain):
            if k < n - 1:
                logits[r, k] = 2.0 * torch.randn(V, generator=g)
            else:
                row = torch.full((V,), CERTAIN)
                row[toks[k] if k < n else 1] = 0.0
                logits[r, k] = row
        comps.append(toks + [1] * extra_certain)
    prompt = [[3] for _ in range(B)]
    return prompt, comps[:B], comps[B:], logits


def per_token(logits, comps, offset):
    """Per-token log-probs and log Σp² of each completion (the crate's TokenLogps inputs), zero-padded."""
    t = max(len(c) for c in comps)
    lp, lss, mask = [], [], []
    for i, c in enumerate(comps):
        ls = F.log_softmax(logits[offset + i], dim=-1)
        row_lp = [ls[k, tok].item() for k, tok in enumerate(c)]
        row_lss = [torch.logsumexp(2 * ls[k], dim=-1).item() for k in range(len(c))]
        pad = t - len(c)
        lp.append(row_lp + [0.0] * pad)
        lss.append(row_lss + [0.0] * pad)
        mask.append([1.0] * len(c) + [0.0] * pad)
    return lp, lss, mask


def pad(rows):
    t = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (t - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (t - len(r)) for r in rows])
    return ids, mask


class StandIn(torch.nn.Module):
    """A 'model' whose logits are fixed: TRL's forward code computes everything else."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, **kwargs):
        assert input_ids.shape == self.logits.shape[:2], (input_ids.shape, self.logits.shape)
        return SimpleNamespace(logits=self.logits)


def dpo_self(loss_type, params, use_weighting=False, rpo_alpha=None, ld_alpha=None):
    """The attributes DPOTrainer.dpo_loss / concatenated_forward / get_batch_loss_metrics read."""
    f_type = FDivergenceType(params.get("f_divergence_type", "reverse_kl"))
    s = SimpleNamespace(
        accelerator=ACC,
        reference_free=False,
        f_divergence_type=f_type,
        f_divergence_params={
            FDivergenceConstants.ALPHA_DIVERGENCE_COEF_KEY: params.get("f_alpha_divergence_coef", 1.0)
        },
        beta=params["beta"],
        label_smoothing=params.get("label_smoothing", 0.0),
        loss_type=loss_type,
        loss_weights=params.get("loss_weights"),
        running=RunningMoments(ACC),
        args=SimpleNamespace(
            discopop_tau=params.get("discopop_tau", 0.05),
            rpo_alpha=rpo_alpha,
            ld_alpha=ld_alpha,
            use_liger_kernel=False,
        ),
        use_weighting=use_weighting,
        aux_loss_enabled=False,
        is_encoder_decoder=False,
        pad_token_id=0,
        max_length=None,
        truncation_mode="keep_end",
        padding_free=False,
        use_logits_to_keep=False,
    )
    s.concatenated_inputs = DPOTrainer.concatenated_inputs
    s.concatenated_forward = types.MethodType(DPOTrainer.concatenated_forward, s)
    s.dpo_loss = types.MethodType(DPOTrainer.dpo_loss, s)
    return s


def trl_batch(prompt, chosen, rejected, ref_c, ref_r):
    p_ids, p_mask = pad(prompt)
    c_ids, c_mask = pad(chosen)
    r_ids, r_mask = pad(rejected)
    return {
        "prompt_input_ids": p_ids,
        "prompt_attention_mask": p_mask,
        "chosen_input_ids": c_ids,
        "chosen_attention_mask": c_mask,
        "rejected_input_ids": r_ids,
        "rejected_attention_mask": r_mask,
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }


def main():
    prompt, chosen, rejected, logits = make_rows(extra_certain=0)
    model = StandIn(logits)
    lp_c, lss_c, m_c = per_token(logits, chosen, 0)
    lp_r, lss_r, m_r = per_token(logits, rejected, B)

    # TRL's own sequence sums and pooled NLL for this batch (concatenated_forward with rpo on).
    base = dpo_self(["sigmoid"], {"beta": 0.1}, rpo_alpha=1.0)
    with torch.no_grad():
        out = base.concatenated_forward(model, trl_batch(prompt, chosen, rejected, None, None))
    pol_c, pol_r, nll = out["chosen_logps"], out["rejected_logps"], out["nll_loss"]
    ref_c = pol_c - torch.tensor(REF_SHIFT_CHOSEN)
    ref_r = pol_r - torch.tensor(REF_SHIFT_REJECTED)
    len_c = torch.tensor(CHOSEN_LEN, dtype=torch.float64)
    len_r = torch.tensor(REJECTED_LEN, dtype=torch.float64)

    cases = []

    def add(name, loss_type, params, per_pair, loss, tokens=False):
        cases.append(
            {
                "name": name,
                "loss_type": loss_type,
                "loss_weights": params.pop("loss_weights", None),
                "params": params,
                "tokens": tokens,
                "per_pair": None if per_pair is None else [float(v) for v in per_pair],
                "loss": float(loss),
            }
        )

    # Sequence-level DPOTrainer losses (dpo_loss). IPO sees length-averaged log-probs, as TRL's
    # concatenated_forward divides by the completion length for it (policy and reference).
    seq = [
        ("sigmoid", {"beta": 0.1}),
        ("sigmoid", {"beta": 0.5, "label_smoothing": 0.1}),
        ("sigmoid", {"beta": 0.5, "f_divergence_type": "js_divergence"}),
        ("sigmoid", {"beta": 0.5, "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.5}),
        ("sigmoid", {"beta": 0.5, "f_divergence_type": "alpha_divergence"}),
        ("robust", {"beta": 0.5, "label_smoothing": 0.2}),
        ("robust", {"beta": 0.5, "label_smoothing": 0.2, "f_divergence_type": "js_divergence"}),
        ("ipo", {"beta": 0.5}),
        ("ipo", {"beta": 0.5, "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3}),
        ("hinge", {"beta": 0.5}),
        ("hinge", {"beta": 0.5, "f_divergence_type": "js_divergence"}),
        ("exo_pair", {"beta": 0.5, "label_smoothing": 0.1}),
        ("exo_pair", {"beta": 0.5, "label_smoothing": 0.1, "f_divergence_type": "alpha_divergence",
                      "f_alpha_divergence_coef": 0.7}),
        ("nca_pair", {"beta": 0.5}),
        ("bco_pair", {"beta": 0.5}),
        ("sppo_hard", {"beta": 0.5}),
        ("aot", {"beta": 0.5}),
        ("aot", {"beta": 0.5, "label_smoothing": 0.1}),
        ("aot_pair", {"beta": 0.5, "label_smoothing": 0.1}),
        ("apo_zero", {"beta": 0.5}),
        ("apo_down", {"beta": 0.5}),
        ("discopop", {"beta": 0.5, "discopop_tau": 0.05}),
        ("discopop", {"beta": 0.5, "discopop_tau": 0.3}),
    ]
    for lt, params in seq:
        s = dpo_self([lt], params)
        if lt == "ipo":
            args = (pol_c / len_c, pol_r / len_r, ref_c / len_c, ref_r / len_r)
        else:
            args = (pol_c, pol_r, ref_c, ref_r)
        losses, _, _ = s.dpo_loss(*args, lt, None)
        params = dict(params)
        if lt == "bco_pair":
            # TRL's δ is the running mean of the batch's rewards; with a fresh RunningMoments, this batch's mean.
            params["bco_delta"] = float(s.running.mean)
        add(f"{lt} {params}", [lt], params, losses, losses.mean())

    # CPO and SimPO (CPOTrainer.cpo_loss; SimPO on length-averaged log-probs, cpo_trainer.py:827). CPO adds
    # cpo_alpha × the pooled chosen NLL (cpo_trainer.py:868), the same cross-entropy as DPOTrainer's nll_loss.
    for lt, params in [
        ("cpo", {"beta": 0.5, "label_smoothing": 0.1, "cpo_alpha": 0.7}),
        ("cpo", {"beta": 0.1, "cpo_alpha": 1.0}),
        ("simpo", {"beta": 0.5, "label_smoothing": 0.1, "simpo_gamma": 0.3}),
        ("simpo", {"beta": 2.0, "simpo_gamma": 0.5}),
    ]:
        s = SimpleNamespace(
            alpha=0.0,
            beta=params["beta"],
            label_smoothing=params.get("label_smoothing", 0.0),
            simpo_gamma=params.get("simpo_gamma", 0.5),
            loss_type="simpo" if lt == "simpo" else "sigmoid",
            accelerator=ACC,
        )
        args = (pol_c / len_c, pol_r / len_r) if lt == "simpo" else (pol_c, pol_r)
        losses, _, _ = CPOTrainer.cpo_loss(s, *args)
        if lt == "cpo":
            per_pair = losses + params["cpo_alpha"] * nll
            add(f"{lt} {params}", [lt], dict(params), per_pair, losses.mean() + params["cpo_alpha"] * nll)
        else:
            add(f"{lt} {params}", [lt], dict(params), losses, losses.mean())

    # ORPO (ORPOTrainer.odds_ratio_loss on mean log-probs, orpo_trainer.py:783; loss = NLL − mean, :827).
    for beta in [0.1, 0.5]:
        s = SimpleNamespace(beta=beta, accelerator=ACC)
        losses, _, _, _, _ = ORPOTrainer.odds_ratio_loss(s, pol_c / len_c, pol_r / len_r)
        add(f"orpo beta={beta}", ["orpo"], {"beta": beta}, nll - losses, nll - losses.mean())

    # Token-level options through get_batch_loss_metrics (TRL's composition, dpo_trainer.py:1727-1813).
    def batch_loss(loss_type, params, use_weighting=False, rpo_alpha=None):
        s = dpo_self(loss_type, params, use_weighting=use_weighting, rpo_alpha=rpo_alpha)
        with torch.no_grad():
            loss, _ = DPOTrainer.get_batch_loss_metrics(s, model, trl_batch(prompt, chosen, rejected, ref_c, ref_r))
        return loss

    for lt, params, wpo, rpo in [
        (["sft"], {"beta": 0.1}, False, None),
        (["sigmoid", "sft"], {"beta": 0.5, "loss_weights": [1.0, 0.5]}, False, None),
        (["sigmoid"], {"beta": 0.5}, False, 1.0),
        (["sigmoid"], {"beta": 0.5, "label_smoothing": 0.1}, True, None),
        (["sigmoid"], {"beta": 0.5}, True, 0.5),
        (["apo_zero", "sft"], {"beta": 0.5, "loss_weights": [1.0, 0.2]}, True, None),
        (["hinge"], {"beta": 0.5, "f_divergence_type": "js_divergence"}, True, 0.3),
    ]:
        loss = batch_loss(lt, dict(params), use_weighting=wpo, rpo_alpha=rpo)
        p = dict(params)
        p["use_weighting"] = wpo
        if rpo is not None:
            p["rpo_alpha"] = rpo
        add(f"{lt} {p}", lt, p, None, loss, tokens=True)

    # LD-DPO: TRL's own concatenated_forward on a layout with one more certain token per completion (see the
    # module doc), so its split falls at the shorter completion's length.
    prompt_ld, chosen_ld, rejected_ld, logits_ld = make_rows(extra_certain=1)
    model_ld = StandIn(logits_ld)
    ld = []
    for lt, params, alpha in [
        (["sigmoid"], {"beta": 0.5}, 0.5),
        (["sigmoid"], {"beta": 0.5}, 0.0),
        (["apo_down"], {"beta": 0.5}, 0.25),
    ]:
        s = dpo_self(lt, params, ld_alpha=alpha)
        batch = trl_batch(prompt_ld, chosen_ld, rejected_ld, ref_c, ref_r)
        with torch.no_grad():
            out_ld = s.concatenated_forward(model_ld, batch)
            loss, _ = DPOTrainer.get_batch_loss_metrics(s, model_ld, batch)
        p = dict(params)
        p["ld_alpha"] = alpha
        add(f"{lt} {p}", lt, p, None, loss, tokens=True)
        ld.append(
            {
                "ld_alpha": alpha,
                "chosen": out_ld["chosen_logps"].tolist(),
                "rejected": out_ld["rejected_logps"].tolist(),
            }
        )

    fixture = {
        "generated_by": "scripts/trl_loss_fixture.py",
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "inputs": {
            "chosen": pol_c.tolist(),
            "rejected": pol_r.tolist(),
            "ref_chosen": ref_c.tolist(),
            "ref_rejected": ref_r.tolist(),
            "chosen_len": CHOSEN_LEN,
            "rejected_len": REJECTED_LEN,
            "token_chosen": lp_c,
            "token_rejected": lp_r,
            "token_chosen_mask": m_c,
            "token_rejected_mask": m_r,
            "token_chosen_log_sum_sq": lss_c,
            "token_rejected_log_sum_sq": lss_r,
        },
        "nll_loss": float(nll),
        "ld_logps": ld,
        "cases": cases,
    }
    with open(os.path.join(OUT, "trl_losses.json"), "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")

    write_radam()


def write_radam():
    """PyTorch's RAdam (torch.optim.RAdam, decoupled weight decay as the crate's) for 12 steps: steps 1-5 are
    un-rectified (ρ_t ≤ 5 with β2 = 0.999), the rest take the rectified branch."""
    theta0 = [1.0, -2.0, 0.5]
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    p = torch.nn.Parameter(torch.tensor(theta0))
    opt = torch.optim.RAdam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, decoupled_weight_decay=True)
    grads, thetas, rho = [], [], []
    rho_inf = 2 / (1 - b2) - 1
    for t in range(1, 13):
        g = [math.sin(0.7 * t + i) * (1.0 + 0.3 * i) for i in range(3)]
        p.grad = torch.tensor(g)
        opt.step()
        grads.append(g)
        thetas.append(p.detach().tolist())
        rho.append(rho_inf - 2 * t * b2**t / (1 - b2**t))
    with open(os.path.join(OUT, "radam_torch.json"), "w") as f:
        json.dump(
            {
                "generated_by": "scripts/trl_loss_fixture.py",
                "torch_version": torch.__version__,
                "theta0": theta0,
                "lr": lr,
                "beta1": b1,
                "beta2": b2,
                "eps": eps,
                "weight_decay": wd,
                "grads": grads,
                "theta": thetas,
                "rho_t": rho,
            },
            f,
            indent=1,
        )
        f.write("\n")


if __name__ == "__main__":
    main()
