//! Names the field a TOML parse error points at, for error messages an operator can act on.

use std::collections::BTreeMap;

/// Names the TOML field a parse error points at, such as `raft.heartbeat_interval (line 20)`.
pub fn describe_span(text: &str, span: std::ops::Range<usize>) -> String {
    let start = span.start.min(text.len());
    let line_number = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let Some((key, _)) = line.split_once('=') else {
        return format!("line {line_number}");
    };
    // The table the line belongs to is the last header above it.
    let mut table = String::new();
    let mut array_counts: BTreeMap<String, usize> = BTreeMap::new();
    for header in text[..line_start].lines().map(str::trim).filter(|l| l.starts_with('[')) {
        if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            let count = array_counts.entry(name.trim().to_string()).or_insert(0);
            table = format!("{}[{}]", name.trim(), *count);
            *count += 1;
        } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            table = name.trim().to_string();
        }
    }
    let key = key.trim();
    if table.is_empty() { format!("{key} (line {line_number})") } else { format!("{table}.{key} (line {line_number})") }
}
