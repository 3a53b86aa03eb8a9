//! Human-readable tables for the CLI.

use std::fmt::Write;

use vigil_consensus::group::{FailoverRun, StepStatus};

use crate::api::model::{GroupStatus, HistoryReport, MemberStatus, StatusReport};

/// The `vigil status` table.
pub fn status(report: &StatusReport) -> String {
    let mut out = String::new();
    let leader = match &report.leader {
        Some(leader) => format!("{} (node {})", leader.name, leader.id),
        None => "NONE — no leader, writes and failovers are impossible until a majority of voters is up".to_string(),
    };
    let index = |value: Option<u64>| value.map_or_else(|| "-".to_string(), |v| v.to_string());
    let _ = writeln!(out, "cluster   {}", report.cluster);
    let _ = writeln!(
        out,
        "asked     {} (node {}, {}, {})",
        report.node.name, report.node.id, report.node.datacenter, report.node.role
    );
    let _ = writeln!(out, "leader    {leader}");
    let _ = writeln!(
        out,
        "term      {}    commit index {}    applied {}",
        report.term,
        index(report.commit_index),
        index(report.applied_index)
    );
    let _ = writeln!(out);
    out.push_str(&members(&report.members));
    for group in &report.groups {
        let _ = writeln!(out);
        out.push_str(&group_status(group));
    }
    out
}

/// LSNs the way PostgreSQL prints them.
pub fn lsn(value: u64) -> String {
    format!("{:X}/{:X}", value >> 32, value & 0xFFFF_FFFF)
}

/// A position in a group's replication stream: an LSN for PostgreSQL, a byte offset for Redis.
pub fn position(value: u64, redis: bool) -> String {
    if redis { value.to_string() } else { lsn(value) }
}

/// One group's part of `vigil status`.
pub fn group_status(group: &GroupStatus) -> String {
    let mut out = String::new();
    let primary = group.primary.as_deref().unwrap_or("unknown");
    let _ = writeln!(out, "group {} ({})   primary {}   epoch {}", group.name, group.kind, primary, group.epoch);
    if group.paused {
        let _ = writeln!(out, "  PAUSED: no automatic failover; `vigil resume {}` turns it back on", group.name);
    }
    if let Some(reason) = &group.blocked {
        let _ = writeln!(out, "  NO FAILOVER POSSIBLE: {reason}");
    }
    if group.synchronous == "strict" {
        let standbys = if group.sync_standbys.is_empty() {
            "none confirmed yet".to_string()
        } else {
            group.sync_standbys.join(", ")
        };
        let _ = writeln!(out, "  synchronous (strict): commits wait for {standbys}");
        if let Some(note) = &group.sync_note {
            let _ = writeln!(out, "  WRITES BLOCKED: {note}");
        }
    }
    if let Some(holder) = group.lease_holder {
        let _ = writeln!(out, "  lease held by node {holder}");
    }
    let redis = group.kind == "redis";
    let header = [
        "MEMBER",
        "NODE",
        "ADDRESS",
        "ROLE",
        "VERDICTS",
        if redis { "OFFSET" } else { "LSN" },
        "LAG",
        "TL",
        "UPSTREAM",
    ];
    let rows: Vec<[String; 9]> = group
        .members
        .iter()
        .map(|member| {
            let verdicts: Vec<String> =
                member.verdicts.iter().map(|(node, verdict)| format!("{node}:{verdict}")).collect();
            let lag = match (member.lag_bytes, member.lag_ms) {
                (Some(bytes), Some(ms)) => format!("{bytes} B, {ms} ms"),
                (Some(bytes), None) => format!("{bytes} B"),
                _ => "-".to_string(),
            };
            let mut role = member.role.clone();
            if member.nofailover {
                role.push_str(" (nofailover)");
            }
            if member.unguarded.is_some() {
                role.push_str(" UNGUARDED");
            }
            [
                member.name.clone(),
                member.node.clone(),
                member.address.clone(),
                role,
                if verdicts.is_empty() { "none yet".to_string() } else { verdicts.join(" ") },
                member.lsn.map_or_else(|| "-".to_string(), |value| position(value, redis)),
                lag,
                member.timeline.map_or_else(|| "-".to_string(), |tl| tl.to_string()),
                member.upstream.clone().unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    for line in table(&header, &rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    for member in &group.members {
        if let Some(problem) = &member.problem {
            let _ = writeln!(out, "  {}: {problem}", member.name);
        }
    }
    // Said once per group: every member of a kind without a guard shares the reason.
    if let Some(why) = group.members.iter().find_map(|member| member.unguarded.as_ref()) {
        let names: Vec<&str> = group
            .members
            .iter()
            .filter(|member| member.unguarded.is_some())
            .map(|member| member.name.as_str())
            .collect();
        let _ = writeln!(out, "  UNGUARDED {}: {why}", names.join(", "));
    }
    if let Some(run) = &group.running {
        let _ = writeln!(
            out,
            "  {} #{} IN PROGRESS: {} -> {} (epoch {})",
            run.kind,
            run.id,
            run.old_primary.as_deref().unwrap_or("none"),
            run.candidate,
            run.epoch
        );
        for step in &run.steps {
            let _ = writeln!(out, "    {}", step_line(step));
        }
    }
    out
}

fn step_line(step: &vigil_consensus::group::StepState) -> String {
    match &step.status {
        StepStatus::Pending => format!("[ ] {}", step.step),
        StepStatus::Started { by, attempt, .. } => format!("[~] {} (node {by}, attempt {attempt})", step.step),
        StepStatus::Succeeded { detail, .. } => format!("[x] {}: {detail}", step.step),
        StepStatus::Failed { detail, attempt, .. } => format!("[!] {} failed (attempt {attempt}): {detail}", step.step),
    }
}

/// The steps of a run that have ended, in order, one line each.
pub fn run_steps(run: &FailoverRun) -> Vec<String> {
    run.steps
        .iter()
        .take_while(|step| matches!(step.status, StepStatus::Succeeded { .. } | StepStatus::Failed { .. }))
        .map(step_line)
        .collect()
}

fn clock(at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

fn after(start: u64, at: Option<u64>) -> String {
    match at {
        Some(at) => format!("+{:.3} s", at.saturating_sub(start) as f64 / 1000.0),
        None => "-".to_string(),
    }
}

/// One failover in `vigil history`.
pub fn run_summary(group: &str, run: &FailoverRun, redis: bool) -> String {
    let mut out = String::new();
    let status = match run.succeeded {
        Some(true) => "succeeded",
        Some(false) => "ABANDONED",
        None => "IN PROGRESS",
    };
    let _ = writeln!(
        out,
        "{group} #{} {}: {} -> {}, epoch {}, {status}",
        run.id,
        run.kind,
        run.old_primary.as_deref().unwrap_or("none"),
        run.candidate,
        run.epoch
    );
    let start = run.detected_at_ms.unwrap_or(run.decided_at_ms);
    let _ = writeln!(
        out,
        "  {} at {}; decided {}, promoted {}, first write {}, finished {}",
        if run.detected_at_ms.is_some() { "detected" } else { "requested" },
        clock(start),
        after(start, Some(run.decided_at_ms)),
        after(start, run.promoted_at_ms),
        after(start, run.first_write_at_ms),
        after(start, run.finished_at_ms),
    );
    let loss = match run.data_loss_bytes() {
        Some(bytes) if redis => format!("{bytes} bytes of replication stream"),
        Some(bytes) => format!("{bytes} bytes of WAL"),
        None => "unknown (old primary's last position not known)".to_string(),
    };
    let _ = writeln!(
        out,
        "  old primary at {}, new primary at {}: data-loss estimate {loss}",
        run.old_primary_lsn.map_or_else(|| "?".to_string(), |value| position(value, redis)),
        run.candidate_lsn.map_or_else(|| "?".to_string(), |value| position(value, redis)),
    );
    let _ = writeln!(out, "  reason: {}", run.reason);
    if let Some(outcome) = &run.outcome {
        let _ = writeln!(out, "  outcome: {outcome}");
    }
    out
}

/// The members table.
pub fn members(members: &[MemberStatus]) -> String {
    let header = ["ID", "NAME", "DC", "ROLE", "RAFT", "API", "REACHABLE", "LAST CONTACT", "RTT", "MATCHED"];
    let rows: Vec<[String; 10]> = members
        .iter()
        .map(|member| {
            let role = match (member.leader, member.voter) {
                (true, _) => "leader",
                (false, true) => "voter",
                (false, false) => "learner",
            };
            let reachable = match (member.reachable, &member.last_error) {
                (Some(true), _) => "yes".to_string(),
                (Some(false), Some(error)) => format!("NO: {}", shorten(error, 60)),
                (Some(false), None) => "NO".to_string(),
                (None, _) => "not yet probed".to_string(),
            };
            [
                member.id.to_string(),
                member.name.clone(),
                member.datacenter.clone(),
                role.to_string(),
                member.raft_addr.clone(),
                member.api_addr.clone(),
                reachable,
                member.last_contact_ms.map_or_else(|| "-".to_string(), |ms| format!("{ms} ms ago")),
                member.rtt_ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.2} ms")),
                member.matched_index.map_or_else(|| "-".to_string(), |index| index.to_string()),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// The `vigil history` listing.
pub fn history(report: &HistoryReport) -> String {
    let mut out = String::new();
    for (group, runs) in &report.failovers {
        if runs.is_empty() {
            let _ = writeln!(out, "{group}: no failover yet");
        }
        for run in runs {
            let redis = report.kinds.get(group).is_some_and(|kind| kind == "redis");
            out.push_str(&run_summary(group, run, redis));
        }
    }
    if !report.failovers.is_empty() && !report.events.is_empty() {
        out.push('\n');
    }
    if report.events.is_empty() && report.failovers.is_empty() {
        out.push_str("no events recorded\n");
    }
    for event in &report.events {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.at_unix_ms);
        let _ = writeln!(
            out,
            "{}  #{:<5} node {:<3} {}",
            humantime::format_rfc3339_millis(at),
            event.id,
            event.proposer,
            event.kind
        );
    }
    out
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}", width = *width)).collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
