"""The last step of scripts/gpu-check.sh: our benchmark lines beside the PyTorch anchor's, as ratios, with the
issue's targets, and one JSON file with everything. Needs only the standard library (no torch)."""
import argparse
import glob
import json
import os

TARGETS = {  # measure -> (our key, anchor key, target ratio)
    "DPO, live reference": ("full-live", "dpo_tokens_per_s", 1.0),
    "DPO, reference cache": ("full-cache", "dpo_tokens_per_s", 1.3),
    "score": ("score", "score_tokens_per_s", None),
    "sample": ("sample", "sample_new_tokens_per_s", 10.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--anchor")
    ap.add_argument("--checks", help="folder of check-*.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--elapsed", type=float)
    a = ap.parse_args()
    ours = {}
    for line in open(a.ours):
        if line.startswith("{"):
            r = json.loads(line)
            key = r.get("mode") or r.get("measure")
            rate = r.get("tokens_per_s") or r.get("new_tokens_per_s")
            ours[(r["shape"], key)] = (rate, r)
    anchor = {}
    if a.anchor and os.path.exists(a.anchor):
        for r in json.load(open(a.anchor))["results"]:
            anchor[r["shape"]] = r
    checks = {}
    if a.checks:
        for p in sorted(glob.glob(os.path.join(a.checks, "check-*.json"))):
            checks[os.path.basename(p)] = json.load(open(p))
    shapes = sorted({s for s, _ in ours}, key=lambda s: [k for k in ours if k[0] == s][0])
    rows = []
    print(f"{'shape':<16} {'measure':<22} {'activepref':>12} {'PyTorch':>12} {'ratio':>8} {'target':>11}")
    for s in shapes:
        for label, (key, akey, target) in TARGETS.items():
            if (s, key) not in ours:
                continue
            mine = ours[(s, key)][0]
            theirs = anchor.get(s, {}).get(akey)
            ratio = mine / theirs if theirs else None
            met = None if ratio is None or target is None else ratio >= target
            rows.append({"shape": s, "measure": label, "activepref": mine, "pytorch": theirs, "ratio": ratio,
                         "target": target, "met": met})
            def fmt(x, width, spec):
                return f"{'-':>{width}}" if x is None else f"{x:{width}{spec}}"
            tgt = "-" if target is None else f">={target}x" + ("" if met is None else (" ok" if met else " NO"))
            ratio_s = fmt(ratio, 7, ".2f") + ("x" if ratio is not None else " ")
            print(f"{s:<16} {label:<22} {fmt(mine, 12, '.1f')} {fmt(theirs, 12, '.1f')} {ratio_s} {tgt:>11}")
    failed = sum(c.get("failed", 0) for c in checks.values())
    print(f"correctness: {len(checks)} check runs, {failed} failed checks" + (f"; {a.elapsed:.0f} s in all" if a.elapsed else ""))
    json.dump({"rows": rows, "checks": checks, "anchor": anchor, "ours": [r for _, r in ours.values()],
               "elapsed_s": a.elapsed}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
