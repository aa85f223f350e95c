//! Reading the judge's verdict out of its free-text reply.
//!
//! Why a file of its own: judges don't follow the requested format to the letter (markdown, list markers,
//! quotes, the letter on the next line), and this is the one place that decides what still counts as a
//! verdict; anything else is a non-answer, never a guess.

/// The judge's verdict in a reply: `Some('A')` or `Some('B')` from the last line starting with `Preferred:`
/// (any case, markdown emphasis or a list marker allowed before it), or `None` when there is no such line
/// or its value is anything but a single A or B (`Both`, `A or B`, `Neither`, ...). Quotes, `*`, `_`,
/// brackets and trailing punctuation around the letter are ignored; if the line has no value, the next
/// non-blank line is taken as the value.
pub fn parse_preference(reply: &str) -> Option<char> {
    let lines: Vec<&str> = reply.lines().collect();
    let mut value = None;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = after_preferred(line) else { continue };
        let rest = if rest.trim().is_empty() {
            lines[i + 1..].iter().find(|l| !l.trim().is_empty()).copied().unwrap_or("")
        } else {
            rest
        };
        value = Some(rest);
    }
    let v = value?.trim_matches(|c: char| c.is_whitespace() || "\"'`*_.,;:!?()[]<>“”‘’".contains(c));
    match v {
        "A" | "a" => Some('A'),
        "B" | "b" => Some('B'),
        _ => None,
    }
}

/// The text after `Preferred:` if `line` is a verdict line, e.g. `Preferred: A`, `**Preferred:** A`,
/// `- preferred: B`.
fn after_preferred(line: &str) -> Option<&str> {
    let l = line.trim_start_matches(|c: char| c.is_whitespace() || "*_#->`".contains(c));
    let head = l.get(..9)?;
    if !head.eq_ignore_ascii_case("preferred") {
        return None;
    }
    let rest = l[9..].trim_start_matches(['*', '_', ' ']);
    rest.strip_prefix(':')
}
