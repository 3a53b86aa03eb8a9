//! The API's group routes: the spec, pause and resume, switchover and failover, and the
//! group part of the status report.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use vigil_consensus::cluster::unix_millis_now;
use vigil_consensus::decision::{STALE_AFTER_MS, Situation, plan_requested};
use vigil_consensus::group::{GroupState, Health};
use vigil_consensus::limits;
use vigil_consensus::spec::{ClusterSpec, GroupKind, GroupPolicy};
use vigil_consensus::state::CommandResponse;
use vigil_consensus::transport::rpc::{LeaderRequest, LeaderResponse};
use vigil_consensus::{ClusterState, Command, SubmitError};

use crate::api::auth::Principal;
use crate::api::model::{
    ApplySpecRequest, FailoverRequest, GroupMemberStatus, GroupStatus, PauseRequest, RunReceipt, WriteReceipt,
};
use crate::api::routes::{ApiState, error_response, submit_error_response, too_large};
use crate::spec_file;

/// Answers a committed command: `on_done` for one the state machine took, 409 with the
/// reason for one it refused, and the usual errors when nothing was committed.
fn answer(
    response: Result<LeaderResponse, SubmitError>,
    on_done: impl FnOnce(u64, CommandResponse) -> Response,
) -> Response {
    match response {
        Ok(LeaderResponse::Done { response: CommandResponse::Refused { reason }, .. }) => {
            error_response(StatusCode::CONFLICT, "refused", reason)
        }
        Ok(LeaderResponse::Done { log_index, response }) => on_done(log_index, response),
        Ok(LeaderResponse::NotLeader { .. }) => submit_error_response(SubmitError::NoLeader),
        Ok(LeaderResponse::Failed { reason }) => submit_error_response(SubmitError::Refused(reason)),
        Err(error) => submit_error_response(error),
    }
}

fn receipt(log_index: u64, _: CommandResponse) -> Response {
    (StatusCode::OK, Json(WriteReceipt { log_index })).into_response()
}

/// `POST /spec`.
pub async fn apply_spec(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Json(request): Json<ApplySpecRequest>,
) -> Response {
    let spec = match spec_file::parse(&request.toml) {
        Ok(spec) => spec,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, "bad_request", error.to_string()),
    };
    let nodes = state.cluster.known_nodes();
    if let Err(error) = spec_file::validate(&spec, &nodes) {
        return error_response(StatusCode::BAD_REQUEST, "bad_request", error.to_string());
    }
    let author = principal.author(&request.author);
    if let Err(over) = limits::check_spec(&spec).and_then(|()| limits::check_author(&author)) {
        return too_large(over);
    }
    wait_for_allow_lists(&state).await;
    let command = Command::ApplySpec { spec, at_unix_ms: unix_millis_now(), proposer: state.cluster.node_id, author };
    let claim = principal.claim(&request.author);
    answer(state.cluster.submit_as(LeaderRequest::Write { command }, claim).await, receipt)
}

/// How long `POST /spec` waits for nodes that have not published their allow-list yet: a
/// node does as soon as it runs and the cluster has a leader.
const ALLOW_LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits, at most [`ALLOW_LIST_WAIT`], until every node has published what it allows: the
/// leader refuses a spec while one has not, and a node that has just started publishes
/// within a moment.
async fn wait_for_allow_lists(state: &ApiState) {
    let deadline = tokio::time::Instant::now() + ALLOW_LIST_WAIT;
    while tokio::time::Instant::now() < deadline {
        let nodes = state.cluster.known_nodes();
        let published = {
            let replicated = state.cluster.state();
            nodes.keys().all(|id| replicated.allowed.contains_key(id))
        };
        if published {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `GET /spec`.
pub async fn get_spec(State(state): State<ApiState>) -> Json<ClusterSpec> {
    Json(state.cluster.state().spec.clone())
}

async fn set_paused(state: &ApiState, principal: &Principal, group: String, paused: bool, claimed: &str) -> Response {
    let author = principal.author(claimed);
    if let Err(over) = limits::check_author(&author) {
        return too_large(over);
    }
    let command =
        Command::SetPaused { group, paused, author, at_unix_ms: unix_millis_now(), proposer: state.cluster.node_id };
    answer(state.cluster.submit_as(LeaderRequest::Write { command }, principal.claim(claimed)).await, receipt)
}

/// `POST /groups/{group}/pause`.
pub async fn pause(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
    Json(request): Json<PauseRequest>,
) -> Response {
    set_paused(&state, &principal, group, true, &request.author).await
}

/// `POST /groups/{group}/resume`.
pub async fn resume(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
    Json(request): Json<PauseRequest>,
) -> Response {
    set_paused(&state, &principal, group, false, &request.author).await
}

async fn request_run(
    state: &ApiState,
    principal: &Principal,
    group: &str,
    request: FailoverRequest,
    forced: bool,
) -> Response {
    let plan = {
        let replicated = state.cluster.state();
        let Some(spec) = replicated.spec.group(group).map(|group| group.policy()) else {
            return error_response(StatusCode::NOT_FOUND, "not_found", format!("no group is named {group:?}"));
        };
        let spec = &spec;
        let group_state = replicated.groups.get(group).cloned().unwrap_or_default();
        let voters = replicated.voter_ids();
        let nodes = replicated.nodes();
        let situation = Situation {
            spec,
            state: &group_state,
            voters: &voters,
            nodes: &nodes,
            now_ms: unix_millis_now(),
            // Operator requests plan their own fencing; the lease does not matter here.
            primary_lease_run_out: false,
            // This node may not lead: the leader itself refuses to promote towards a node it
            // does not hear from, when it comes to the promotion.
            unreachable: &std::collections::BTreeSet::new(),
        };
        match plan_requested(&situation, request.to.as_deref(), forced) {
            Ok(plan) => plan,
            Err(refusal) => return error_response(StatusCode::CONFLICT, "refused", refusal),
        }
    };
    let candidate = plan.candidate.clone();
    let command = Command::BeginFailover {
        group: group.to_string(),
        kind: plan.kind,
        reason: format!("{} by {}", plan.reason, principal.author(&request.author)),
        old_primary: plan.old_primary,
        candidate: plan.candidate,
        plan: plan.steps,
        detected_at_ms: None,
        decided_at_ms: unix_millis_now(),
        old_primary_lsn: plan.old_primary_lsn,
        candidate_lsn: plan.candidate_lsn,
        proposer: state.cluster.node_id,
    };
    let claim = principal.claim(&request.author);
    answer(state.cluster.submit_as(LeaderRequest::Write { command }, claim).await, |_, response| match response {
        CommandResponse::RunStarted { run_id, epoch } => {
            (StatusCode::OK, Json(RunReceipt { run_id, epoch, candidate })).into_response()
        }
        other => error_response(StatusCode::CONFLICT, "refused", format!("unexpected answer {other:?}")),
    })
}

/// `POST /groups/{group}/switchover`.
pub async fn switchover(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
    Json(request): Json<FailoverRequest>,
) -> Response {
    request_run(&state, &principal, &group, request, false).await
}

/// `POST /groups/{group}/failover`: forced, to a named member.
pub async fn failover(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(group): Path<String>,
    Json(request): Json<FailoverRequest>,
) -> Response {
    if request.to.is_none() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "to: a forced failover needs the member to promote",
        );
    }
    request_run(&state, &principal, &group, request, true).await
}

/// `GET /groups/{group}`.
pub async fn group(State(state): State<ApiState>, Path(group): Path<String>) -> Response {
    let replicated = state.cluster.state();
    match group_statuses(&replicated, unix_millis_now()).into_iter().find(|status| status.name == group) {
        Some(status) => Json(status).into_response(),
        None => error_response(StatusCode::NOT_FOUND, "not_found", format!("no group is named {group:?}")),
    }
}

/// The groups part of a status report.
pub fn group_statuses(replicated: &ClusterState, now_ms: u64) -> Vec<GroupStatus> {
    let nodes = replicated.nodes();
    replicated
        .spec
        .groups()
        .map(|group| group.policy())
        .map(|spec| {
            let state = replicated.groups.get(&spec.name).cloned().unwrap_or_default();
            GroupStatus {
                name: spec.name.clone(),
                kind: match spec.kind {
                    GroupKind::Postgres => "postgres".to_string(),
                    GroupKind::Redis => "redis".to_string(),
                },
                primary: state.primary.clone(),
                epoch: state.epoch,
                paused: state.paused,
                blocked: state.blocked.clone(),
                synchronous: match spec.synchronous {
                    vigil_consensus::spec::SyncMode::Off => "off".to_string(),
                    vigil_consensus::spec::SyncMode::Strict => "strict".to_string(),
                },
                sync_standbys: state.sync_standbys.iter().cloned().collect(),
                sync_note: state.sync_note.clone(),
                lease_holder: state.lease.as_ref().filter(|lease| lease.released.is_none()).map(|lease| lease.holder),
                members: member_statuses(&spec, &state, &nodes, now_ms),
                running: state.running.clone(),
                last_run: state.finished.back().cloned(),
            }
        })
        .collect()
}

fn member_statuses(
    spec: &GroupPolicy,
    state: &GroupState,
    nodes: &std::collections::BTreeMap<u64, vigil_consensus::NodeInfo>,
    now_ms: u64,
) -> Vec<GroupMemberStatus> {
    let primary_lsn = state.primary.as_ref().and_then(|primary| state.last_primary_lsn.get(primary)).copied();
    spec.members
        .iter()
        .map(|member| {
            let reports = state.verdicts.get(&member.name);
            let mut verdicts = std::collections::BTreeMap::new();
            let mut problem = None;
            let mut freshest = None::<&vigil_consensus::group::VerdictReport>;
            for (node, report) in reports.into_iter().flatten() {
                let node_name = nodes.get(node).map_or_else(|| format!("node-{node}"), |info| info.name.clone());
                let stale = now_ms.saturating_sub(report.observed_at_ms) > STALE_AFTER_MS;
                let label = if stale { "stale".to_string() } else { report.verdict.health.to_string() };
                if !stale && report.verdict.health != Health::Up && problem.is_none() {
                    problem = report.verdict.reason.clone().map(|reason| format!("{node_name}: {reason}"));
                }
                verdicts.insert(node_name, label);
                if !stale
                    && report.verdict.facts.is_some()
                    && freshest.is_none_or(|best| report.observed_at_ms > best.observed_at_ms)
                {
                    freshest = Some(report);
                }
            }
            let facts = freshest.and_then(|report| report.verdict.facts.clone());
            let role = match &facts {
                Some(facts) if facts.in_recovery => "replica",
                Some(_) => "primary",
                None => "unknown",
            };
            // A replica's position is what it has replayed: what a promotion would keep.
            let lsn =
                facts.as_ref().and_then(|facts| if facts.in_recovery { facts.replay_lsn } else { facts.current_lsn });
            let lag_bytes = match (&facts, primary_lsn) {
                (Some(facts), Some(primary_lsn)) if facts.in_recovery => {
                    facts.replay_lsn.map(|replay| primary_lsn.saturating_sub(replay))
                }
                _ => None,
            };
            GroupMemberStatus {
                name: member.name.clone(),
                node: member.node.clone(),
                address: member.address.clone(),
                role: role.to_string(),
                verdicts,
                problem: problem.or_else(|| state.member_notes.get(&member.name).cloned()),
                lsn,
                lag_bytes,
                lag_ms: facts.as_ref().and_then(|facts| facts.replay_delay_ms),
                timeline: facts.as_ref().and_then(|facts| facts.timeline),
                upstream: facts.as_ref().and_then(|facts| facts.upstream.clone()),
                nofailover: member.nofailover,
                unguarded: member.unguarded_because.map(str::to_string),
            }
        })
        .collect()
}

/// The member beside this node in `group`, whether it is the recorded primary, and whether
/// this node's latest verdict on it is "up" in that role.
fn role_here(state: &ApiState, group: &str) -> Result<(String, bool, bool), String> {
    let replicated = state.cluster.state();
    let Some(spec) = replicated.spec.group(group).map(|group| group.policy()) else {
        return Err(format!("no group is named {group:?}"));
    };
    let node_name = replicated.nodes().get(&state.cluster.node_id).map(|node| node.name.clone()).unwrap_or_default();
    let Some(member) = spec.members.iter().find(|member| member.node == node_name) else {
        return Err(format!("no member of {group:?} runs beside node {node_name}"));
    };
    let group_state = replicated.groups.get(group);
    let is_primary = group_state.and_then(|state| state.primary.as_deref()) == Some(member.name.as_str());
    let verdict = group_state
        .and_then(|state| state.verdicts.get(&member.name))
        .and_then(|reports| reports.get(&state.cluster.node_id))
        .map(|report| &report.verdict);
    let healthy = verdict.is_some_and(|verdict| {
        verdict.health == Health::Up && verdict.facts.as_ref().is_some_and(|facts| facts.in_recovery != is_primary)
    });
    Ok((member.name.clone(), is_primary, healthy))
}

fn role_answer(member: String, is_primary: bool, healthy: bool, want_primary: bool) -> Response {
    let role = if is_primary { "primary" } else { "replica" };
    let body = Json(serde_json::json!({ "member": member, "role": role, "healthy": healthy }));
    let code = if is_primary == want_primary && healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, body).into_response()
}

/// `GET /primary/{group}`: 200 only on the node beside the group's primary while this node
/// sees it up, 503 elsewhere, so a load balancer sends writes to the right host (as
/// Patroni's `/primary`).
pub async fn primary_here(State(state): State<ApiState>, Path(group): Path<String>) -> Response {
    match role_here(&state, &group) {
        Ok((member, is_primary, healthy)) => role_answer(member, is_primary, healthy, true),
        Err(message) => error_response(StatusCode::NOT_FOUND, "not_found", message),
    }
}

/// `GET /replica/{group}`: 200 only on a node beside a replica this node sees streaming.
pub async fn replica_here(State(state): State<ApiState>, Path(group): Path<String>) -> Response {
    match role_here(&state, &group) {
        Ok((member, is_primary, healthy)) => role_answer(member, is_primary, healthy, false),
        Err(message) => error_response(StatusCode::NOT_FOUND, "not_found", message),
    }
}
