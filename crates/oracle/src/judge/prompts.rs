//! What the judge is asked: the paper's IMDB and TL;DR prompts, word for word, and how a comparison is
//! filled into a template.
//!
//! Why a file of its own: the wording is the experiment (a changed space changes the judge's labels and the
//! cache keys), so it sits apart from the plumbing that sends it, where an edit to one can't touch the other.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::JudgeConfig;
use crate::Comparison;

/// The paper's IMDB system prompt (`IMDB_SYSTEM_PROMPT` in the authors' `direct/openai_ranking.py`).
pub const IMDB_SYSTEM_PROMPT: &str =
    "You are a helpful assistant that evaluates the quality and positive sentiment of movie reviews";

/// The paper's IMDB question (`get_imdb_prompt` in the authors' `direct/openai_ranking.py`, same wording,
/// line breaks and trailing spaces). `{text_a}`/`{text_b}` are the full reviews: prompt + completion. The
/// original wrote `{prompt} {completion}`; our completions keep their own leading space (that is how they
/// were sampled), so the text is joined as-is rather than with an extra space.
pub const IMDB_USER_TEMPLATE: &str = "\
Which of the following movie reviews is better? The best one will be the one with the most positive sentiment, \
which also is grammatically correct, consistent, and avoids repetition.

Review A:
{text_a}

Review B:
{text_b}

FIRST provide a one-sentence comparison of the two reviews, explaining which is better and why. SECOND, on a new \
line, state only \"A\" or \"B\" to indicate your choice. \n\
\n\
You MUST choose A or B for the preferred answer even if neither review is very good.  \n\
\n\
Your response should use the format:

Comparison: <one-sentence comparison and explanation>
Preferred: <\"A\" or \"B\">";

/// The paper's TL;DR system prompt (`TLDR_SYSTEM_PROMPT` in the authors' `direct/openai_ranking.py`).
pub const TLDR_SYSTEM_PROMPT: &str =
    "You are a helpful assistant that evaluates the quality of summaries for internet posts";

/// The paper's TL;DR question (`get_tldr_prompt` in the authors' `direct/openai_ranking.py`, same wording,
/// line breaks and trailing spaces; itself the DPO paper's GPT-4 summary prompt). `{prompt}` is the post,
/// `{a}`/`{b}` the two summaries.
pub const TLDR_USER_TEMPLATE: &str = "\
Which of the following summaries does a better job of summarizing the most important points in the given forum \
post, without including unimportant or irrelevant details?

Post:
{prompt}

Summary A:
{a}

Summary B:
{b}

FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. SECOND, on a \
new line, state only \"A\" or \"B\" to indicate your choice. \n\
\n\
You MUST choose A or B for the preferred answer even if neither summary is very good.

Your response should use the format:

Comparison: <one-sentence comparison and explanation>
Preferred: <\"A\" or \"B\">";

/// GPT-2-family end-of-text marker; sampled completions may end with it, and a judge should not see it.
const END_OF_TEXT: &str = "<|endoftext|>";

/// Which question the judge is asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeTask {
    /// Movie-review continuations: more positive *and* well written wins ([`IMDB_USER_TEMPLATE`]).
    #[default]
    Imdb,
    /// Post summaries: the better summary of the important points wins ([`TLDR_USER_TEMPLATE`]).
    Tldr,
    /// Your own `system_prompt` and `user_template` (both required).
    Custom,
}

/// The system prompt and user template `cfg` asks for: the task's, or its own replacements. Fails for a
/// `custom` task without both, and for a template that does not show both completions.
pub(super) fn messages(cfg: &JudgeConfig) -> Result<(String, String)> {
    let (system_prompt, user_template) = match cfg.task {
        JudgeTask::Imdb => (IMDB_SYSTEM_PROMPT, IMDB_USER_TEMPLATE),
        JudgeTask::Tldr => (TLDR_SYSTEM_PROMPT, TLDR_USER_TEMPLATE),
        JudgeTask::Custom => {
            if cfg.system_prompt.is_none() || cfg.user_template.is_none() {
                bail!("judge task \"custom\" needs both system_prompt and user_template");
            }
            ("", "")
        }
    };
    let system_prompt = cfg.system_prompt.clone().unwrap_or_else(|| system_prompt.to_string());
    let user_template = cfg.user_template.clone().unwrap_or_else(|| user_template.to_string());
    // A template that never shows one of the completions would make every label meaningless.
    let shows = |names: [&str; 2]| names.iter().any(|n| user_template.contains(&format!("{{{n}}}")));
    if !shows(["a", "text_a"]) || !shows(["b", "text_b"]) {
        bail!("judge user_template must contain {{a}} or {{text_a}}, and {{b}} or {{text_b}}");
    }
    Ok((system_prompt, user_template))
}

/// The user message for `c`: the template filled in, completion 1 shown as A (and 0 as B) when `swapped`.
pub(super) fn user_message(template: &str, c: &Comparison, swapped: bool) -> String {
    let (a, b) = if swapped { (1, 0) } else { (0, 1) };
    let completion = |i: usize| clean(&c.completions[i]);
    let text = |i: usize| clean(&c.text(i));
    let prompt = clean(&c.prompt);
    fill(template, |name| match name {
        "prompt" => Some(prompt.clone()),
        "a" => Some(completion(a)),
        "b" => Some(completion(b)),
        "text_a" => Some(text(a)),
        "text_b" => Some(text(b)),
        _ => None,
    })
}

/// Text as the judge should see it: no end-of-text markers, no stray surrounding whitespace.
fn clean(s: &str) -> String {
    s.replace(END_OF_TEXT, "").trim().to_string()
}

/// Fills `{name}` placeholders in one pass, so braces inside the filled-in texts are never expanded.
/// Unknown placeholders are left as written.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let filled = tail.find('}').and_then(|close| value(&tail[1..close]).map(|v| (v, close)));
        match filled {
            Some((v, close)) => {
                out.push_str(&v);
                rest = &tail[close + 1..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_single_pass() {
        let out = fill("{a} | {b} | {x}", |n| match n {
            "a" => Some("{b}".into()),
            "b" => Some("B".into()),
            _ => None,
        });
        assert_eq!(out, "{b} | B | {x}");
    }

    #[test]
    fn paper_templates_have_their_placeholders() {
        for (t, names) in [(IMDB_USER_TEMPLATE, ["{text_a}", "{text_b}"]), (TLDR_USER_TEMPLATE, ["{a}", "{b}"])] {
            for n in names {
                assert_eq!(t.matches(n).count(), 1, "{n}");
            }
            assert!(t.ends_with("Preferred: <\"A\" or \"B\">"));
            assert!(t.contains("You MUST choose A or B"));
        }
        assert!(IMDB_USER_TEMPLATE.contains("avoids repetition.\n\nReview A:\n{text_a}\n\nReview B:\n{text_b}\n\n"));
        assert!(IMDB_USER_TEMPLATE.contains("to indicate your choice. \n\nYou MUST"));
        assert!(IMDB_USER_TEMPLATE.contains("very good.  \n\nYour response"));
        assert!(TLDR_USER_TEMPLATE.contains("Post:\n{prompt}\n\nSummary A:\n{a}\n\nSummary B:\n{b}\n\n"));
    }
}
