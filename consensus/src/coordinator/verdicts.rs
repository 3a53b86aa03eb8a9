//! This node's verdicts on every member: a stream of probe outcomes turned into verdicts
//! worth reporting, and the reporting itself.
//!
//! A member is down for this node only after every probe failed for `down_after` (measured
//! between the probes' starts, which keep to the probe interval); until then the last
//! verdict stands, so one lost probe changes nothing. A verdict is reported
//! when its health changes, when its facts change and the last report is older than
//! [`FACT_REFRESH`], and at least every [`KEEPALIVE`]. One report per member is in flight
//! at a time and the newest one wins: a slow or leaderless cluster never makes this node
//! report stale verdicts in a burst, nor stop probing.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Mono, Out, Outcome, Purpose, View};
use crate::group::{Health, Verdict, VerdictReport};
use crate::state::Command;

/// Changed facts (positions) are reported at most this often.
pub const FACT_REFRESH: Duration = Duration::from_secs(1);
/// An unchanged verdict is reported again this often, so the leader can tell a silent node
/// from a node whose verdict did not change.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// How long one report may take; a newer verdict replaces it after that.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a failed report the next is sent.
pub const REPORT_RETRY: Duration = Duration::from_millis(200);

/// One probe's outcome, whatever the kind: the verdict on a member that answered, or why it
/// did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// It answered; this is what its answer means.
    Answered(Verdict),
    /// It did not answer.
    Failed {
        /// Why, in one line.
        reason: String,
    },
}

/// Whether a probe failure means vigil itself was refused (a wrong password or role, a TLS
/// setting that does not fit the server, a `pg_hba.conf` that does not let vigil in): the
/// server is up, so that is never evidence that it is down.
pub fn is_refusal_of_vigil(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    // PostgreSQL says "password authentication failed" or names the role; Redis answers
    // NOAUTH or WRONGPASS. A TLS handshake that fails (a certificate from another CA, for
    // another name) reached a server that answered.
    reason.contains("authentication")
        || reason.contains("password")
        || reason.contains("role \"")
        || reason.contains("noauth")
        || reason.contains("wrongpass")
        || reason.contains("error performing tls handshake")
        || reason.contains("tls settings unusable")
        || reason.contains("pg_hba.conf")
}

/// The verdict state of one member on this node.
#[derive(Clone, Debug)]
pub struct VerdictTracker {
    down_after: Duration,
    current: Option<Verdict>,
    current_since_ms: u64,
    failing_since: Option<(Mono, u64)>,
    last_report: Option<(Verdict, Mono)>,
}

impl VerdictTracker {
    /// A tracker for a member of a group with this `down_after`.
    pub fn new(down_after: Duration) -> Self {
        Self { down_after, current: None, current_since_ms: 0, failing_since: None, last_report: None }
    }

    /// The verdict in force, if any probe has ended yet.
    pub fn current(&self) -> Option<&Verdict> {
        self.current.as_ref()
    }

    /// Takes the outcome of one probe that started at `now` (`now_wall_ms` stamps the
    /// report); returns a report when one is due.
    pub fn observe(&mut self, outcome: &Seen, now: Mono, now_wall_ms: u64) -> Option<VerdictReport> {
        let verdict = match outcome {
            Seen::Answered(verdict) => {
                self.failing_since = None;
                verdict.clone()
            }
            Seen::Failed { reason } if is_refusal_of_vigil(reason) => {
                self.failing_since = None;
                Verdict { health: Health::Degraded, facts: None, reason: Some(format!("refuses vigil: {reason}")) }
            }
            Seen::Failed { reason } => {
                let (since, since_wall) = *self.failing_since.get_or_insert((now, now_wall_ms));
                if now.since(since) < self.down_after {
                    // Not down yet: the previous verdict stands (only a keepalive is due).
                    return self.due(now).then(|| self.report(now, now_wall_ms)).flatten();
                }
                let verdict = Verdict { health: Health::Down, facts: None, reason: Some(reason.clone()) };
                if self.current.as_ref().map(|current| current.health) != Some(Health::Down) {
                    self.current_since_ms = since_wall;
                }
                self.current = Some(verdict);
                return self.report_if_due(now, now_wall_ms);
            }
        };
        if self.current.as_ref().map(|current| current.health) != Some(verdict.health) {
            self.current_since_ms = now_wall_ms;
        }
        self.current = Some(verdict);
        self.report_if_due(now, now_wall_ms)
    }

    fn due(&self, now: Mono) -> bool {
        let Some(current) = &self.current else { return false };
        match &self.last_report {
            None => true,
            Some((reported, at)) => {
                let age = now.since(*at);
                reported.health != current.health
                    || reported.reason != current.reason
                    || (reported.facts != current.facts && age >= FACT_REFRESH)
                    || age >= KEEPALIVE
            }
        }
    }

    fn report_if_due(&mut self, now: Mono, now_wall_ms: u64) -> Option<VerdictReport> {
        if self.due(now) { self.report(now, now_wall_ms) } else { None }
    }

    fn report(&mut self, now: Mono, now_wall_ms: u64) -> Option<VerdictReport> {
        let verdict = self.current.clone()?;
        self.last_report = Some((verdict.clone(), now));
        Some(VerdictReport { verdict, observed_at_ms: now_wall_ms, since_ms: self.current_since_ms })
    }
}

/// A report in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    group: String,
    member: String,
    report: VerdictReport,
    /// Which send of this member's reports it was: an answer to a superseded one is ignored.
    send: u64,
}

#[derive(Clone, Debug)]
struct MemberReports {
    tracker: VerdictTracker,
    /// The newest report not yet sent.
    unsent: Option<VerdictReport>,
    /// The report in flight: its send number, and the leader it went to.
    in_flight: Option<(u64, Option<crate::types::NodeId>)>,
    sends: u64,
    retry_at: Mono,
    /// When the last probe ended.
    probed_at: Mono,
    /// When the last probe began: what it saw is no older than this.
    probe_started_at: Mono,
    /// Whether the last probe failed (the member did not answer).
    last_failed: bool,
    /// The last report sent, to send again to a new leader.
    last_sent: Option<VerdictReport>,
}

/// This node's verdicts on every member and their reports.
#[derive(Clone, Debug, Default)]
pub struct Reporter {
    members: BTreeMap<(String, String), MemberReports>,
}

impl Reporter {
    /// The verdict in force on `member` of `group`.
    pub fn current(&self, group: &str, member: &str) -> Option<&Verdict> {
        self.members.get(&(group.to_string(), member.to_string()))?.tracker.current()
    }

    /// When this node's last probe of `member` of `group` ended.
    pub fn probed_at(&self, group: &str, member: &str) -> Option<Mono> {
        Some(self.members.get(&(group.to_string(), member.to_string()))?.probed_at)
    }

    /// When this node's last probe of `member` of `group` began: a verdict it made says
    /// nothing of what happened to the member before.
    pub fn probe_started_at(&self, group: &str, member: &str) -> Option<Mono> {
        Some(self.members.get(&(group.to_string(), member.to_string()))?.probe_started_at)
    }

    /// Whether the last probe of `member` of `group` failed.
    pub fn last_failed(&self, group: &str, member: &str) -> bool {
        self.members.get(&(group.to_string(), member.to_string())).is_some_and(|entry| entry.last_failed)
    }

    /// Takes one probe's result. `restarting`: this node is starting the member again after
    /// its own guard stopped it (see the keeper), so a failed probe is no sign of a fault and
    /// counts as degraded, never towards down.
    pub(super) fn probed(
        &mut self,
        view: &View<'_>,
        group: &str,
        member: &str,
        seen: &Seen,
        started: Mono,
        restarting: bool,
    ) {
        let Some(policy) = view.policy(group) else { return };
        if policy.member(member).is_none() {
            return;
        }
        let key = (group.to_string(), member.to_string());
        let entry = self.members.entry(key).or_insert_with(|| MemberReports {
            tracker: VerdictTracker::new(policy.down_after),
            unsent: None,
            in_flight: None,
            sends: 0,
            retry_at: Mono::default(),
            probed_at: Mono::default(),
            probe_started_at: Mono::default(),
            last_failed: false,
            last_sent: None,
        });
        if entry.tracker.down_after != policy.down_after {
            entry.tracker = VerdictTracker::new(policy.down_after);
        }
        let now = view.ctx.now;
        entry.probed_at = now.mono;
        entry.probe_started_at = started.min(now.mono);
        entry.last_failed = matches!(seen, Seen::Failed { .. });
        let relabelled;
        let seen = match seen {
            Seen::Failed { reason } if restarting => {
                relabelled = Seen::Answered(crate::group::Verdict {
                    health: crate::group::Health::Degraded,
                    facts: None,
                    reason: Some(format!(
                        "being started again by its own node after its fence guard stopped it ({reason})"
                    )),
                });
                &relabelled
            }
            _ => seen,
        };
        let before = entry.tracker.current().map(|verdict| verdict.health);
        // Probe starts keep to the interval: a member failing for `down_after` is down at the
        // same probe on every run, not one probe later when its result was handled late.
        if let Some(report) = entry.tracker.observe(seen, started.min(now.mono), now.wall_ms) {
            if before != Some(report.verdict.health) {
                let reason = report.verdict.reason.as_deref().unwrap_or_default();
                tracing::info!(group, member, health = %report.verdict.health, reason, "verdict changed");
            }
            entry.unsent = Some(report);
        }
    }

    pub(super) fn done(&mut self, view: &View<'_>, pending: Pending, outcome: Outcome) {
        let Some(entry) = self.members.get_mut(&(pending.group.clone(), pending.member.clone())) else { return };
        if entry.in_flight.is_none_or(|(send, _)| send != pending.send) {
            // Superseded by a send to a newer leader.
            return;
        }
        entry.in_flight = None;
        let committed = matches!(outcome, Outcome::Proposed(Ok(_)));
        if !committed {
            if let Outcome::Proposed(Err(error)) = &outcome {
                tracing::warn!(group = %pending.group, member = %pending.member, %error, "cannot report a verdict; retrying");
            }
            // Sent again unless a newer verdict replaced it meanwhile.
            entry.unsent.get_or_insert(pending.report);
            entry.retry_at = view.now() + REPORT_RETRY;
        }
    }

    pub(super) fn drive(&mut self, view: &View<'_>, out: &mut Out<'_>) {
        // Members that left the spec are forgotten.
        self.members
            .retain(|(group, member), _| view.policy(group).is_some_and(|policy| policy.member(member).is_some()));
        let leader = view.ctx.leader;
        for ((group, member), entry) in &mut self.members {
            // A report sent to a leader that has since been replaced may wait out its whole
            // timeout (a dead leader does not answer): the new leader gets it at once.
            let to_old_leader = entry.in_flight.is_some_and(|(_, sent_to)| leader.is_some() && sent_to != leader);
            if (entry.in_flight.is_some() && !to_old_leader) || view.now() < entry.retry_at {
                continue;
            }
            let report = match (entry.unsent.take(), &entry.last_sent) {
                (Some(report), _) => report,
                (None, Some(last)) if to_old_leader => last.clone(),
                _ => continue,
            };
            entry.last_sent = Some(report.clone());
            let command = Command::ReportVerdict {
                node: view.node,
                group: group.clone(),
                member: member.clone(),
                report: report.clone(),
            };
            entry.sends += 1;
            let pending = Pending { group: group.clone(), member: member.clone(), report, send: entry.sends };
            out.propose(Purpose::Verdict(pending), command, REPORT_TIMEOUT);
            entry.in_flight = Some((entry.sends, leader));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::MemberFacts;

    fn primary() -> Seen {
        Seen::Answered(Verdict {
            health: Health::Up,
            facts: Some(MemberFacts { in_recovery: false, current_lsn: Some(100), ..MemberFacts::default() }),
            reason: None,
        })
    }

    fn refused() -> Seen {
        Seen::Failed { reason: "connection refused".into() }
    }

    fn at(ms: u64) -> (Mono, u64) {
        (Mono::from_origin(Duration::from_millis(ms)), 1_000_000 + ms)
    }

    /// One failed probe changes nothing; failing for `down_after` makes the member down, with
    /// `since` at the first failure; one answer brings it back up at once.
    #[test]
    fn down_only_after_failing_for_down_after() {
        let mut tracker = VerdictTracker::new(Duration::from_millis(600));
        let (now, wall) = at(0);
        assert_eq!(tracker.observe(&primary(), now, wall).unwrap().verdict.health, Health::Up);
        let (now, wall) = at(200);
        assert!(tracker.observe(&refused(), now, wall).is_none());
        let (now, wall) = at(400);
        assert!(tracker.observe(&refused(), now, wall).is_none());
        let (now, wall) = at(800);
        let down = tracker.observe(&refused(), now, wall).expect("down is reported");
        assert_eq!(down.verdict.health, Health::Down);
        assert_eq!(down.since_ms, 1_000_200);
        let (now, wall) = at(1000);
        assert!(tracker.observe(&refused(), now, wall).is_none(), "an unchanged down is not repeated at once");
        let (now, wall) = at(1200);
        assert_eq!(tracker.observe(&primary(), now, wall).unwrap().verdict.health, Health::Up);
    }

    /// A flapping member (failing for less than `down_after` each time) is never down.
    #[test]
    fn flapping_member_is_never_down() {
        let mut tracker = VerdictTracker::new(Duration::from_millis(600));
        for cycle in 0..20u64 {
            for (offset, outcome) in [(0, primary()), (100, refused()), (300, refused())] {
                let (now, wall) = at(cycle * 500 + offset);
                if let Some(report) = tracker.observe(&outcome, now, wall) {
                    assert_ne!(report.verdict.health, Health::Down, "flapping member reported down at {now:?}");
                }
            }
        }
    }

    /// A wrong password is the server refusing vigil, not the server being down.
    #[test]
    fn authentication_failure_is_degraded_not_down() {
        let mut tracker = VerdictTracker::new(Duration::from_millis(100));
        let failure = Seen::Failed { reason: "password authentication failed for user \"vigil\"".into() };
        let mut reports = 0;
        for ms in [0u64, 200, 400, 800] {
            let (now, wall) = at(ms);
            if let Some(report) = tracker.observe(&failure, now, wall) {
                assert_eq!(report.verdict.health, Health::Degraded);
                reports += 1;
            }
        }
        assert_eq!(reports, 1);
    }

    /// Unchanged verdicts are repeated every KEEPALIVE; changed facts at most every FACT_REFRESH.
    #[test]
    fn refresh_and_keepalive_cadence() {
        let mut tracker = VerdictTracker::new(Duration::from_millis(600));
        let mut reports = 0;
        for tick in 0..=100u64 {
            let (now, wall) = at(tick * 100);
            if tracker.observe(&primary(), now, wall).is_some() {
                reports += 1;
            }
        }
        // 10 s of identical answers: the first report, then one per KEEPALIVE.
        assert_eq!(reports, 3);
    }
}
