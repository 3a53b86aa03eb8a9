//! Logging and Prometheus metrics.
//!
//! Every log line carries the node id, whichever task wrote it (openraft's own tasks
//! included), because the formatter adds it rather than a span that tasks may not inherit.

use std::fmt;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use openraft::{RaftMetrics, ServerState};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use vigil_consensus::TypeConfig;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. `node` is the node id, or `None` for the CLI.
pub fn init_logging(format: LogFormat, filter: &str, node: Option<u64>) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let formatter = LineFormat { format, node };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(formatter)
        .try_init();
}

struct LineFormat {
    format: LogFormat,
    node: Option<u64>,
}

#[derive(Default)]
struct FieldCollector {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl Visit for FieldCollector {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::String(value.to_string()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::from(value));
    }
}

impl FieldCollector {
    fn insert(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(text) => text,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut collected = FieldCollector::default();
        event.record(&mut collected);
        let metadata = event.metadata();
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        match self.format {
            LogFormat::Text => {
                write!(writer, "{time} {:>5}", metadata.level())?;
                if let Some(node) = self.node {
                    write!(writer, " node={node}")?;
                }
                write!(writer, " {}: {}", metadata.target(), collected.message.unwrap_or_default())?;
                for (name, value) in &collected.fields {
                    match value {
                        Value::String(text) => write!(writer, " {name}={text:?}")?,
                        other => write!(writer, " {name}={other}")?,
                    }
                }
                writeln!(writer)
            }
            LogFormat::Json => {
                let mut line = Map::new();
                line.insert("time".into(), Value::String(time.to_string()));
                line.insert("level".into(), Value::String(metadata.level().to_string()));
                if let Some(node) = self.node {
                    line.insert("node".into(), Value::from(node));
                }
                line.insert("target".into(), Value::String(metadata.target().to_string()));
                line.insert("message".into(), Value::String(collected.message.unwrap_or_default()));
                if !collected.fields.is_empty() {
                    line.insert("fields".into(), Value::Object(collected.fields));
                }
                writeln!(writer, "{}", Value::Object(line))
            }
        }
    }
}

/// Installs the Prometheus recorder and describes vigil's metrics.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    metrics::describe_gauge!("vigil_raft_term", "Current Raft term of this node");
    metrics::describe_gauge!("vigil_raft_is_leader", "1 when this node is the Raft leader, else 0");
    metrics::describe_gauge!("vigil_raft_commit_index", "Highest Raft log index known committed");
    metrics::describe_gauge!("vigil_raft_applied_index", "Highest Raft log index applied on this node");
    metrics::describe_gauge!("vigil_raft_last_log_index", "Highest Raft log index in this node's log");
    metrics::describe_gauge!("vigil_peer_rtt_seconds", "QUIC round-trip time estimate to each peer");
    metrics::describe_counter!("vigil_raft_rpc_errors_total", "Failed Raft RPCs to each peer, by kind");
    metrics::describe_counter!(
        "vigil_api_connections_refused_total",
        "API connections closed before any request, by reason: handshake, handshake_timeout, too_many"
    );
    metrics::describe_gauge!("vigil_group_epoch", "Epoch of each group");
    metrics::describe_gauge!("vigil_group_paused", "1 when automatic failover of the group is paused");
    metrics::describe_gauge!("vigil_group_blocked", "1 when the primary is down and no failover is possible");
    metrics::describe_gauge!("vigil_group_failover_running", "1 while a failover or switchover of the group runs");
    metrics::describe_gauge!(
        "vigil_group_failovers",
        "Finished failover runs kept in the group's history, by kind and outcome"
    );
    metrics::describe_gauge!("vigil_member_is_primary", "1 for the member the cluster holds to be the primary");
    metrics::describe_gauge!(
        "vigil_member_health",
        "This node's verdict on each member: 2 up, 1 degraded, 0 down, -1 none"
    );
    metrics::describe_gauge!(
        "vigil_member_lag_bytes",
        "Bytes of WAL a replica is behind the primary's last known position"
    );
    Ok(handle)
}

/// Copies openraft's metrics into the Prometheus gauges.
pub fn record_raft_metrics(raft: &RaftMetrics<TypeConfig>) {
    metrics::gauge!("vigil_raft_term").set(raft.current_term as f64);
    metrics::gauge!("vigil_raft_is_leader").set(if raft.state == ServerState::Leader { 1.0 } else { 0.0 });
    let index = |log_id: Option<u64>| log_id.map_or(0.0, |index| index as f64);
    metrics::gauge!("vigil_raft_commit_index").set(index(raft.cluster_committed.map(|l| l.index)));
    metrics::gauge!("vigil_raft_applied_index").set(index(raft.last_applied.map(|l| l.index)));
    metrics::gauge!("vigil_raft_last_log_index").set(index(raft.last_log_index));
}

/// Copies the replicated group state into the Prometheus gauges, as this node sees it.
pub fn record_group_metrics(state: &vigil_consensus::ClusterState, node_id: u64) {
    use vigil_consensus::group::{FailoverKind, Health};
    for spec in state.spec.groups().map(|group| group.policy()) {
        let group = state.groups.get(&spec.name).cloned().unwrap_or_default();
        let name = spec.name.clone();
        metrics::gauge!("vigil_group_epoch", "group" => name.clone()).set(group.epoch as f64);
        metrics::gauge!("vigil_group_paused", "group" => name.clone()).set(f64::from(u8::from(group.paused)));
        metrics::gauge!("vigil_group_blocked", "group" => name.clone())
            .set(f64::from(u8::from(group.blocked.is_some())));
        metrics::gauge!("vigil_group_failover_running", "group" => name.clone())
            .set(f64::from(u8::from(group.running.is_some())));
        for kind in [FailoverKind::Automatic, FailoverKind::Switchover, FailoverKind::Forced] {
            for succeeded in [true, false] {
                let count =
                    group.finished.iter().filter(|run| run.kind == kind && run.succeeded == Some(succeeded)).count();
                metrics::gauge!(
                    "vigil_group_failovers",
                    "group" => name.clone(),
                    "kind" => kind.to_string(),
                    "outcome" => if succeeded { "succeeded" } else { "abandoned" }
                )
                .set(count as f64);
            }
        }
        let primary_lsn = group.primary.as_ref().and_then(|primary| group.last_primary_lsn.get(primary)).copied();
        for member in &spec.members {
            let labels = [("group", name.clone()), ("member", member.name.clone())];
            let is_primary = group.primary.as_deref() == Some(member.name.as_str());
            metrics::gauge!("vigil_member_is_primary", &labels).set(f64::from(u8::from(is_primary)));
            let mine = group.verdicts.get(&member.name).and_then(|reports| reports.get(&node_id));
            let health = match mine.map(|report| report.verdict.health) {
                Some(Health::Up) => 2.0,
                Some(Health::Degraded) => 1.0,
                Some(Health::Down) => 0.0,
                None => -1.0,
            };
            metrics::gauge!("vigil_member_health", &labels).set(health);
            let replay = mine.and_then(|report| report.verdict.facts.as_ref()).filter(|facts| facts.in_recovery);
            if let (Some(primary_lsn), Some(replay_lsn)) = (primary_lsn, replay.and_then(|facts| facts.replay_lsn)) {
                metrics::gauge!("vigil_member_lag_bytes", &labels).set(primary_lsn.saturating_sub(replay_lsn) as f64);
            }
        }
    }
}
