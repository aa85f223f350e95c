//! The judge's cache: an append-only JSONL file of every paid reply, fsync'd before the answer is used.
//!
//! Why a file of its own: this is what makes "never pay twice" hold across crashes and resumes — the key
//! that says two questions are the same, the durable append, and the loading that repairs a torn last line
//! but refuses a file something else has written into.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Judge, JudgeQuestion, JudgeState, JudgeStats};

/// One line of the cache file.
#[derive(Serialize, Deserialize)]
struct CacheLine {
    key: String,
    reply: String,
    #[serde(default)]
    usage: Value,
}

impl Judge {
    /// Cache key: everything that determines the reply. Length-prefixed fields so no two inputs collide by
    /// concatenation; the temperature by its bits, so 0.05 and 0.050000001 are different questions.
    pub(super) fn cache_key(&self, q: &JudgeQuestion) -> String {
        let mut h = Sha256::new();
        h.update(b"activepref-judge-cache-v1");
        for s in [self.base_url.as_str(), &self.cfg.model, &q.system, &q.user] {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.update(self.cfg.temperature.to_bits().to_le_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl JudgeState {
    /// Appends one reply to the cache file and syncs it, so an acknowledged answer survives a crash.
    pub(super) fn remember(&mut self, path: Option<&Path>, key: String, reply: &str, usage: Value) -> Result<()> {
        if let (Some(file), Some(path)) = (&mut self.cache_writer, path) {
            let mut line = serde_json::to_string(&CacheLine { key: key.clone(), reply: reply.to_string(), usage })?;
            line.push('\n');
            // One write of the whole line: a crash leaves at most a torn last line, which loading drops.
            file.write_all(line.as_bytes())
                .and_then(|_| file.sync_data())
                .with_context(|| format!("writing the judge cache {}", path.display()))?;
        }
        self.cache.insert(key, reply.to_string());
        Ok(())
    }
}

/// Loads the cache and opens it for appending. A crash mid-write can only leave an unterminated last line;
/// it was never acknowledged, so it is cut off (or, if it is a whole entry that lost its newline, kept and
/// terminated) and appends continue on a clean line. A broken line anywhere else means something else
/// wrote the file, and is an error rather than a silent loss of paid replies.
pub(super) fn open_cache(path: &Path) -> Result<(HashMap<String, String>, File, JudgeStats)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening the judge cache {}", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("reading the judge cache {}", path.display()))?;

    let mut cache = HashMap::new();
    // What earlier processes paid for: every cache entry was one answered call.
    let mut before = JudgeStats::default();
    let mut count = |e: &CacheLine| {
        before.calls += 1;
        before.tokens += e.usage.get("total_tokens").and_then(Value::as_u64).unwrap_or(0);
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let entry: CacheLine = serde_json::from_slice(line).with_context(|| {
            format!("the judge cache {} line {} is not a cache entry; delete that line to go on", path.display(), n + 1)
        })?;
        count(&entry);
        cache.insert(entry.key, entry.reply);
    }
    let torn = &bytes[complete..];
    if !torn.iter().all(u8::is_ascii_whitespace) {
        let fix = match serde_json::from_slice::<CacheLine>(torn) {
            Ok(entry) => {
                count(&entry);
                cache.insert(entry.key, entry.reply);
                file.write_all(b"\n")
            }
            // Appends go to the end regardless of the cursor (O_APPEND), so truncating is enough.
            Err(_) => file.set_len(complete as u64),
        };
        fix.and_then(|_| file.sync_data())
            .with_context(|| format!("repairing the torn last line of the judge cache {}", path.display()))?;
    }
    Ok((cache, file, before))
}
