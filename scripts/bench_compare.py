"""`activepref bench lm` / `bench dpo` and their PyTorch peer (scripts/bench/torch_peer_cpu.py), in one run,
one measure after the other, with the ratios printed last. Ratios travel between machines; absolute
numbers do not.

Usage (torch, transformers and peft in a venv; never in CI or the tests):
    python3 -m venv /tmp/venv-peer && /tmp/venv-peer/bin/pip install torch transformers peft
    cargo build --release
    /tmp/venv-peer/bin/python scripts/bench_compare.py [--bin target/release/activepref] [--steps 3] [--only lm|dpo]
        [--rounds 2]

With --rounds N each measure runs N times on each side, alternating ours and the peer, and each side keeps its
best: on a shared VM whose speed drifts with its neighbours' load (hypervisor steal), the best of several
alternating runs compares the two programs rather than two moments of the machine.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "bench", "torch_peer_cpu.py")
# (our `bench dpo` mode index, the peer's mode name, the label printed)
DPO_MODES = [(0, "full-live", "DPO full, live reference"), (1, "full-cache", "DPO full, reference cache"),
             (2, "lora-live", "DPO LoRA r16, live reference"), (3, "lora-cache", "DPO LoRA r16, reference cache")]


def json_lines(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "activepref"))
    ap.add_argument("--steps", type=int, default=3, help="timed steps of each DPO measure (after one warm-up)")
    ap.add_argument("--only", choices=["lm", "dpo"])
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs of each side; each keeps its best")
    a = ap.parse_args()
    env = dict(os.environ, STEPS=str(a.steps), THREADS=os.environ.get("THREADS", "2"))
    rows = []  # (measure, ours, peer, our RSS, peer RSS)
    def best(runs, key):
        return max(runs, key=lambda r: r[key])

    if a.only in (None, "lm"):
        print("bench lm (smollm2-135m shape) ...", file=sys.stderr, flush=True)
        ours_runs, peer_runs = [], []
        for _ in range(a.rounds):
            ours_runs.append({r["measure"]: r for r in json_lines([a.bin, "bench", "lm", "--shapes", "smollm2-135m", "--json"])})
            peer_runs.append({r["measure"]: r for r in json_lines([sys.executable, PEER, "lm"], env)})
        for m in ["forward 4x128", "fwd+bwd 4x128", "decode batch 32", "generate batch 32 (+prefill)"]:
            o = max(r[m]["tokens_per_s"] for r in ours_runs)
            p = max(r[m]["tokens_per_s"] for r in peer_runs)
            rows.append((m, o, p, None, None))
    if a.only in (None, "dpo"):
        for idx, mode, label in DPO_MODES:
            print(f"{label} ...", file=sys.stderr, flush=True)
            os_, ps = [], []
            for _ in range(a.rounds):
                os_.append(json_lines([a.bin, "bench", "dpo", "--steps", str(a.steps), "--one", f"smollm2-135m:{idx}"])[0])
                ps.append(json_lines([sys.executable, PEER, "dpo", mode], env)[0])
            o, p = best(os_, "tokens_per_s"), best(ps, "tokens_per_s")
            rows.append((label + " (2 pairs x 64)", o["tokens_per_s"], p["tokens_per_s"], o["peak_rss_mib"],
                         p["peak_rss_mib"]))
    print(f"{'measure (tokens/s)':<44} {'activepref':>11} {'PyTorch':>9} {'RSS MiB ours/peer':>18} {'ratio':>7}")
    for m, o, p, ro, rp in rows:
        rss = f"{ro:.0f}/{rp:.0f}" if ro else "-"
        print(f"{m:<44} {o:>11.1f} {p:>9.1f} {rss:>18} {o / p:>6.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([dict(measure=m, ours=o, peer=p, ours_rss_mib=ro, peer_rss_mib=rp) for m, o, p, ro, rp in rows],
                      f, indent=1)


if __name__ == "__main__":
    main()
