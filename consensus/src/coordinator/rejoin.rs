//! Brings the member beside this node back as a replica of the current primary, without a
//! human: a stale primary (an old primary that came back, fenced), a replica that has not
//! streamed from the primary for a while (its history diverged, or it follows another
//! member), or a member that does not run.
//!
//! The how is the member's kind's (PostgreSQL: stop, `pg_rewind`, start as a standby;
//! Redis: `REPLICAOF`). Here is the when: only while the cluster has a primary and no
//! failover runs, judged by this node's own probes made after the last attempt and after the
//! last run this node saw running, with a grace
//! period for a replica that may just be reconnecting, a check on the host before anything is
//! done to a member that seems stopped, and a long pause after a failure unless the primary
//! changed (the failure may have been the old primary's).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Action, Mono, Out, Outcome, Purpose, View};
use crate::group::{GroupState, Health, Step, StepStatus, Verdict};
use crate::spec::GroupPolicy;
use crate::state::Command;

/// How long a replica may go without streaming from the primary before it is rejoined.
pub const NOT_STREAMING_GRACE: Duration = Duration::from_secs(15);
/// How long after a first failed rejoin the next attempt waits (unless the primary changed);
/// each further failure against the same primary doubles it, up to [`RETRY_AFTER_AT_MOST`].
/// A rejoin often fails for a passing reason (the new primary not yet reachable after a
/// cut): the first retries come soon, and a member that keeps failing is not hammered.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// The longest wait between two rejoin attempts.
pub const RETRY_AFTER_AT_MOST: Duration = Duration::from_secs(60);

/// The wait after the `failures`-th failure in a row (1 for the first).
pub fn retry_after(failures: u32) -> Duration {
    RETRY_AFTER.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(RETRY_AFTER_AT_MOST)
}
/// How long a rejoin may take (a re-clone copies the whole data directory).
pub const REJOIN_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long checking whether the server runs may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long catching up with the cluster before a rejoin may take.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a catch-up vouches for this node's state: a rejoin decided later catches up again.
const CAUGHT_UP_FOR: Duration = Duration::from_secs(1);

/// Why a member must rejoin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// It runs as a primary, but the cluster's primary is another member.
    StalePrimary,
    /// It is a replica, but it does not stream from the primary.
    NotStreaming,
    /// It does not run (stopped by a fence, or crashed) and is not the primary.
    Stopped,
}

impl Reason {
    fn words(self) -> &'static str {
        match self {
            Reason::StalePrimary => "it ran as a primary, but the cluster's primary is another member",
            Reason::NotStreaming => "it did not stream from the primary",
            Reason::Stopped => "it was not running",
        }
    }
}

/// An effect of the rejoiner in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Checking whether a member that seems stopped really is.
    Check {
        /// The group.
        group: String,
        /// The primary it would rejoin.
        primary: String,
    },
    /// The rejoin itself.
    Rejoin {
        /// The group.
        group: String,
        /// The primary it rejoins.
        primary: String,
        /// Why.
        why: Reason,
    },
    /// Catching up with the cluster before deciding a rejoin.
    CatchUp {
        /// The group.
        group: String,
        /// When the catch-up was asked for: the state it brings is at least that recent.
        asked_at: Mono,
    },
    /// Recording how it went.
    Record,
}

#[derive(Clone, Debug, Default)]
struct Rejoining {
    busy: bool,
    not_streaming_since: Option<Mono>,
    /// After a failure: when to try again, and against which primary.
    retry: Option<(Mono, String)>,
    /// Failed attempts in a row against the primary of `retry`.
    failures: u32,
    /// Verdicts made before this (the last attempt's end) say nothing of what it did.
    judged_after: Option<Mono>,
    /// A check found it stopped: rejoin it at once.
    confirmed_stopped: Option<String>,
    /// When this node last asked for a catch-up with the cluster for this group that
    /// succeeded.
    caught_up_at: Option<Mono>,
    /// The failover whose failed re-point of the member was answered by a rejoin at once.
    fast_rejoin: Option<u64>,
}

/// The failover that made the current primary, if it failed to re-point `member`.
fn failed_repoint(state: &GroupState, member: &str) -> Option<u64> {
    let run = state.finished.back()?;
    let made_the_primary = run.succeeded == Some(true) && state.primary.as_deref() == Some(run.candidate.as_str());
    let failed = run.steps.iter().any(|step| {
        matches!(&step.step, Step::Repoint { member: repointed } if repointed == member)
            && matches!(step.status, StepStatus::Failed { .. })
    });
    (made_the_primary && failed).then_some(run.id)
}

/// The rejoiner of every member beside this node.
#[derive(Clone, Debug, Default)]
pub struct Rejoiner {
    groups: BTreeMap<String, Rejoining>,
}

/// Why the member needs to rejoin `primary`, by `verdict`, if it does.
pub fn needs_rejoin(verdict: &Verdict, policy: &GroupPolicy, primary: &str) -> Option<Reason> {
    if verdict.health == Health::Down {
        // Whether it really is stopped is checked on the host before anything is done.
        return Some(Reason::Stopped);
    }
    let facts = verdict.facts.as_ref()?;
    if !facts.in_recovery {
        return Some(Reason::StalePrimary);
    }
    let streaming_from_primary = facts.receiver_status.as_deref() == Some("streaming")
        && facts.upstream.as_deref().is_some_and(|upstream| policy.follows(upstream, primary));
    (!streaming_from_primary).then_some(Reason::NotStreaming)
}

impl Rejoiner {
    pub(super) fn drive(&mut self, view: &View<'_>, out: &mut Out<'_>, verdicts: &super::verdicts::Reporter) {
        let now = view.now();
        self.groups.retain(|group, _| view.policy(group).and_then(|policy| view.local_member(policy)).is_some());
        for (policy, member) in view.local_members() {
            let group = policy.name.as_str();
            let entry = self.groups.entry(group.to_string()).or_default();
            if entry.busy {
                continue;
            }
            let Some(state) = view.group_state(group) else { continue };
            let Some(primary) = state.primary.as_deref() else { continue };
            if primary == member.name || state.running.is_some() {
                entry.not_streaming_since = None;
                if state.running.is_some() {
                    // A run may stop, restart or re-point the member: what a probe saw before
                    // its end says nothing of the member after it.
                    entry.judged_after = Some(now);
                }
                continue;
            }
            // By a probe that began after: one under way meanwhile may have seen the member
            // as it was before.
            let judged =
                entry.judged_after.is_none_or(|after| verdicts.probe_started_at(group, &member.name) > Some(after));
            let why = verdicts
                .current(group, &member.name)
                .filter(|_| judged)
                .and_then(|verdict| needs_rejoin(verdict, policy, primary));
            let Some(why) = why else {
                entry.not_streaming_since = None;
                continue;
            };
            if entry.retry.as_ref().is_some_and(|(at, against)| now < *at && against == primary) {
                continue;
            }
            // A replica gets a grace period, since it may just be reconnecting after a
            // re-point; a stale primary rejoins at once, and so does a replica whose re-point
            // by the failover that made this primary failed (its WAL diverged, say): nothing
            // is reconnecting then, and in strict synchronous mode the group may take no
            // write until it streams. Once per such failover: after that, the grace again.
            let failed_repoint = failed_repoint(state, &member.name).filter(|run| entry.fast_rejoin != Some(*run));
            if why == Reason::NotStreaming && failed_repoint.is_none() {
                let since = *entry.not_streaming_since.get_or_insert(now);
                if now.since(since) < NOT_STREAMING_GRACE {
                    continue;
                }
            } else {
                entry.not_streaming_since = None;
            }
            if why == Reason::Stopped && entry.confirmed_stopped.as_deref() != Some(primary) {
                // Down by the probe may be a network fault: act only on a server that is
                // really not running here.
                let pending = Pending::Check { group: group.to_string(), primary: primary.to_string() };
                if out
                    .act_alone(Purpose::Rejoin(pending), group, &member.name, Action::IsRunning, CHECK_TIMEOUT)
                    .is_some()
                {
                    entry.busy = true;
                }
                continue;
            }
            // A rejoin throws away whatever the member wrote on its own history. The state that
            // calls for it must not be one this node applied late (a member just promoted,
            // which this node still takes for a stale primary), so it catches up first and
            // decides again, with a catch-up asked for after the probe it judges by: a member
            // seen running as a primary was promoted before that probe, and the failover that
            // promoted it is then in the state.
            let probed_at = verdicts.probed_at(group, &member.name);
            if entry.caught_up_at.is_none_or(|at| now.since(at) > CAUGHT_UP_FOR || probed_at > Some(at)) {
                let pending = Pending::CatchUp { group: group.to_string(), asked_at: now };
                out.catch_up(Purpose::Rejoin(pending), CATCH_UP_TIMEOUT);
                entry.busy = true;
                continue;
            }
            entry.confirmed_stopped = None;
            let pending = Pending::Rejoin { group: group.to_string(), primary: primary.to_string(), why };
            let action = Action::Rejoin { primary: primary.to_string(), stale_primary: why == Reason::StalePrimary };
            if out.act_alone(Purpose::Rejoin(pending), group, &member.name, action, REJOIN_TIMEOUT).is_some() {
                tracing::warn!(group, member = %member.name, primary, why = why.words(), "rejoining as a replica");
                entry.busy = true;
                if why == Reason::NotStreaming && failed_repoint.is_some() {
                    entry.fast_rejoin = failed_repoint;
                }
            }
        }
    }

    pub(super) fn done(&mut self, view: &View<'_>, out: &mut Out<'_>, pending: Pending, outcome: Outcome) {
        let now = view.now();
        match pending {
            Pending::Check { group, primary } => {
                let Some(entry) = self.groups.get_mut(&group) else { return };
                entry.busy = false;
                if let Outcome::Acted(Ok(report)) = outcome
                    && report.running == Some(false)
                {
                    entry.confirmed_stopped = Some(primary);
                } else {
                    // Running after all (or not known): judged again only by a probe made
                    // after this check, not checked again at once on the same verdict.
                    entry.judged_after = Some(now);
                }
            }
            Pending::Rejoin { group, primary, why } => {
                let Some(entry) = self.groups.get_mut(&group) else { return };
                entry.busy = false;
                entry.not_streaming_since = None;
                entry.judged_after = Some(now);
                let member = view
                    .policy(&group)
                    .and_then(|policy| view.local_member(policy))
                    .map(|member| member.name.clone())
                    .unwrap_or_default();
                entry.caught_up_at = None;
                let (succeeded, detail) = match outcome {
                    Outcome::Acted(Ok(report)) => {
                        tracing::info!(%group, %member, detail = %report.detail, "rejoined");
                        entry.retry = None;
                        entry.failures = 0;
                        (true, report.detail)
                    }
                    Outcome::Acted(Err(failure)) => {
                        tracing::error!(%group, %member, %failure, "rejoin failed");
                        let same_primary = entry.retry.as_ref().is_some_and(|(_, against)| *against == primary);
                        entry.failures = if same_primary { entry.failures + 1 } else { 1 };
                        entry.retry = Some((now + retry_after(entry.failures), primary.clone()));
                        (false, failure.detail)
                    }
                    _ => return,
                };
                let command = Command::RecordRejoin {
                    group,
                    member,
                    primary,
                    succeeded,
                    detail: format!("{}; {detail}", why.words()),
                    at_unix_ms: view.ctx.now.wall_ms,
                    proposer: view.node,
                };
                out.propose(Purpose::Rejoin(Pending::Record), command, Duration::from_secs(10));
            }
            Pending::CatchUp { group, asked_at } => {
                let Some(entry) = self.groups.get_mut(&group) else { return };
                entry.busy = false;
                match outcome {
                    Outcome::CaughtUp(Ok(())) => entry.caught_up_at = Some(asked_at),
                    Outcome::CaughtUp(Err(error)) => {
                        tracing::info!(%group, %error, "cannot catch up with the cluster; no rejoin for now");
                        entry.retry = view
                            .group_state(&group)
                            .and_then(|state| state.primary.clone())
                            .map(|primary| (now + Duration::from_secs(1), primary));
                    }
                    _ => {}
                }
            }
            Pending::Record => {
                if let Outcome::Proposed(Err(error)) = outcome {
                    tracing::warn!(%error, "could not record the rejoin");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries come soon after a first failure, then less and less often, never rarer than
    /// once a minute.
    #[test]
    fn rejoin_retries_back_off_up_to_a_minute() {
        let waits: Vec<u64> = (1..=7).map(|failures| retry_after(failures).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60, 60]);
        assert_eq!(retry_after(u32::MAX), RETRY_AFTER_AT_MOST);
    }

    fn finished_run(id: u64, candidate: &str, repoint_of_pg3: StepStatus) -> crate::group::FailoverRun {
        let step = |step: Step, status: StepStatus| crate::group::StepState { step, status };
        let done = || StepStatus::Succeeded { detail: String::new(), at_ms: 1 };
        crate::group::FailoverRun {
            id,
            kind: crate::group::FailoverKind::Automatic,
            reason: String::new(),
            old_primary: Some("pg1".into()),
            candidate: candidate.into(),
            epoch: id + 1,
            detected_at_ms: None,
            decided_at_ms: 0,
            promoted_at_ms: None,
            first_write_at_ms: None,
            finished_at_ms: Some(2),
            old_primary_lsn: None,
            candidate_lsn: None,
            steps: vec![step(Step::Promote, done()), step(Step::Repoint { member: "pg3".into() }, repoint_of_pg3)],
            succeeded: Some(true),
            outcome: None,
        }
    }

    /// A replica the failover could not re-point is rejoined without the grace, but only
    /// for the failover that made the current primary.
    #[test]
    fn only_the_current_primarys_failover_with_a_failed_repoint_skips_the_grace() {
        let failed = StepStatus::Failed { detail: "diverged".into(), attempt: 1, at_ms: 2 };
        let mut state = GroupState { primary: Some("pg2".into()), ..GroupState::default() };
        state.finished.push_back(finished_run(0, "pg2", failed.clone()));
        assert_eq!(failed_repoint(&state, "pg3"), Some(0));
        assert_eq!(failed_repoint(&state, "pg1"), None);

        let succeeded = StepStatus::Succeeded { detail: String::new(), at_ms: 2 };
        state.finished.push_back(finished_run(1, "pg2", succeeded));
        assert_eq!(failed_repoint(&state, "pg3"), None, "a later run re-pointed it");

        state.finished.push_back(finished_run(2, "pg3", failed));
        assert_eq!(failed_repoint(&state, "pg3"), None, "that run's candidate is not the primary");
    }
}
