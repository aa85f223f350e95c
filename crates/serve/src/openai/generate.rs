//! Generation: a request's checked sampling job (prompts against the context, the completion length, the
//! token budget), where a choice's text ends (stop strings, EOS, length), and the non-streaming run on tokio's
//! blocking pool, one request at a time, stopped when its client hangs up, with a panic turned into a 500 for
//! that request.

use super::admission::Turn;
use super::logprobs::{ChoiceLogprobs, LogprobRequest};
use super::request::{no_room, SamplingRequest};
use super::{ApiError, OpenAiState};
use lm::model::LanguageModel;
use lm::sample::{generate_watched, Sample, SampleParams};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One generated choice, ready for the response.
pub(super) struct Choice {
    pub(super) text: String,
    pub(super) finish_reason: &'static str,
    /// Every sampled token, a stop string's and EOS included (as vLLM's `token_ids`).
    pub(super) tokens: Vec<u32>,
    pub(super) logprobs: Option<ChoiceLogprobs>,
}

/// A checked generation: the rows to sample (prompt-major, `n` per prompt) and how.
pub(super) struct Job {
    /// The model the request named.
    pub(super) model: Arc<LanguageModel>,
    /// The request's prompts; row `i` samples `prompts[i / n]`.
    pub(super) prompts: Vec<Vec<u32>>,
    pub(super) n: usize,
    pub(super) rows: Vec<Vec<u32>>,
    pub(super) params: SampleParams,
    pub(super) stop: Vec<String>,
    pub(super) logprobs: LogprobRequest,
    prompt_tokens: usize,
}

impl Job {
    /// Checks the prompts against the context, settles the completion length and checks the request's token
    /// budget.
    pub(super) fn new(
        s: &OpenAiState,
        prompts: Vec<Vec<u32>>,
        opts: &SamplingRequest,
        prompt_param: &'static str,
    ) -> Result<Self, ApiError> {
        let ctx = opts.model.config.max_position;
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(ApiError::invalid(
                    format!("prompt {i} is empty: the model needs at least one token to condition on"),
                    Some(prompt_param),
                ));
            }
            if p.len() >= ctx {
                return Err(no_room(ctx, p.len(), prompt_param));
            }
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let max_new = match opts.max_tokens {
            Some((m, name)) => {
                if longest.saturating_add(m) > ctx {
                    return Err(ApiError::context(
                        format!(
                            "this model's maximum context length is {ctx} tokens, but you requested {} tokens \
                             ({longest} in the prompt; {m} for the completion); reduce the prompt or `{name}`",
                            longest.saturating_add(m)
                        ),
                        name,
                    ));
                }
                m
            }
            None => opts.default_max_tokens.min(ctx - longest),
        };
        let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
        // Every row holds its own copy of its prompt and may grow by `max_new`.
        let budget = opts.n.saturating_mul(prompt_tokens.saturating_add(prompts.len().saturating_mul(max_new)));
        if budget > s.max_request_tokens {
            // The parameter named is the first a client would turn down.
            let param = if opts.n > 1 { "n" } else { opts.max_tokens.map_or(prompt_param, |(_, name)| name) };
            let per_n = match prompts.len() {
                1 => format!("{prompt_tokens} prompt tokens + {max_new} completion tokens"),
                k => format!("{prompt_tokens} prompt tokens in {k} prompts + {k} × {max_new} completion tokens"),
            };
            return Err(ApiError::invalid(
                format!(
                    "this request asks for {budget} tokens, n = {} × ({per_n}); this server takes at most {} \
                     per request; lower `n` or the completion length, or send fewer or shorter prompts",
                    opts.n, s.max_request_tokens
                ),
                Some(param),
            ));
        }
        let rows = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), opts.n)).collect();
        let params = SampleParams {
            max_new_tokens: max_new,
            temperature: opts.temperature,
            top_k: opts.top_k,
            top_p: opts.top_p,
            seed: opts.seed,
            stop_at_eos: true,
        };
        Ok(Self {
            model: opts.model.clone(),
            prompts,
            n: opts.n,
            rows,
            params,
            stop: opts.stop.clone(),
            logprobs: opts.logprobs.clone(),
            prompt_tokens,
        })
    }

    /// Samples every row, calling `on_token` as [`generate_watched`] does (return `false` to end a row), until
    /// `gone()` says the client has hung up: then every row ends at its next token and no further batch is
    /// started, and the result is an error nobody will read.
    pub(super) fn sample(
        &self,
        st: &OpenAiState,
        gone: impl Fn() -> bool,
        mut on_token: impl FnMut(usize, &Sample) -> bool,
    ) -> Result<Vec<Sample>, ApiError> {
        let batch = st.batch_size.max(1);
        let mut samples = Vec::with_capacity(self.rows.len());
        // Batch by batch as `generate_watched` would go itself (row `i` keeps its RNG stream through
        // `first_index`, so the text is the same), to look at `gone` between batches too.
        for (b, rows) in self.rows.chunks(batch).enumerate() {
            if gone() {
                return Err(ApiError::server("the client hung up; generation stopped"));
            }
            let first = b * batch;
            let watch = |i: usize, smp: &Sample| !gone() && on_token(i, smp);
            samples.extend(
                generate_watched(&self.model, rows, &self.params, None, batch, first, |_| {}, watch)
                    .map_err(|e| ApiError::server(format!("generation failed: {e:#}")))?,
            );
        }
        if gone() {
            return Err(ApiError::server("the client hung up; generation stopped"));
        }
        Ok(samples)
    }

    pub(super) fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }
}

/// Where a choice's text ends so far: at a stop string (`finish` "stop"), at EOS ("stop"), at the length limit
/// ("length"), or — while it goes on — before any tail that may still turn into a stop string or is half a
/// character, so that nothing sent needs taking back.
pub(super) fn text_end(text: &str, sample: &Sample, max_new: usize, stop: &[String]) -> (usize, Option<&'static str>) {
    if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        return (cut, Some("stop"));
    }
    if sample.stopped_at_eos {
        return (text.len(), Some("stop"));
    }
    if sample.tokens.len() >= max_new {
        return (text.len(), Some("length"));
    }
    // A byte-level tokenizer can end a token inside a character; the decoder shows U+FFFD until it is whole.
    let mut end = text.len();
    while text[..end].ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let held = stop
        .iter()
        .filter_map(|s| (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && text[..end].ends_with(&s[..k])))
        .max()
        .unwrap_or(0);
    (end - held, None)
}

/// Samples the job's rows in the request's `turn` and returns the `usage` object with the choices,
/// prompt-major as OpenAI orders them. A choice stops sampling at the token that completes a stop string.
pub(super) async fn run_generation(
    s: &Arc<OpenAiState>,
    turn: Turn,
    job: Job,
) -> Result<(Value, Vec<Choice>), ApiError> {
    // axum drops this future when the client hangs up; the generation on the blocking pool would run on to
    // the end, holding the only model. The flag, set on that drop, stops it at its next token.
    struct HangUp(Arc<AtomicBool>);
    impl Drop for HangUp {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let hung_up = HangUp(Arc::new(AtomicBool::new(false)));
    let flag = hung_up.0.clone();
    let st = s.clone();
    blocking(move || {
        // The turn moves into the blocking task, so the next request never runs beside a generation that is
        // still stopping.
        let _turn = turn;
        let gone = || flag.load(Ordering::SeqCst);
        let model = &job.model;
        let decode = |ids: &[u32]| {
            model.tokenizer.decode(ids, true).map_err(|e| ApiError::server(format!("decoding the completion: {e:#}")))
        };
        let max_new = job.params.max_new_tokens;
        let samples = job.sample(&st, gone, |_, smp| {
            // Only a stop string needs the text; an undecodable prefix is reported below, from the whole sample.
            job.stop.is_empty()
                || decode(&smp.tokens).map_or(true, |t| text_end(&t, smp, max_new, &job.stop).1.is_none())
        })?;
        let mut logprobs = job
            .logprobs
            .compute(model, &job.prompts, job.n, &samples, st.batch_size)
            .map_err(|e| ApiError::server(format!("computing log-probs: {e:#}")))?
            .map(Vec::into_iter);
        let mut choices = Vec::with_capacity(samples.len());
        let mut completion_tokens = 0;
        for smp in samples {
            let text = decode(&smp.tokens)?;
            let (end, finish) = text_end(&text, &smp, max_new, &job.stop);
            completion_tokens += smp.tokens.len();
            let finish_reason = finish.unwrap_or("length");
            let text = if finish_reason == "stop" { text[..end].to_string() } else { text };
            let logprobs = logprobs.as_mut().and_then(Iterator::next);
            choices.push(Choice { text, finish_reason, tokens: smp.tokens, logprobs });
        }
        Ok((job.usage(completion_tokens), choices))
    })
    .await
}

/// Runs `f` on the blocking pool; a panic in it becomes a 500 for this request instead of a dropped
/// connection (the panic is still printed by the panic hook).
pub(super) async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(ApiError::server(format!("internal error while handling the request: {msg}")))
        }
        Err(e) => Err(ApiError::server(format!("the request's task was cancelled: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn a_panic_while_generating_is_a_500_not_a_crash() {
        let err = blocking::<(), _>(|| panic!("boom")).await.unwrap_err();
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.message.contains("boom"), "{}", err.message);
        // The runtime is still usable afterwards.
        assert_eq!(blocking(|| Ok(7)).await.unwrap(), 7);
    }
}

/// Which endpoint a response belongs to: it decides the chunk's `object` and where the text goes.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Endpoint {
    Completions,
    Chat,
}
