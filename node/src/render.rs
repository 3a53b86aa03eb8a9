//! Human-readable tables for the CLI.

use std::fmt::Write;

use crate::api::model::{HistoryReport, MemberStatus, StatusReport};

/// The `vigil status` table.
pub fn status(report: &StatusReport) -> String {
    let mut out = String::new();
    let leader = match &report.leader {
        Some(leader) => format!("{} (node {})", leader.name, leader.id),
        None => {
            "NONE — no leader, writes and failovers are impossible until a majority of voters is up"
                .to_string()
        }
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
    out
}

/// The members table.
pub fn members(members: &[MemberStatus]) -> String {
    let header =
        ["ID", "NAME", "DC", "ROLE", "RAFT", "API", "REACHABLE", "LAST CONTACT", "RTT", "MATCHED"];
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
    if report.events.is_empty() {
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
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}", width = *width))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
