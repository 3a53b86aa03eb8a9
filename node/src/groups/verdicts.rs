//! Turns one node's stream of probe outcomes for one member into verdicts worth reporting.
//!
//! Pure: time is passed in (a monotonic instant for `down_after`, the wall clock only to
//! stamp reports). A member is down for this node only after every probe failed for
//! `down_after`; until then the last verdict stands, so one lost probe changes nothing.
//! A verdict is reported when its health changes, when its facts change and the last report
//! is older than [`FACT_REFRESH`], and at least every [`KEEPALIVE`].

use std::time::Duration;

use tokio::time::Instant;
use vigil_consensus::group::{Health, MemberFacts, Verdict, VerdictReport};
use vigil_probes::{PgObservation, ProbeOutcome, RedisObservation, RedisOutcome};

/// Changed facts (WAL positions) are reported at most this often.
pub const FACT_REFRESH: Duration = Duration::from_secs(1);
/// An unchanged verdict is reported again this often, so the leader can tell a silent node
/// from a node whose verdict did not change.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// The verdict state of one member on this node.
#[derive(Debug)]
pub struct VerdictTracker {
    down_after: Duration,
    current: Option<Verdict>,
    current_since_ms: u64,
    failing_since: Option<(Instant, u64)>,
    last_report: Option<(Verdict, Instant)>,
}

/// One probe's outcome, whatever the kind: the verdict on a member that answered, or why
/// it did not.
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

impl From<&ProbeOutcome> for Seen {
    fn from(outcome: &ProbeOutcome) -> Self {
        match outcome {
            ProbeOutcome::Answered(observation) => Seen::Answered(classify(observation)),
            ProbeOutcome::Failed { reason } => Seen::Failed { reason: reason.clone() },
        }
    }
}

impl From<&RedisOutcome> for Seen {
    fn from(outcome: &RedisOutcome) -> Self {
        match outcome {
            RedisOutcome::Answered(observation) => Seen::Answered(classify_redis(observation)),
            RedisOutcome::Failed { reason } => Seen::Failed { reason: reason.clone() },
        }
    }
}

/// The verdict on a Redis member that answered, its facts in the shared shape: offsets as
/// positions, a replica with its link up counted as streaming.
pub fn classify_redis(observation: &RedisObservation) -> Verdict {
    let link_up = observation.link_status.as_deref() == Some("up");
    let facts = MemberFacts {
        in_recovery: !observation.is_master,
        timeline: None,
        current_lsn: observation.is_master.then_some(observation.master_repl_offset),
        receive_lsn: observation.replica_offset,
        replay_lsn: observation.replica_offset,
        replay_delay_ms: None,
        receiver_status: (!observation.is_master).then(|| {
            if link_up {
                "streaming".to_string()
            } else {
                format!("link {}", observation.link_status.as_deref().unwrap_or("unknown"))
            }
        }),
        upstream: observation.upstream.clone(),
        epoch: observation.epoch,
    };
    let (health, reason) = if observation.is_master {
        match &observation.heartbeat {
            Some(Err(error)) => (Health::Degraded, Some(format!("master refuses writes: {error}"))),
            _ => (Health::Up, None),
        }
    } else if link_up {
        (Health::Up, None)
    } else {
        let link = observation.link_status.as_deref().unwrap_or("unknown");
        (Health::Degraded, Some(format!("replica's link to its master is {link}")))
    };
    Verdict { health, facts: Some(facts), reason }
}

/// The facts of an answered probe, in the replicated form.
pub fn facts_of(observation: &PgObservation) -> MemberFacts {
    MemberFacts {
        in_recovery: observation.in_recovery,
        timeline: observation.timeline,
        current_lsn: observation.current_lsn,
        receive_lsn: observation.receive_lsn,
        replay_lsn: observation.replay_lsn,
        replay_delay_ms: observation.replay_delay_ms,
        receiver_status: observation.receiver_status.clone(),
        upstream: observation.upstream.clone(),
        epoch: observation.epoch,
    }
}

/// The verdict on a member that answered.
pub fn classify(observation: &PgObservation) -> Verdict {
    let facts = facts_of(observation);
    let (health, reason) = if !observation.in_recovery {
        match &observation.heartbeat {
            Some(Err(error)) => (Health::Degraded, Some(format!("primary refuses writes: {error}"))),
            _ => (Health::Up, None),
        }
    } else if observation.receiver_status.as_deref() == Some("streaming") {
        (Health::Up, None)
    } else {
        let receiver = observation.receiver_status.as_deref().unwrap_or("not running");
        (Health::Degraded, Some(format!("replica not streaming (WAL receiver {receiver})")))
    };
    Verdict { health, facts: Some(facts), reason }
}

/// Whether a probe failure means vigil itself was refused (a wrong password or role): the
/// server is up, so that is never evidence that it is down.
pub fn is_refusal_of_vigil(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    // PostgreSQL says "password authentication failed" or names the role; Redis answers
    // NOAUTH or WRONGPASS.
    reason.contains("authentication")
        || reason.contains("password")
        || reason.contains("role \"")
        || reason.contains("noauth")
        || reason.contains("wrongpass")
}

impl VerdictTracker {
    /// A tracker for a member of a group with this `down_after`.
    pub fn new(down_after: Duration) -> Self {
        Self { down_after, current: None, current_since_ms: 0, failing_since: None, last_report: None }
    }

    /// Takes one probe outcome; returns a report when one is due.
    pub fn observe(&mut self, outcome: &Seen, now: Instant, now_wall_ms: u64) -> Option<VerdictReport> {
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
                if now.duration_since(since) < self.down_after {
                    // Not down yet: the previous verdict stands (nothing to report now).
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

    fn due(&self, now: Instant) -> bool {
        let Some(current) = &self.current else { return false };
        match &self.last_report {
            None => true,
            Some((reported, at)) => {
                let age = now.duration_since(*at);
                reported.health != current.health
                    || reported.reason != current.reason
                    || (reported.facts != current.facts && age >= FACT_REFRESH)
                    || age >= KEEPALIVE
            }
        }
    }

    fn report_if_due(&mut self, now: Instant, now_wall_ms: u64) -> Option<VerdictReport> {
        if self.due(now) { self.report(now, now_wall_ms) } else { None }
    }

    fn report(&mut self, now: Instant, now_wall_ms: u64) -> Option<VerdictReport> {
        let verdict = self.current.clone()?;
        self.last_report = Some((verdict.clone(), now));
        Some(VerdictReport { verdict, observed_at_ms: now_wall_ms, since_ms: self.current_since_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> Seen {
        Seen::from(&ProbeOutcome::Answered(PgObservation {
            in_recovery: false,
            timeline: Some(1),
            current_lsn: Some(100),
            receive_lsn: None,
            replay_lsn: None,
            replay_delay_ms: None,
            receiver_status: None,
            upstream: None,
            epoch: None,
            heartbeat: Some(Ok(())),
        }))
    }

    fn refused() -> Seen {
        Seen::Failed { reason: "connection refused".into() }
    }

    /// One failed probe changes nothing; failing for `down_after` makes the member down,
    /// with `since` at the first failure; one answer brings it back up at once.
    #[tokio::test(start_paused = true)]
    async fn down_only_after_failing_for_down_after() {
        let mut tracker = VerdictTracker::new(Duration::from_millis(600));
        let start = Instant::now();
        let at = |ms: u64| (start + Duration::from_millis(ms), 1_000_000 + ms);
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
    #[tokio::test(start_paused = true)]
    async fn flapping_member_is_never_down() {
        let mut tracker = VerdictTracker::new(Duration::from_millis(600));
        let start = Instant::now();
        for cycle in 0..20u64 {
            for (offset, outcome) in [(0, primary()), (100, refused()), (300, refused())] {
                let ms = cycle * 500 + offset;
                if let Some(report) = tracker.observe(&outcome, start + Duration::from_millis(ms), ms) {
                    assert_ne!(report.verdict.health, Health::Down, "flapping member reported down at {ms} ms");
                }
            }
        }
    }

    /// A wrong password is the server refusing vigil, not the server being down.
    #[tokio::test(start_paused = true)]
    async fn authentication_failure_is_degraded_not_down() {
        let mut tracker = VerdictTracker::new(Duration::from_millis(100));
        let start = Instant::now();
        let failure = Seen::Failed { reason: "password authentication failed for user \"vigil\"".into() };
        for ms in [0u64, 200, 400, 800] {
            if let Some(report) = tracker.observe(&failure, start + Duration::from_millis(ms), ms) {
                assert_eq!(report.verdict.health, Health::Degraded);
            }
        }
    }

    /// Unchanged verdicts are repeated every KEEPALIVE; changed facts at most every FACT_REFRESH.
    #[tokio::test(start_paused = true)]
    async fn refresh_and_keepalive_cadence() {
        let mut tracker = VerdictTracker::new(Duration::from_millis(600));
        let start = Instant::now();
        let mut reports = 0;
        for tick in 0..=100u64 {
            let ms = tick * 100;
            if tracker.observe(&primary(), start + Duration::from_millis(ms), ms).is_some() {
                reports += 1;
            }
        }
        // 10 s of identical answers: the first report, then one per KEEPALIVE.
        assert_eq!(reports, 3);
    }
}
