//! The API's routes: status, health, metrics, membership, notes and history.
//!
//! Reads answer from this node's own view; writes go through [`Cluster::submit`], which
//! forwards them to the leader when this node is not the leader.

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::ServerState;
use serde::Deserialize;
use vigil_consensus::cluster::unix_millis_now;
use vigil_consensus::limits;
use vigil_consensus::transport::rpc::{LeaderRequest, LeaderResponse};
use vigil_consensus::{Cluster, EventKind, NodeId, NodeInfo, SubmitError};

use crate::api::auth::{self, Principal};
use crate::api::group_routes;
use crate::api::model::{
    AddMemberRequest, ApiError, Health, HistoryReport, MemberStatus, NodeSummary, NoteRequest, StatusReport,
    WriteReceipt,
};

/// The largest request body read: twice the largest spec.
pub const MAX_BODY_BYTES: usize = 2 * limits::MAX_SPEC_BYTES;

/// What every handler needs.
#[derive(Clone)]
pub struct ApiState {
    /// The node's handle on the cluster.
    pub cluster: Cluster,
    /// The cluster's name.
    pub cluster_name: String,
    /// Renders the Prometheus metrics.
    pub prometheus: PrometheusHandle,
}

/// The API router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/members", get(members).post(add_member))
        .route("/members/{id}", delete(remove_member))
        .route("/notes", axum::routing::post(add_note))
        .route("/history", get(history))
        .route("/spec", get(group_routes::get_spec).post(group_routes::apply_spec))
        .route("/groups/{group}", get(group_routes::group))
        .route("/primary/{group}", get(group_routes::primary_here))
        .route("/replica/{group}", get(group_routes::replica_here))
        .route("/groups/{group}/pause", axum::routing::post(group_routes::pause))
        .route("/groups/{group}/resume", axum::routing::post(group_routes::resume))
        .route("/groups/{group}/switchover", axum::routing::post(group_routes::switchover))
        .route("/groups/{group}/failover", axum::routing::post(group_routes::failover))
        // No body needs more than a spec at its cap, in TOML and inside a JSON string.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authorize))
        .with_state(state)
}

/// An error answer with its machine-readable kind.
pub fn error_response(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (status, Json(ApiError { error: error.to_string(), message: message.into() })).into_response()
}

/// The answer to a request with a value over its cap: 413, naming the field and the cap.
pub fn too_large(over: limits::OverCap) -> Response {
    error_response(StatusCode::PAYLOAD_TOO_LARGE, "too_large", over.to_string())
}

/// The answer to a request the cluster could not carry out.
pub fn submit_error_response(error: SubmitError) -> Response {
    match &error {
        SubmitError::NoLeader => error_response(StatusCode::SERVICE_UNAVAILABLE, "no_leader", error.to_string()),
        SubmitError::LeaderUnreachable { .. } => {
            error_response(StatusCode::BAD_GATEWAY, "leader_unreachable", error.to_string())
        }
        SubmitError::Refused(_) => error_response(StatusCode::CONFLICT, "refused", error.to_string()),
    }
}

fn receipt(response: LeaderResponse) -> Response {
    match response {
        LeaderResponse::Done { log_index, .. } => (StatusCode::OK, Json(WriteReceipt { log_index })).into_response(),
        LeaderResponse::NotLeader { .. } => submit_error_response(SubmitError::NoLeader),
        LeaderResponse::Failed { reason } => submit_error_response(SubmitError::Refused(reason)),
    }
}

async fn health(State(state): State<ApiState>) -> Response {
    let metrics = state.cluster.metrics();
    let leader = metrics.current_leader;
    let healthy = leader.is_some() && metrics.state != ServerState::Shutdown;
    let body =
        Health { status: if healthy { "ok" } else { "no_leader" }.to_string(), node_id: state.cluster.node_id, leader };
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

fn role(server_state: ServerState) -> &'static str {
    match server_state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn summary(id: NodeId, info: Option<&NodeInfo>, role: &str) -> NodeSummary {
    NodeSummary {
        id,
        name: info.map(|i| i.name.clone()).unwrap_or_else(|| format!("node-{id}")),
        datacenter: info.map(|i| i.datacenter.clone()).unwrap_or_default(),
        role: role.to_string(),
    }
}

/// Builds this node's view of the cluster.
pub fn status_report(state: &ApiState) -> StatusReport {
    let cluster = &state.cluster;
    let metrics = cluster.metrics();
    let (nodes, voters, groups) = {
        let replicated = cluster.state();
        (replicated.nodes(), replicated.voter_ids(), group_routes::group_statuses(&replicated, unix_millis_now()))
    };
    // openraft's membership is newer than the applied state while a change is in flight.
    let membership = metrics.membership_config.membership().clone();
    let mut all_nodes = nodes;
    for (id, info) in membership.nodes() {
        all_nodes.entry(*id).or_insert_with(|| info.clone());
    }
    let voters: std::collections::BTreeSet<NodeId> =
        if membership.voter_ids().count() > 0 { membership.voter_ids().collect() } else { voters };
    let links = cluster.links().lock().expect("links lock poisoned").clone();
    let now = tokio::time::Instant::now();
    let matched = metrics.replication.clone().unwrap_or_default();

    let mut members: Vec<MemberStatus> = all_nodes
        .iter()
        .map(|(id, info)| {
            let is_self = *id == cluster.node_id;
            let link = links.get(id);
            MemberStatus {
                id: *id,
                name: info.name.clone(),
                datacenter: info.datacenter.clone(),
                raft_addr: info.raft_addr.clone(),
                api_addr: info.api_addr.clone(),
                voter: voters.contains(id),
                leader: metrics.current_leader == Some(*id),
                reachable: if is_self { Some(true) } else { link.map(|l| l.connected) },
                last_contact_ms: if is_self {
                    Some(0)
                } else {
                    link.and_then(|l| l.last_contact).map(|at| now.saturating_duration_since(at).as_millis() as u64)
                },
                rtt_ms: link.and_then(|l| l.rtt).map(|rtt| rtt.as_secs_f64() * 1000.0),
                last_error: link.and_then(|l| l.last_error.clone()),
                matched_index: matched.get(id).and_then(|log_id| log_id.map(|log_id| log_id.index)),
            }
        })
        .collect();
    members.sort_by_key(|member| (!member.voter, member.id));

    StatusReport {
        cluster: state.cluster_name.clone(),
        node: summary(cluster.node_id, all_nodes.get(&cluster.node_id), role(metrics.state)),
        leader: metrics.current_leader.map(|id| summary(id, all_nodes.get(&id), "leader")),
        term: metrics.current_term,
        commit_index: metrics.cluster_committed.map(|log_id| log_id.index),
        applied_index: metrics.last_applied.map(|log_id| log_id.index),
        last_log_index: metrics.last_log_index,
        members,
        groups,
        generated_at_unix_ms: unix_millis_now(),
    }
}

async fn status(State(state): State<ApiState>) -> Json<StatusReport> {
    Json(status_report(&state))
}

async fn members(State(state): State<ApiState>) -> Json<Vec<MemberStatus>> {
    Json(status_report(&state).members)
}

async fn metrics(State(state): State<ApiState>) -> Response {
    crate::telemetry::record_raft_metrics(&state.cluster.metrics());
    crate::telemetry::record_group_metrics(&state.cluster.state(), state.cluster.node_id);
    ([("content-type", "text/plain; version=0.0.4")], state.prometheus.render()).into_response()
}

async fn add_member(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Json(request): Json<AddMemberRequest>,
) -> Response {
    for (field, value) in [("raft_addr", &request.raft_addr), ("api_addr", &request.api_addr)] {
        if value.parse::<std::net::SocketAddr>().is_err() {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{field}: expected IP:PORT, got {value:?}"),
            );
        }
    }
    if request.id == 0 || request.name.trim().is_empty() || request.datacenter.trim().is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "id must be at least 1; name and datacenter must not be empty",
        );
    }
    let node = NodeInfo {
        name: request.name,
        datacenter: request.datacenter,
        raft_addr: request.raft_addr,
        api_addr: request.api_addr,
    };
    let add = LeaderRequest::AddMember { id: request.id, node, learner_only: request.learner };
    state.cluster.submit_as(add, principal.claim("")).await.map_or_else(submit_error_response, receipt)
}

async fn remove_member(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<NodeId>,
) -> Response {
    let remove = LeaderRequest::RemoveMember { id };
    state.cluster.submit_as(remove, principal.claim("")).await.map_or_else(submit_error_response, receipt)
}

async fn add_note(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Json(request): Json<NoteRequest>,
) -> Response {
    if request.text.trim().is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", "text: must not be empty");
    }
    let author = principal.author(&request.author);
    if let Err(over) = limits::check_note(&author, &request.text) {
        return too_large(over);
    }
    let command = state.cluster.event_command(EventKind::Note { author: author.clone(), text: request.text });
    let submitted = state.cluster.submit_as(LeaderRequest::Write { command }, principal.claim(&request.author));
    submitted.await.map_or_else(submit_error_response, receipt)
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    since: u64,
}

async fn history(State(state): State<ApiState>, Query(query): Query<HistoryQuery>) -> Json<HistoryReport> {
    let replicated = state.cluster.state();
    let failovers = replicated
        .groups
        .iter()
        .map(|(name, group)| {
            let runs = group.finished.iter().chain(group.running.iter()).cloned().collect();
            (name.clone(), runs)
        })
        .collect();
    let kinds = replicated
        .spec
        .groups()
        .map(|group| {
            let kind = match group {
                vigil_consensus::spec::GroupRef::Postgres(_) => "postgres",
                vigil_consensus::spec::GroupRef::Redis(_) => "redis",
            };
            (group.name().to_string(), kind.to_string())
        })
        .collect();
    Json(HistoryReport { events: replicated.events_since(query.since).cloned().collect(), failovers, kinds })
}
