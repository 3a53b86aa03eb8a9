//! The cluster spec file (`vigil apply -f cluster.toml`): parsing, and the checks that need
//! this host (secret files and variables), on top of the pure checks in the consensus crate.

use std::collections::BTreeMap;

use vigil_consensus::spec::{ClusterSpec, SecretSource, SpecError};
use vigil_consensus::{NodeId, NodeInfo};

/// Parses a spec from TOML text; errors name the field.
pub fn parse(text: &str) -> Result<ClusterSpec, SpecError> {
    toml::from_str(text).map_err(|e| SpecError {
        field: e
            .span()
            .map(|span| crate::toml_field::describe_span(text, span))
            .unwrap_or_else(|| "(file)".to_string()),
        message: e.message().trim().to_string(),
    })
}

/// The spec as TOML, as `vigil spec` prints it.
pub fn render(spec: &ClusterSpec) -> String {
    toml::to_string_pretty(spec).unwrap_or_else(|e| format!("# cannot render the spec: {e}\n"))
}

/// Every check: the pure ones against the membership, then that each secret can be read
/// on this host. Every node must be able to read them; the node that takes the apply checks
/// its own copy, and the others report a missing secret in their logs and status.
pub fn validate(spec: &ClusterSpec, nodes: &BTreeMap<NodeId, NodeInfo>) -> Result<(), SpecError> {
    spec.validate(nodes)?;
    for (index, group) in spec.postgres.iter().enumerate() {
        for (name, source) in [("password", &group.password), ("replication_password", &group.replication_password)] {
            resolve_secret(source)
                .map_err(|message| SpecError { field: format!("postgres[{index}].{name}"), message })?;
        }
    }
    for (index, group) in spec.redis.iter().enumerate() {
        if let Some(source) = &group.password {
            resolve_secret(source)
                .map_err(|message| SpecError { field: format!("redis[{index}].password"), message })?;
        }
        crate::members::targets::redis_tls(group)
            .map_err(|error| SpecError { field: format!("redis[{index}].tls"), message: error.to_string() })?;
    }
    Ok(())
}

/// Reads a secret from its file (trailing newline removed) or environment variable.
pub fn resolve_secret(source: &SecretSource) -> Result<String, String> {
    let value = match (&source.file, &source.env) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?,
        (None, Some(variable)) => {
            std::env::var(variable).map_err(|_| format!("environment variable {variable} is not set for vigil"))?
        }
        (None, None) => return Err("no file or env given".to_string()),
    };
    let value = value.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        return Err(format!("{source} is empty"));
    }
    Ok(value)
}
