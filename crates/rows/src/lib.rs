//! Text-row helpers that several readers share: the lines of a JSONL (or plain text) file with errors that
//! name the file and line, and TRL's split of an implicit-prompt pair into prompt and completions.
//!
//! Why a crate of its own: the preference trainer (`dpo`), the preference-file oracle (`oracle`) and the
//! command line (`generate`, `score`) all read such rows, and none of them depends on another, so this is the
//! lowest place where one copy can live.

use anyhow::{anyhow, Context as _, Result};
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;

/// The non-blank lines of a text file as (1-based line number, text), a trailing `\r` removed, read as the
/// caller goes: an error (a line that is not UTF-8, naming `file:line`) comes in file order, after the lines
/// before it, and a large file is never held whole.
pub fn lines(path: &Path) -> Result<impl Iterator<Item = Result<(usize, String)>> + '_> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let lines = std::io::BufReader::new(f).split(b'\n').enumerate().map(move |(i, line)| {
        let bytes = line.with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow!("{}:{}: not valid UTF-8", path.display(), i + 1))?;
        Ok((i + 1, text.trim_end_matches('\r').to_string()))
    });
    Ok(lines.filter(|l| !matches!(l, Ok((_, t)) if t.trim().is_empty())))
}

/// Parses one line of `path` as JSON; the error names `file:line`.
pub fn parse_json(path: &Path, line: usize, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| anyhow!("{}:{line}: not valid JSON ({e})", path.display()))
}

/// The non-blank lines of a JSONL file, each parsed, as (1-based line number, value), read as the caller goes.
pub fn json_lines(path: &Path) -> Result<impl Iterator<Item = Result<(usize, Value)>> + '_> {
    Ok(lines(path)?.map(move |l| l.and_then(|(n, text)| Ok((n, parse_json(path, n, &text)?)))))
}

/// Byte length of the implicit prompt of two texts (TRL's `extract_prompt` for string pairs): their
/// longest shared prefix, minus a final space when both continue after it (so " good" and " bad" keep
/// their leading space), on a char boundary.
pub fn shared_prefix(a: &str, b: &str) -> usize {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let mut idx = ab.iter().zip(bb).take_while(|(x, y)| x == y).count();
    if idx < ab.len().min(bb.len()) && idx > 0 && ab[idx - 1] == b' ' {
        idx -= 1;
    }
    while !a.is_char_boundary(idx) {
        idx -= 1;
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_keeps_the_space_with_the_completions() {
        assert_eq!(shared_prefix("The film was good", "The film was bad"), "The film was".len());
        assert_eq!(shared_prefix("abc", "abd"), 2);
        assert_eq!(shared_prefix("same", "same"), 4);
        assert_eq!(shared_prefix("", "x"), 0);
        // "é" and "è" share their first UTF-8 byte: the split backs off to a char boundary.
        assert_eq!(shared_prefix("café", "cafè"), 3);
    }

    #[test]
    fn lines_skip_blanks_and_name_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "{\"a\": 1}\r\n\n  \n{\"a\": 2}\n{oops\n").unwrap();
        let all: Vec<Result<(usize, Value)>> = json_lines(&p).unwrap().collect();
        // The good lines before the bad one come first, as they are in the file.
        assert_eq!(all.iter().filter(|r| r.is_ok()).count(), 2);
        let err = all.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(err.contains("x.jsonl:5: not valid JSON"), "{err}");
        std::fs::write(&p, "{\"a\": 1}\r\n\n{\"a\": 2}\n").unwrap();
        let rows: Vec<(usize, Value)> = json_lines(&p).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(rows.iter().map(|(n, v)| (*n, v["a"].as_i64().unwrap())).collect::<Vec<_>>(), [(1, 1), (3, 2)]);
        std::fs::write(&p, b"ok\n\xff\n").unwrap();
        let err = lines(&p).unwrap().collect::<Result<Vec<_>>>().unwrap_err().to_string();
        assert!(err.contains("x.jsonl:2: not valid UTF-8"), "{err}");
        assert!(lines(&dir.path().join("none")).is_err());
    }
}
