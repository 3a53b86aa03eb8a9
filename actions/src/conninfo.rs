//! Quoting for the three languages a connection string passes through: libpq's
//! keyword=value syntax, PostgreSQL configuration files, and SQL string literals; and
//! the edit of `postgresql.auto.conf` that makes a server a replica.

/// Builds a libpq keyword=value connection string for a replica's `primary_conninfo`.
///
/// Values that are empty or contain whitespace, `'` or `\` are single-quoted, with `'`
/// and `\` escaped by a backslash, as libpq requires; the others are left bare so the
/// usual case stays readable.
pub fn primary_conninfo(host: &str, port: u16, user: &str, password: &str, application_name: &str) -> String {
    [
        ("host", host),
        ("port", &port.to_string()),
        ("user", user),
        ("password", password),
        ("application_name", application_name),
    ]
    .iter()
    .map(|(keyword, value)| format!("{keyword}={}", libpq_value(value)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// More `keyword=value` words (the TLS settings, say), quoted as libpq wants them, each
/// after a space: to append to a connection string.
pub fn more_words(words: &[(&str, String)]) -> String {
    words.iter().map(|(keyword, value)| format!(" {keyword}={}", libpq_value(value))).collect()
}

/// How a PostgreSQL tool vigil runs (`pg_rewind`, `pg_basebackup`) reaches a server: the
/// connection string without the password, which reaches the tool through its environment
/// (`PGPASSWORD`), never its command line, where every local user could read it in `ps`.
#[derive(Clone, PartialEq, Eq)]
pub struct ToolConnection {
    /// The connection string, without a password.
    pub conninfo: String,
    /// The password.
    pub password: String,
}

impl ToolConnection {
    /// A connection to `host:port` as `user`, named `application_name`, to `database` if
    /// given (a replication connection names none).
    pub fn new(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        application_name: &str,
        database: Option<&str>,
    ) -> Self {
        let mut words = vec![("host", host.to_string()), ("port", port.to_string()), ("user", user.to_string())];
        words.push(("application_name", application_name.to_string()));
        if let Some(database) = database {
            words.push(("dbname", database.to_string()));
        }
        let conninfo = words
            .iter()
            .map(|(keyword, value)| format!("{keyword}={}", libpq_value(value)))
            .collect::<Vec<_>>()
            .join(" ");
        ToolConnection { conninfo, password: password.to_string() }
    }

    /// The same connection with more words (the TLS settings, say).
    pub fn with_words(mut self, words: &[(&str, String)]) -> Self {
        self.conninfo.push_str(&more_words(words));
        self
    }
}

impl std::fmt::Debug for ToolConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolConnection").field("conninfo", &self.conninfo).field("password", &"<hidden>").finish()
    }
}

fn libpq_value(value: &str) -> String {
    let needs_quotes = value.is_empty() || value.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if !needs_quotes {
        return value.to_string();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// A SQL string literal for `value`, valid whatever `standard_conforming_strings` says:
/// quotes are doubled, and a value with backslashes becomes an `E'...'` literal with them
/// doubled (as PostgreSQL's own `quote_literal` does).
pub(crate) fn sql_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if value.contains('\\') { format!("E'{}'", doubled.replace('\\', "\\\\")) } else { format!("'{doubled}'") }
}

/// A single-quoted string for a PostgreSQL configuration file: `'` and `\` are doubled,
/// as `ALTER SYSTEM` writes them.
pub(crate) fn conf_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Reads a configuration value back: a quoted string is unquoted (`''`, `\'` and `\\`
/// and the usual `\n`-style escapes), anything else is taken up to a `#` comment.
pub(crate) fn parse_conf_value(raw: &str) -> String {
    let raw = raw.trim();
    let Some(quoted) = raw.strip_prefix('\'') else {
        return raw.split('#').next().unwrap_or_default().trim().to_string();
    };
    let mut value = String::new();
    let mut chars = quoted.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                value.push('\'');
            }
            '\'' => break,
            '\\' => match chars.next() {
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                Some('r') => value.push('\r'),
                Some('b') => value.push('\u{8}'),
                Some('f') => value.push('\u{c}'),
                Some(other) => value.push(other),
                None => break,
            },
            other => value.push(other),
        }
    }
    value
}

/// The setting a configuration line assigns, lowercased (setting names are
/// case-insensitive), or `None` for blank lines and comments.
fn setting_name(line: &str) -> Option<String> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(line.len());
    Some(line[..end].to_ascii_lowercase())
}

/// The value the file's last line for `name` assigns (the last one wins in PostgreSQL).
pub(crate) fn conf_setting(text: &str, name: &str) -> Option<String> {
    text.lines().rfind(|line| setting_name(line).as_deref() == Some(name)).map(|line| {
        let after_name = line.trim_start()[name.len()..].trim_start();
        parse_conf_value(after_name.strip_prefix('=').unwrap_or(after_name))
    })
}

/// Rewrites `postgresql.auto.conf` for a replica: every other line is kept, any
/// `primary_conninfo` line is replaced by one for `conninfo`, and any
/// `default_transaction_read_only` line is dropped, since a fenced old primary may carry
/// one that would make it refuse writes once it is promoted again.
pub(crate) fn replica_auto_conf(existing: &str, conninfo: &str) -> String {
    let mut text: String = existing
        .lines()
        .filter(|line| {
            !matches!(setting_name(line).as_deref(), Some("primary_conninfo" | "default_transaction_read_only"))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    text.push_str(&format!("primary_conninfo = {}\n", conf_literal(conninfo)));
    text
}

/// Rewrites `postgresql.auto.conf` for a primary started fenced: every other line is kept
/// and `default_transaction_read_only` is on, as `ALTER SYSTEM SET` would leave it, so the
/// server refuses writes from its first moment until the fence is lifted
/// (`ALTER SYSTEM RESET`).
pub(crate) fn fenced_auto_conf(existing: &str) -> String {
    let mut text: String = existing
        .lines()
        .filter(|line| setting_name(line).as_deref() != Some("default_transaction_read_only"))
        .map(|line| format!("{line}\n"))
        .collect();
    text.push_str("default_transaction_read_only = 'on'\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_start_sets_read_only_once_and_keeps_the_rest() {
        let existing = "# Do not edit this file manually!\nwork_mem = '8MB'\ndefault_transaction_read_only = 'off'\n";
        assert_eq!(
            fenced_auto_conf(existing),
            "# Do not edit this file manually!\nwork_mem = '8MB'\ndefault_transaction_read_only = 'on'\n"
        );
    }

    #[test]
    fn plain_values_stay_bare() {
        assert_eq!(
            primary_conninfo("127.0.0.1", 5433, "replicator", "secret", "pg3"),
            "host=127.0.0.1 port=5433 user=replicator password=secret application_name=pg3"
        );
    }

    #[test]
    fn quotes_backslashes_spaces_and_empty_values_are_quoted() {
        assert_eq!(
            primary_conninfo("db host", 1, "", r"it's a \ test", "x"),
            r"host='db host' port=1 user='' password='it\'s a \\ test' application_name=x"
        );
    }

    #[test]
    fn sql_literals_survive_any_string_setting() {
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal(r"a\b'c"), r"E'a\\b''c'");
    }

    #[test]
    fn conf_values_round_trip() {
        for value in ["plain", "it's", r"back\slash", r"password='it\'s'", ""] {
            assert_eq!(parse_conf_value(&conf_literal(value)), value, "{value}");
        }
        assert_eq!(parse_conf_value("on # comment"), "on");
    }

    #[test]
    fn replica_auto_conf_replaces_conninfo_and_drops_read_only() {
        let existing = "# Do not edit this file manually!\n\
                        max_connections = '50'\n\
                        primary_conninfo = 'host=old'\n\
                        Default_Transaction_Read_Only = 'on'\n\
                        primary_slot_name = 'slot'\n";
        let rewritten = replica_auto_conf(existing, "host=new port=5");
        assert_eq!(
            rewritten,
            "# Do not edit this file manually!\n\
             max_connections = '50'\n\
             primary_slot_name = 'slot'\n\
             primary_conninfo = 'host=new port=5'\n"
        );
        assert_eq!(conf_setting(&rewritten, "primary_conninfo").as_deref(), Some("host=new port=5"));
        assert_eq!(conf_setting(&rewritten, "primary_slot_name").as_deref(), Some("slot"));
        assert_eq!(conf_setting(&rewritten, "default_transaction_read_only"), None);
    }

    #[test]
    fn the_last_setting_wins() {
        let text = "primary_conninfo = 'a'\nprimary_conninfo='b'\n";
        assert_eq!(conf_setting(text, "primary_conninfo").as_deref(), Some("b"));
    }
}
