//! Caps on what may enter the replicated state. The leader checks every write against them
//! before it commits it (whoever sent it), and the API checks a client's request before it
//! forwards it, to answer 413 with the cap. The whole state travels in every snapshot: one
//! oversized entry, or thousands of large notes kept in the history, would leave a new or
//! lagging node unable to ever catch up.

use crate::spec::ClusterSpec;
use crate::state::{Command, EventKind};

/// The longest note, in bytes of UTF-8: a note is a line or two in the history.
pub const MAX_NOTE_BYTES: usize = 2048;
/// The longest author name, in bytes.
pub const MAX_AUTHOR_BYTES: usize = 128;
/// The largest spec, in bytes of its JSON form: thousands of members.
pub const MAX_SPEC_BYTES: usize = 512 * 1024;
/// The largest command of any other kind, in bytes of its JSON form. The details and reasons
/// that nodes write (step results, verdicts) are far below it.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// A value over its cap: the field, its size and the cap, for a 413 answer or a refusal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {size} bytes, at most {cap} allowed")]
pub struct OverCap {
    /// The field at fault.
    pub field: &'static str,
    /// Its size in bytes.
    pub size: usize,
    /// Its cap in bytes.
    pub cap: usize,
}

fn check(field: &'static str, size: usize, cap: usize) -> Result<(), OverCap> {
    if size > cap { Err(OverCap { field, size, cap }) } else { Ok(()) }
}

/// Checks an author's name.
pub fn check_author(author: &str) -> Result<(), OverCap> {
    check("author", author.len(), MAX_AUTHOR_BYTES)
}

/// Checks a note's author and text.
pub fn check_note(author: &str, text: &str) -> Result<(), OverCap> {
    check_author(author)?;
    check("text", text.len(), MAX_NOTE_BYTES)
}

/// Checks a spec's size.
pub fn check_spec(spec: &ClusterSpec) -> Result<(), OverCap> {
    check("spec", json_size(spec), MAX_SPEC_BYTES)
}

/// Checks every cap that applies to `command`.
pub fn check_command(command: &Command) -> Result<(), OverCap> {
    match command {
        Command::RecordEvent { kind: EventKind::Note { author, text }, .. } => check_note(author, text)?,
        Command::ApplySpec { spec, author, .. } => {
            check_author(author)?;
            return check_spec(spec);
        }
        Command::SetPaused { author, .. } => check_author(author)?,
        _ => {}
    }
    check("command", json_size(command), MAX_COMMAND_BYTES)
}

fn json_size<T: serde::Serialize>(value: &T) -> usize {
    // Serializing a value of these types cannot fail (string keys, no non-finite floats);
    // were it to, the size is taken as unbounded.
    serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(author: &str, text: &str) -> Command {
        Command::RecordEvent {
            at_unix_ms: 1,
            proposer: 1,
            kind: EventKind::Note { author: author.to_string(), text: text.to_string() },
        }
    }

    #[test]
    fn a_note_at_its_cap_passes_and_one_byte_over_is_named() {
        check_command(&note("ops", &"x".repeat(MAX_NOTE_BYTES))).unwrap();
        let over = check_command(&note("ops", &"x".repeat(MAX_NOTE_BYTES + 1))).unwrap_err();
        assert_eq!(over, OverCap { field: "text", size: MAX_NOTE_BYTES + 1, cap: MAX_NOTE_BYTES });
        assert_eq!(over.to_string(), "text: 2049 bytes, at most 2048 allowed");
        let author = check_command(&note(&"a".repeat(MAX_AUTHOR_BYTES + 1), "hi")).unwrap_err();
        assert_eq!(author.field, "author");
    }

    #[test]
    fn any_command_is_capped() {
        let command = Command::SetBlocked { group: "main".into(), reason: Some("y".repeat(MAX_COMMAND_BYTES)) };
        assert_eq!(check_command(&command).unwrap_err().field, "command");
    }
}
