//! Publishes this node's allow-list into the replicated state, so that the leader can refuse
//! a spec that asks this node for what it does not allow.
//!
//! Once per start, until it commits: a node that has just joined is not a member yet, and a
//! cluster without a leader commits nothing; both are waited out.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use vigil_consensus::allow::AllowList;
use vigil_consensus::{Cluster, Command, CommandResponse};

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between attempts.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Commits `allow` as this node's allow-list, unless the state has it already.
pub async fn publish_allow_list(cluster: Cluster, allow: AllowList, cancel: CancellationToken) {
    loop {
        if cluster.state().allowed.get(&cluster.node_id) == Some(&allow) {
            return;
        }
        let command = Command::PublishAllowList { node: cluster.node_id, allow: allow.clone() };
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            attempt = cluster.propose(command, ATTEMPT_TIMEOUT) => attempt,
        };
        match attempt {
            Ok(applied) if applied.response == CommandResponse::Applied => {
                info!(log_index = applied.log_index, "published what this node allows ([allow])");
                return;
            }
            Ok(applied) => debug!(response = ?applied.response, "allow-list not taken yet"),
            Err(error) => debug!(%error, "allow-list not published yet"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY_AFTER) => {}
        }
    }
}
