#!/usr/bin/env python3
"""Reference VADER scores for the Rust `vader_sentiment` crate: the Python package's compound scores on a
fixed sample of the movie-review snippets.

The sample is every 35th snippet line (lines 1, 36, 71, ... of the file), about 300 sentences. Texts are
decoded exactly as crates/oracle/src/snippets.rs does (lossy UTF-8, CR stripped, '' -> ", trimmed), and the
fixture stores the decoded text, so the Rust test scores the very same strings without Python.

Writes crates/oracle/tests/fixtures/vader_reference.json. Needs: pip install vaderSentiment==3.3.2
Usage: python3 scripts/vader_reference.py assets/vader/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt OUT.json
"""
import json
import sys

import vaderSentiment
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

STEP = 35

# One sentence per known difference of the Rust `vader_sentiment` 0.1.1 crate from this package (each found by
# re-implementing the crate's rules in Python and checking that this reproduces the crate on all 10,605 movie
# snippets); the Rust test asserts the difference is still there, so a crate that fixes one is noticed. The last
# sentence triggers none and must agree.
PROBES = [
    ("The acting is also good.", "booster-substring"),
    ("It will warm your heart.", "lexicon-heart"),
    ("Is it any good?", "single-question-mark"),
    ("There is no good reason to see it.", "no-negation"),
    ("It is ok.", "two-letter-token"),
    ("See it tonight!", "neutral-exclamation"),
    ("The plot is at least funny.", "at-least"),
    ("Watch this film, great fun.", "this-window"),
    ("The acting is good.", None),
]


def main(path, out):
    analyzer = SentimentIntensityAnalyzer()
    lines = [l for l in open(path, "rb").read().split(b"\n") if l.strip()]
    cases = []
    for line in lines[::STEP]:
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        sid, rating, text = text.split("\t", 2)
        text = text.strip().replace("''", '"')
        cases.append({"id": int(sid), "rating": float(rating), "text": text,
                      "compound": analyzer.polarity_scores(text)["compound"]})
    doc = {
        "source": "vaderSentiment==3.3.2, SentimentIntensityAnalyzer().polarity_scores(text)['compound'] "
                  "(rounded to 4 decimals by the package)",
        "package_version": getattr(vaderSentiment, "__version__", "3.3.2"),
        "corpus": "movieReviewSnippets_GroundTruth.txt, every %dth line" % STEP,
        "cases": cases,
        "probes": [{"text": t, "deviation": d, "compound": analyzer.polarity_scores(t)["compound"]}
                   for t, d in PROBES],
    }
    # One case per line: small, and diffs of a regenerated fixture stay readable.
    head = json.dumps({k: v for k, v in doc.items() if k not in ("cases", "probes")}, ensure_ascii=False)[:-1]
    lines = lambda xs: ",\n".join(json.dumps(x, ensure_ascii=False) for x in xs)
    with open(out, "w", encoding="utf-8") as f:
        f.write(head + ',\n"probes": [\n' + lines(doc["probes"]) + '\n],\n"cases": [\n' + lines(cases) + "\n]}\n")
    print("wrote %d cases to %s" % (len(cases), out))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
