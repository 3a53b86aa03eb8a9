//! Watching the cluster during a run: one thread per vigil node polls the node's
//! `vigil status --json` from inside its datacenter, and the samples are merged into one
//! view of the cluster over time.
//!
//! Merging trusts, at each instant, the freshest node that has applied the most of the Raft
//! log: a node cut off from the others still answers, but from a view that no longer moves,
//! and its lower applied index tells it apart.

#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::ChaosLab;
use crate::netns::NetLab;
use crate::record::PrimarySpan;

/// How often each node is asked.
pub const POLL_PERIOD: Duration = Duration::from_millis(400);
/// A sample older than this no longer counts towards the current view.
const FRESH_FOR_US: u64 = 3_000_000;

/// One group as one node saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    /// The recorded primary.
    pub primary: Option<String>,
    /// The epoch.
    pub epoch: u64,
    /// Whether a failover is in progress.
    pub running: bool,
    /// Whether every member is up for every node.
    pub all_up: bool,
}

/// One answer of one node.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it came, microseconds since the run's origin.
    pub at_us: u64,
    /// The node that answered.
    pub node: u64,
    /// Its applied log index.
    pub applied: u64,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// Its view of each group.
    pub groups: BTreeMap<String, GroupView>,
}

impl Sample {
    fn parse(at_us: u64, node: u64, status: &Value) -> Option<Sample> {
        let groups = status["groups"]
            .as_array()?
            .iter()
            .filter_map(|group| {
                let view = GroupView {
                    primary: group["primary"].as_str().map(str::to_string),
                    epoch: group["epoch"].as_u64().unwrap_or(0),
                    running: !group["running"].is_null(),
                    all_up: group["members"].as_array().is_some_and(|members| {
                        members.iter().all(|member| {
                            member["verdicts"].as_object().is_some_and(|verdicts| {
                                verdicts.len() == 3 && verdicts.values().all(|verdict| verdict == "up")
                            })
                        })
                    }),
                };
                Some((group["name"].as_str()?.to_string(), view))
            })
            .collect();
        Some(Sample {
            at_us,
            node,
            applied: status["applied_index"].as_u64().unwrap_or(0),
            leader: status["leader"]["id"].as_u64(),
            groups,
        })
    }
}

/// The pollers of a run.
pub struct Observer {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    origin: Instant,
}

impl Observer {
    /// Starts one poller per node of `lab`, with instants measured from `origin`.
    pub fn start(lab: &ChaosLab, vigil: PathBuf, origin: Instant) -> Observer {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = lab
            .nodes
            .iter()
            .map(|(id, node)| {
                let (net, samples, stop) = (lab.net.clone(), samples.clone(), stop.clone());
                let (id, host, config, vigil) = (*id, node.host.clone(), node.config.clone(), vigil.clone());
                std::thread::spawn(move || poll(&net, &vigil, id, &host, &config, origin, &samples, &stop))
            })
            .collect();
        Observer { samples, stop, handles, origin }
    }

    /// Every sample so far, in order of arrival.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The cluster as of now: the freshest sample of the most advanced node.
    pub fn now(&self) -> Option<Sample> {
        let now_us = self.origin.elapsed().as_micros() as u64;
        current_view(&self.samples(), now_us)
    }

    /// Stops the pollers and returns every sample.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
        self.samples()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn poll(
    net: &NetLab,
    vigil: &PathBuf,
    id: u64,
    host: &str,
    config: &PathBuf,
    origin: Instant,
    samples: &Mutex<Vec<Sample>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut command = net.command(host, vigil);
        command.args(["status", "--json", "--config"]).arg(config).stdin(std::process::Stdio::null());
        if let Ok(output) = command.output()
            && let Ok(status) = serde_json::from_slice::<Value>(&output.stdout)
        {
            let at_us = origin.elapsed().as_micros() as u64;
            if let Some(sample) = Sample::parse(at_us, id, &status) {
                samples.lock().unwrap_or_else(PoisonError::into_inner).push(sample);
            }
        }
        std::thread::sleep(POLL_PERIOD);
    }
}

/// The view at `at_us`: among each node's latest sample no older than a few seconds, the one
/// with the highest applied index (the latest on a tie).
pub fn current_view(samples: &[Sample], at_us: u64) -> Option<Sample> {
    let mut latest: BTreeMap<u64, &Sample> = BTreeMap::new();
    for sample in samples.iter().filter(|sample| sample.at_us <= at_us) {
        latest.insert(sample.node, sample);
    }
    latest
        .into_values()
        .filter(|sample| at_us.saturating_sub(sample.at_us) <= FRESH_FOR_US)
        .max_by_key(|sample| (sample.applied, sample.at_us))
        .cloned()
}

/// What the cluster recorded as `group`'s primary over the run, from the merged samples,
/// up to `end_us`.
pub fn primary_spans(samples: &[Sample], group: &str, end_us: u64) -> Vec<PrimarySpan> {
    let mut ordered: Vec<&Sample> = samples.iter().collect();
    ordered.sort_by_key(|sample| sample.at_us);
    let mut spans: Vec<PrimarySpan> = Vec::new();
    let mut latest: BTreeMap<u64, &Sample> = BTreeMap::new();
    let mut best_applied = 0u64;
    for sample in ordered {
        latest.insert(sample.node, sample);
        // The view only moves forward with the log: a sample behind the most advanced one
        // seen is a lagging or cut-off node's.
        if sample.applied < best_applied {
            continue;
        }
        best_applied = sample.applied;
        let Some(view) = latest.get(&sample.node).and_then(|sample| sample.groups.get(group)) else { continue };
        let Some(primary) = &view.primary else { continue };
        match spans.last_mut() {
            Some(span) if span.member == *primary && span.epoch == view.epoch => span.to_us = sample.at_us,
            _ => {
                if let Some(span) = spans.last_mut() {
                    span.to_us = sample.at_us;
                }
                spans.push(PrimarySpan {
                    member: primary.clone(),
                    epoch: view.epoch,
                    from_us: sample.at_us,
                    to_us: sample.at_us,
                });
            }
        }
    }
    if let Some(span) = spans.last_mut() {
        span.to_us = span.to_us.max(end_us);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, node: u64, applied: u64, primary: &str, epoch: u64) -> Sample {
        let view = GroupView { primary: Some(primary.to_string()), epoch, running: false, all_up: true };
        Sample { at_us: at_ms * 1000, node, applied, leader: Some(1), groups: [("main".to_string(), view)].into() }
    }

    /// A cut-off node keeps answering with the old primary; the spans follow the nodes that
    /// moved on.
    #[test]
    fn a_stale_node_does_not_bring_the_old_primary_back() {
        let samples = vec![
            sample(0, 1, 10, "pg1", 1),
            sample(100, 2, 10, "pg1", 1),
            sample(1000, 2, 14, "pg2", 2),
            sample(1100, 1, 10, "pg1", 1),
            sample(1200, 3, 14, "pg2", 2),
        ];
        let spans = primary_spans(&samples, "main", 2_000_000);
        let members: Vec<(&str, u64, u64)> =
            spans.iter().map(|span| (span.member.as_str(), span.from_us / 1000, span.to_us / 1000)).collect();
        assert_eq!(members, vec![("pg1", 0, 1000), ("pg2", 1000, 2000)]);
        assert_eq!(current_view(&samples, 1_300_000).unwrap().groups["main"].primary.as_deref(), Some("pg2"));
    }

    /// A node that stopped answering long ago does not define the present.
    #[test]
    fn old_samples_fall_out_of_the_current_view() {
        let samples = vec![sample(0, 1, 20, "pg1", 1), sample(5000, 2, 10, "pg2", 2)];
        assert_eq!(current_view(&samples, 5_100_000).unwrap().node, 2);
    }
}
