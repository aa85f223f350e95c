//! The preference-file oracle: lookups in either order, implicit prompts, pairs as a pool, and errors.

use oracle::dataset::{shared_prefix, DatasetOracle};
use oracle::{Comparison, Oracle};
use std::path::PathBuf;

fn write(dir: &tempfile::TempDir, name: &str, lines: &[&str]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn explicit_format_answers_in_either_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "prefs.jsonl",
        &[
            r#"{"prompt": "The film was", "chosen": " great.", "rejected": " dull.", "score": 3}"#,
            "",
            r#"{"prompt": "The plot", "chosen": " twists.", "rejected": " drags."}"#,
        ],
    );
    let mut o = DatasetOracle::open(&p).unwrap();
    assert_eq!(o.name(), "dataset:prefs.jsonl");

    let a = o.compare(&Comparison::new("The film was", " great.", " dull.")).unwrap();
    assert_eq!(a.preferred, Some(0));
    let a = o.compare(&Comparison::new("The film was", " dull.", " great.")).unwrap();
    assert_eq!(a.preferred, Some(1));
    assert_eq!(a.raw, r#"{"rows_preferring":[0,1]}"#);

    // Unknown: another prompt, another completion.
    for c in [Comparison::new("The plot was", " twists.", " drags."), Comparison::new("The plot", " twists.", " ok.")] {
        let a = o.compare(&c).unwrap();
        assert_eq!(a.preferred, None);
        assert_eq!(a.raw, format!("not in {}", p.display()));
    }

    assert_eq!(
        o.pairs(),
        vec![Comparison::new("The film was", " great.", " dull."), Comparison::new("The plot", " twists.", " drags."),]
    );
}

#[test]
fn implicit_format_splits_prompt_at_shared_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "implicit.jsonl",
        &[
            r#"{"chosen": "The film was great.", "rejected": "The film was dull."}"#,
            r#"{"chosen": "Überall gut", "rejected": "Überall schlecht"}"#,
        ],
    );
    let mut o = DatasetOracle::open(&p).unwrap();
    // The space stays with the completions, as in TRL and the dpo crate.
    assert_eq!(o.pairs()[0], Comparison::new("The film was", " great.", " dull."));
    assert_eq!(o.pairs()[1], Comparison::new("Überall", " gut", " schlecht"));
    assert_eq!(o.compare(&o.pairs()[0].clone()).unwrap().preferred, Some(0));
    let swapped = Comparison::new("The film was", " dull.", " great.");
    assert_eq!(o.compare(&swapped).unwrap().preferred, Some(1));
}

#[test]
fn shared_prefix_rule() {
    assert_eq!(shared_prefix("ab cd", "ab ef"), 2);
    assert_eq!(shared_prefix("abc", "abd"), 2); // no space to back off to
    assert_eq!(shared_prefix("same", "same"), 4);
    assert_eq!(shared_prefix("x", "y"), 0);
    assert_eq!(shared_prefix("é1", "é2"), 2); // bytes, on a char boundary
    assert_eq!(shared_prefix("\u{e9}", "\u{e8}"), 0); // differ inside a 2-byte char: back to its start
}

#[test]
fn duplicates_vote_and_identical_rows_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "dups.jsonl",
        &[
            r#"{"prompt": "P", "chosen": " a", "rejected": " b"}"#,
            r#"{"prompt": "P", "chosen": " a", "rejected": " b"}"#,
            r#"{"prompt": "P", "chosen": " b", "rejected": " a"}"#,
            r#"{"prompt": "Q", "chosen": " x", "rejected": " y"}"#,
            r#"{"prompt": "Q", "chosen": " y", "rejected": " x"}"#,
            r#"{"prompt": "R", "chosen": " same", "rejected": " same"}"#,
        ],
    );
    let mut o = DatasetOracle::open(&p).unwrap();
    // Two rows for " a", one for " b": the majority.
    let a = o.compare(&Comparison::new("P", " b", " a")).unwrap();
    assert_eq!((a.preferred, a.raw.as_str()), (Some(1), r#"{"rows_preferring":[1,2]}"#));
    // An even split is no preference.
    assert_eq!(o.compare(&Comparison::new("Q", " x", " y")).unwrap().preferred, None);
    assert_eq!(o.compare(&Comparison::new("R", " same", " same")).unwrap().preferred, None);
    assert_eq!(o.skipped_identical(), &[6]);
    // Distinct pairs once each, as their first row had them.
    assert_eq!(o.pairs(), vec![Comparison::new("P", " a", " b"), Comparison::new("Q", " x", " y")]);
}

#[test]
fn errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let ok = r#"{"prompt": "P", "chosen": " a", "rejected": " b"}"#;
    let err = |lines: &[&str]| {
        let p = write(&dir, "bad.jsonl", lines);
        format!("{:#}", DatasetOracle::open(&p).err().expect("should fail"))
    };
    let file = dir.path().join("bad.jsonl").display().to_string();

    let e = err(&[ok, r#"{"prompt": "P", "chosen": " a"}"#]);
    assert!(e.starts_with(&format!("{file}:2:")) && e.contains("`rejected` is missing"), "{e}");
    let e = err(&[ok, ok, r#"{"prompt": 3, "chosen": " a", "rejected": " b"}"#]);
    assert!(e.starts_with(&format!("{file}:3:")) && e.contains("`prompt` must be a string, found a number"), "{e}");
    let e = err(&[r#"{"chosen": [{"role": "user", "content": "hi"}], "rejected": []}"#]);
    assert!(e.starts_with(&format!("{file}:1:")) && e.contains("`chosen` is a list (conversational"), "{e}");
    let e = err(&[ok, "{not json"]);
    assert!(e.starts_with(&format!("{file}:2:")) && e.contains("not valid JSON"), "{e}");
    let e = err(&["[1, 2]"]);
    assert!(e.starts_with(&format!("{file}:1:")) && e.contains("JSON object"), "{e}");
    let e = err(&[r#"{"prompt": "P", "chosen": " a", "rejected": " a"}"#]);
    assert!(e.contains("no preference pairs") && e.contains("1 skipped"), "{e}");

    let p = dir.path().join("latin1.jsonl");
    std::fs::write(&p, b"{\"prompt\": \"M\xfcnch\", \"chosen\": \" a\", \"rejected\": \" b\"}\n").unwrap();
    let e = format!("{:#}", DatasetOracle::open(&p).err().unwrap());
    assert!(e.contains("latin1.jsonl:1:") && e.contains("UTF-8"), "{e}");

    let e = format!("{:#}", DatasetOracle::open(&dir.path().join("missing.jsonl")).err().unwrap());
    assert!(e.contains("missing.jsonl"), "{e}");
}
