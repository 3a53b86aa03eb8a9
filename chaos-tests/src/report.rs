//! The report of a chaos run and the summary of a soak. [`markdown`] is the page a person
//! woken at 3 a.m. reads top to bottom: verdict first, then how to run it again, the
//! faults, what every group did and what the checkers concluded. [`timeline_svg`] draws the
//! same run on one time axis: fault bands, who the cluster recorded as primary, and where
//! writes were acknowledged or refused. [`write_run`] leaves both, and the record without
//! its writes, in the run's directory; [`soak_summary`] renders many runs as one page.
//!
//! Everything but [`write_run`] is a pure function of a [`RunRecord`]: no I/O, no clock.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::record::{GroupRecord, RunRecord, WriteRecord};

/// The name [`write_run`] gives the timeline, which the report links to.
const SVG_NAME: &str = "timeline.svg";

/// Renders the Markdown report of one run; `svg_file_name` is where the timeline image
/// lies relative to the report (see [`timeline_svg`]).
pub fn markdown(record: &RunRecord, svg_file_name: &str) -> String {
    let mut out = String::new();
    write_markdown(&mut out, record, svg_file_name).expect("formatting into a String cannot fail");
    out
}

/// Renders the run as a self-contained SVG timeline, about 1200 px wide: fault bands,
/// each group's recorded primaries, and each member's acknowledged and refused writes in
/// 100 ms buckets.
pub fn timeline_svg(record: &RunRecord) -> String {
    let mut out = String::new();
    write_svg(&mut out, record).expect("formatting into a String cannot fail");
    out
}

/// Creates `dir` and writes the run's `report.md`, `timeline.svg` and `record.json` (the
/// record without its writes, which would make it tens of megabytes) there; returns the
/// report's path.
pub fn write_run(record: &RunRecord, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let report = dir.join("report.md");
    std::fs::write(&report, markdown(record, SVG_NAME))?;
    std::fs::write(dir.join(SVG_NAME), timeline_svg(record))?;
    let mut slim = record.clone();
    for group in &mut slim.groups {
        group.writes = Vec::new();
    }
    let json = serde_json::to_string_pretty(&slim).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("record.json"), json)?;
    Ok(report)
}

/// Renders the Markdown summary of a soak. Each entry is a run's directory, relative to
/// the directory the summary is written to (the runs' reports are linked from there), and
/// its record; `command` reproduces the whole soak.
pub fn soak_summary(records: &[(PathBuf, RunRecord)], command: &str) -> String {
    let mut out = String::new();
    write_soak(&mut out, records, command).expect("formatting into a String cannot fail");
    out
}

// ---------------------------------------------------------------------------------------
// The dual-primary window.

/// The closest two different writer members came: from `before`'s last acknowledged write
/// of an era to `after`'s first of the next. Negative means both acknowledged at once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WriterGap {
    before: String,
    after: String,
    /// `after`'s first acknowledged write of its era.
    at_us: u64,
    gap_us: i64,
}

/// The smallest gap over every change of writer member in the group's acknowledged writes,
/// or `None` when a single member acknowledged everything.
///
/// A member that is primary twice has two eras, and comparing across them would read the
/// whole primaryship of whoever came between as an overlap; so acknowledged writes are
/// split into eras, by the epoch the server read with each write when every write carries
/// one, and otherwise by the recorded primary span of that member nearest in time.
fn writer_gap(group: &GroupRecord) -> Option<WriterGap> {
    let acknowledged: Vec<&WriteRecord> = group.writes.iter().filter(|write| write.acknowledged).collect();
    let by_epoch = acknowledged.iter().all(|write| write.epoch.is_some());
    let mut eras: BTreeMap<(&str, u64), (u64, u64)> = BTreeMap::new();
    for write in &acknowledged {
        let era = match write.epoch {
            Some(epoch) if by_epoch => epoch,
            _ => nearest_span(group, &write.server, write.at_us),
        };
        let span = eras.entry((write.server.as_str(), era)).or_insert((write.at_us, write.at_us));
        span.0 = span.0.min(write.at_us);
        span.1 = span.1.max(write.at_us);
    }
    let mut eras: Vec<(&str, u64, u64)> =
        eras.into_iter().map(|((member, _), (first, last))| (member, first, last)).collect();
    eras.sort_by_key(|&(member, first, _)| (first, member));

    let mut smallest: Option<WriterGap> = None;
    for (index, &(member, first, _)) in eras.iter().enumerate() {
        if index == 0 || eras[index - 1].0 == member {
            continue;
        }
        // Not only the era just before: an older writer still acknowledging overlaps too.
        let Some(&(before, _, last)) = eras[..index].iter().filter(|era| era.0 != member).max_by_key(|era| era.2)
        else {
            continue;
        };
        let gap_us = signed(first) - signed(last);
        if smallest.as_ref().is_none_or(|smallest| gap_us < smallest.gap_us) {
            smallest = Some(WriterGap { before: before.to_string(), after: member.to_string(), at_us: first, gap_us });
        }
    }
    smallest
}

/// Which of `member`'s recorded primary spans an acknowledged write at `at_us` belongs to:
/// the one holding it, else the nearest. Nearest rather than latest-started, because the
/// record learns of a promotion a status poll late, and the writes of that poll must not
/// be read as a stale primary's.
fn nearest_span(group: &GroupRecord, member: &str, at_us: u64) -> u64 {
    group
        .primaries
        .iter()
        .enumerate()
        .filter(|(_, span)| span.member == member)
        .min_by_key(
            |(_, span)| {
                if at_us < span.from_us { span.from_us - at_us } else { at_us.saturating_sub(span.to_us) }
            },
        )
        .map_or(u64::MAX, |(index, _)| index as u64)
}

fn signed(us: u64) -> i64 {
    i64::try_from(us).unwrap_or(i64::MAX)
}

/// The verdict on a group's writer gap, as the report words it.
fn describe_gap(gap: Option<&WriterGap>) -> String {
    match gap {
        None => "no change of writer member; nothing to compare".to_string(),
        Some(gap) if gap.gap_us >= 0 => format!(
            "no overlap (smallest gap {} ms, from {}'s last acknowledged write to {}'s first at t+{} s)",
            ms(gap.gap_us),
            gap.before,
            gap.after,
            seconds(gap.at_us)
        ),
        Some(gap) => format!(
            "**OVERLAP**: {} acknowledged a write {} ms after {}'s first acknowledged write at t+{} s",
            gap.before,
            ms(-gap.gap_us),
            gap.after,
            seconds(gap.at_us)
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Markdown.

fn write_markdown(out: &mut String, record: &RunRecord, svg_file_name: &str) -> fmt::Result {
    writeln!(out, "# Chaos run: {}", inline(&record.name))?;
    writeln!(out)?;
    let failed: Vec<String> = record.checks.iter().filter(|check| !check.passed).map(check_name).collect();
    if failed.is_empty() {
        writeln!(out, "**PASSED**: all {} checks passed.", record.checks.len())?;
    } else {
        writeln!(
            out,
            "**FAILED**: {} of {} checks failed: {}.",
            failed.len(),
            record.checks.len(),
            inline(&failed.join(", "))
        )?;
    }
    writeln!(out)?;
    match record.seed {
        Some(seed) => writeln!(out, "- Seed: `{seed}`")?,
        None => writeln!(out, "- Seed: none (scenario file)")?,
    }
    writeln!(out, "- Started: {} (UTC)", started(record.started_unix_ms))?;
    writeln!(out, "- Duration: {} s", seconds(record.duration_us))?;
    writeln!(out, "- Faults: {}; failovers: {}", record.faults.len(), failover_count(record))?;
    writeln!(out)?;
    writeln!(out, "Reproduce:")?;
    writeln!(out)?;
    code_block(out, &record.reproduce)?;
    writeln!(out)?;

    writeln!(out, "## Faults")?;
    writeln!(out)?;
    if record.faults.is_empty() {
        writeln!(out, "No faults were injected.")?;
    } else {
        writeln!(out, "| # | injected (t+s) | healed (t+s) | kind | description |")?;
        writeln!(out, "|---|---|---|---|---|")?;
        for (index, fault) in record.faults.iter().enumerate() {
            let healed = fault.healed_at_us.map_or_else(|| "never".to_string(), seconds);
            writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                index + 1,
                seconds(fault.at_us),
                healed,
                cell(&fault.kind),
                cell(&fault.description)
            )?;
        }
    }
    writeln!(out)?;

    for group in &record.groups {
        write_group(out, record, group)?;
    }

    writeln!(out, "## Checks")?;
    writeln!(out)?;
    if record.checks.is_empty() {
        writeln!(out, "No checks were made.")?;
    } else {
        writeln!(out, "| check | group | result | detail |")?;
        writeln!(out, "|---|---|---|---|")?;
        for check in &record.checks {
            let result = if check.passed { "PASS" } else { "**FAIL**" };
            let group = check.group.as_deref().map_or_else(|| "(all)".to_string(), cell);
            writeln!(out, "| {} | {} | {} | {} |", cell(&check.name), group, result, cell(&check.detail))?;
        }
    }
    writeln!(out)?;

    writeln!(out, "## Timeline")?;
    writeln!(out)?;
    writeln!(out, "![timeline]({})", link_target(svg_file_name))?;
    Ok(())
}

fn write_group(out: &mut String, record: &RunRecord, group: &GroupRecord) -> fmt::Result {
    writeln!(out, "## Group {}", inline(&group.name))?;
    writeln!(out)?;
    writeln!(out, "- Kind: {}", inline(&group.kind))?;
    let mode = if group.synchronous {
        "synchronous (acknowledged writes must survive any failover)"
    } else {
        "asynchronous (a failover may lose acknowledged writes)"
    };
    writeln!(out, "- Sync mode: {mode}")?;
    writeln!(out, "- Members: {}", inline(&group.members.join(", ")))?;
    let acknowledged = group.writes.iter().filter(|write| write.acknowledged).count();
    writeln!(
        out,
        "- Writes: {} attempted, {} acknowledged, {} refused or unanswered",
        group.writes.len(),
        acknowledged,
        group.writes.len() - acknowledged
    )?;
    writeln!(out, "- Dual-primary window: {}", describe_gap(writer_gap(group).as_ref()))?;
    let checks: Vec<_> = record.checks.iter().filter(|check| check.group.as_ref() == Some(&group.name)).collect();
    let failed: Vec<&str> = checks.iter().filter(|check| !check.passed).map(|check| check.name.as_str()).collect();
    if checks.is_empty() {
        writeln!(out, "- Checks: none judged this group")?;
    } else if failed.is_empty() {
        writeln!(out, "- Checks: all {} passed", checks.len())?;
    } else {
        writeln!(out, "- Checks: {} of {} **failed**: {}", failed.len(), checks.len(), inline(&failed.join(", ")))?;
    }
    writeln!(out, "- Lost writes: judged by the checks below")?;
    writeln!(out)?;
    if group.failovers.is_empty() {
        writeln!(out, "No failovers.")?;
    } else {
        writeln!(out, "| from → to | at (t+s) | fault | RTO (ms) |")?;
        writeln!(out, "|---|---|---|---|")?;
        for failover in &group.failovers {
            let fault = match failover.fault {
                None => "none".to_string(),
                Some(index) => match record.faults.get(index) {
                    Some(fault) => format!("#{} {}", index + 1, cell(&fault.description)),
                    None => format!("#{} (not in the record)", index + 1),
                },
            };
            let rto = failover.rto_us.map_or_else(|| "—".to_string(), |rto| ms(signed(rto)));
            writeln!(
                out,
                "| {} → {} | {} | {} | {} |",
                cell(&failover.from),
                cell(&failover.to),
                seconds(failover.recorded_at_us),
                fault,
                rto
            )?;
        }
    }
    writeln!(out)?;
    Ok(())
}

fn check_name(check: &crate::record::CheckResult) -> String {
    match &check.group {
        Some(group) => format!("{} ({group})", check.name),
        None => check.name.clone(),
    }
}

fn failover_count(record: &RunRecord) -> usize {
    record.groups.iter().map(|group| group.failovers.len()).sum()
}

fn started(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// A fenced code block that `text` cannot close early, however many backticks it holds.
fn code_block(out: &mut String, text: &str) -> fmt::Result {
    let mut longest = 0;
    let mut run = 0;
    for character in text.chars() {
        run = if character == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest.max(2) + 1);
    writeln!(out, "{fence}sh")?;
    writeln!(out, "{}", text.trim_end())?;
    writeln!(out, "{fence}")
}

/// Text for a table cell: a pipe would end the cell and a newline the row.
fn cell(text: &str) -> String {
    inline(text).replace('|', "\\|")
}

/// Text that must stay on one line of Markdown, and whose `<` must not open an HTML tag
/// that a renderer would swallow.
fn inline(text: &str) -> String {
    text.replace(['\r', '\n'], " ").replace('<', "&lt;")
}

/// A link destination: spaces and parentheses would end it early.
fn link_target(path: &str) -> String {
    path.replace('%', "%25").replace(' ', "%20").replace('(', "%28").replace(')', "%29")
}

/// Microseconds as seconds since the start, to a tenth.
fn seconds(us: u64) -> String {
    format!("{:.1}", us as f64 / 1e6)
}

/// Microseconds as milliseconds, to a tenth when there is one.
fn ms(us: i64) -> String {
    let text = format!("{:.1}", us as f64 / 1e3);
    text.strip_suffix(".0").map_or_else(|| text.clone(), str::to_string)
}

// ---------------------------------------------------------------------------------------
// SVG.

const WIDTH: f64 = 1200.0;
/// Room for member labels.
const LEFT: f64 = 150.0;
const RIGHT: f64 = 24.0;
const BUCKET_US: u64 = 100_000;
/// Top of the first group, below the title, legend and fault labels.
const PLOT_TOP: f64 = 96.0;
const GROUP_HEADER: f64 = 22.0;
const MEMBER_ROW: f64 = 30.0;

struct Axis {
    end_us: u64,
}

impl Axis {
    fn x(&self, at_us: u64) -> f64 {
        LEFT + at_us.min(self.end_us) as f64 / self.end_us as f64 * (WIDTH - LEFT - RIGHT)
    }

    /// Tick spacing in seconds, coarse enough that the labels never collide.
    fn tick_s(&self) -> u64 {
        let duration_s = self.end_us / 1_000_000;
        [5, 10, 30, 60, 120, 300, 600, 1800, 3600]
            .into_iter()
            .find(|&step| match step {
                5 => duration_s <= 60,
                10 => duration_s <= 300,
                _ => duration_s / step <= 30,
            })
            .unwrap_or(7200)
    }
}

fn write_svg(out: &mut String, record: &RunRecord) -> fmt::Result {
    let axis = Axis { end_us: time_end(record) };
    let rows: Vec<Vec<String>> = record.groups.iter().map(rows_of).collect();
    let plot_bottom =
        PLOT_TOP + rows.iter().map(|members| GROUP_HEADER + MEMBER_ROW * members.len() as f64 + 8.0).sum::<f64>();
    let height = plot_bottom + 34.0;

    writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    )?;
    // Classes keep the thousands of density rects down to a few bytes each.
    writeln!(
        out,
        "<style>.f{{fill:#ff7f0e;fill-opacity:.14}}.fl{{fill:#b35900}}.p{{fill:#1f77b4}}\
         .a{{fill:#2ca02c}}.a1{{fill-opacity:.3}}.a2{{fill-opacity:.5}}.a3{{fill-opacity:.75}}\
         .r{{fill:#d62728;fill-opacity:.3}}.g{{stroke:#ddd}}.t{{fill:#555}}</style>"
    )?;
    writeln!(out, r##"<rect width="100%" height="100%" fill="#fff"/>"##)?;
    let verdict = if record.passed() { "PASSED" } else { "FAILED" };
    writeln!(out, r#"<text x="8" y="22" font-size="16" font-weight="bold">{} — {verdict}</text>"#, xml(&record.name))?;
    write_legend(out)?;

    // Grid and faults first, so bars and strips are drawn over them.
    let step_us = axis.tick_s() * 1_000_000;
    let mut tick = 0;
    while tick <= axis.end_us {
        let x = axis.x(tick);
        writeln!(out, r#"<line class="g" x1="{x:.1}" y1="{PLOT_TOP}" x2="{x:.1}" y2="{plot_bottom}"/>"#)?;
        writeln!(
            out,
            r#"<text class="t" x="{x:.1}" y="{:.1}" text-anchor="middle">{}s</text>"#,
            plot_bottom + 16.0,
            tick / 1_000_000
        )?;
        tick += step_us;
    }
    writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{plot_bottom}" x2="{}" y2="{plot_bottom}" stroke="#888"/>"##,
        WIDTH - RIGHT
    )?;
    writeln!(
        out,
        r#"<text class="t" x="{}" y="{:.1}" text-anchor="end">seconds since start</text>"#,
        WIDTH - RIGHT,
        plot_bottom + 30.0
    )?;
    for (index, fault) in record.faults.iter().enumerate() {
        let from = axis.x(fault.at_us);
        let to = axis.x(fault.healed_at_us.unwrap_or(axis.end_us));
        let healed =
            fault.healed_at_us.map_or_else(|| "never healed".to_string(), |at| format!("healed {} s", seconds(at)));
        writeln!(
            out,
            r#"<rect class="f" x="{from:.1}" y="60" width="{:.1}" height="{:.1}"><title>#{} {} (injected {} s, {healed})</title></rect>"#,
            (to - from).max(1.0),
            plot_bottom - 60.0,
            index + 1,
            xml(&fault.description),
            seconds(fault.at_us)
        )?;
        // Two label lines, so that faults injected close together stay legible.
        let label_y = if index % 2 == 0 { 72 } else { 86 };
        writeln!(
            out,
            r#"<text class="fl" x="{:.1}" y="{label_y}">{}</text>"#,
            from + 2.0,
            xml(&format!("{} {}", index + 1, fault.kind))
        )?;
    }

    let mut y = PLOT_TOP;
    for (group, members) in record.groups.iter().zip(&rows) {
        let mode = if group.synchronous { "synchronous" } else { "asynchronous" };
        writeln!(
            out,
            r#"<text x="8" y="{:.1}" font-weight="bold" font-size="12">{} ({}, {mode})</text>"#,
            y + 15.0,
            xml(&group.name),
            xml(&group.kind)
        )?;
        y += GROUP_HEADER;
        // One scale per group, so a member that took few writes looks faint beside the
        // primary that took them all.
        let densities: Vec<(Vec<Segment>, Vec<Segment>)> =
            members.iter().map(|member| (segments(group, member, true), segments(group, member, false))).collect();
        let busiest =
            densities.iter().flat_map(|(acknowledged, _)| acknowledged).map(Segment::mean).fold(0.0, f64::max);
        for (member, (acknowledged, refused)) in members.iter().zip(&densities) {
            writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 14.0,
                xml(&shorten(member, 22))
            )?;
            for span in group.primaries.iter().filter(|span| &span.member == member) {
                let from = axis.x(span.from_us);
                let to = axis.x(span.to_us.max(span.from_us));
                writeln!(
                    out,
                    r#"<rect class="p" x="{from:.1}" y="{:.1}" width="{:.1}" height="12"><title>{} primary, epoch {}, {}–{} s</title></rect>"#,
                    y + 4.0,
                    (to - from).max(1.0),
                    xml(member),
                    span.epoch,
                    seconds(span.from_us),
                    seconds(span.to_us)
                )?;
            }
            for segment in acknowledged {
                let share = if busiest > 0.0 { segment.mean() / busiest } else { 1.0 };
                let class = match share {
                    share if share > 0.75 => "a",
                    share if share > 0.5 => "a a3",
                    share if share > 0.25 => "a a2",
                    _ => "a a1",
                };
                write_segment(out, &axis, segment, class, y + 18.0, 5.0)?;
            }
            for segment in refused {
                write_segment(out, &axis, segment, "r", y + 24.0, 4.0)?;
            }
            y += MEMBER_ROW;
        }
        y += 8.0;
    }
    writeln!(out, "</svg>")
}

fn write_legend(out: &mut String) -> fmt::Result {
    let entries = [
        ("#ff7f0e", 0.3, "fault, injection to heal"),
        ("#1f77b4", 1.0, "recorded primary"),
        ("#2ca02c", 1.0, "acknowledged writes (100 ms buckets, darker = more)"),
        ("#d62728", 0.3, "refused or unanswered writes"),
    ];
    let mut x = 8.0;
    for (colour, opacity, label) in entries {
        writeln!(
            out,
            r#"<rect x="{x:.1}" y="36" width="14" height="10" fill="{colour}" fill-opacity="{opacity}"/><text x="{:.1}" y="45">{label}</text>"#,
            x + 18.0
        )?;
        // Roughly the width of an 11 px sans-serif glyph.
        x += 30.0 + label.len() as f64 * 6.0;
    }
    Ok(())
}

/// A run of consecutive non-empty 100 ms buckets of about the same count, drawn as one rect:
/// one rect per bucket would be some 600 KB for a three-minute run.
struct Segment {
    first_bucket: u64,
    last_bucket: u64,
    writes: u64,
}

impl Segment {
    fn mean(&self) -> f64 {
        self.writes as f64 / (self.last_bucket - self.first_bucket + 1) as f64
    }
}

/// The member's acknowledged (or not) writes, bucketed and merged into segments. A bucket
/// joins the current segment while it is within a factor of two of the segment's first
/// bucket, so a steady stream is one rect and a change of rate starts another; an empty
/// bucket always ends a segment, so gaps in writing stay visible at 100 ms resolution.
fn segments(group: &GroupRecord, member: &str, acknowledged: bool) -> Vec<Segment> {
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for write in group.writes.iter().filter(|write| write.server == member && write.acknowledged == acknowledged) {
        *buckets.entry(write.at_us / BUCKET_US).or_default() += 1;
    }
    let mut segments: Vec<Segment> = Vec::new();
    let mut anchor = 0;
    for (bucket, count) in buckets {
        // Refused writes are one faint shade, so their count need not split segments.
        let similar = !acknowledged || (count <= anchor * 2 && count * 2 >= anchor);
        match segments.last_mut() {
            Some(segment) if segment.last_bucket + 1 == bucket && similar => {
                segment.last_bucket = bucket;
                segment.writes += count;
            }
            _ => {
                anchor = count;
                segments.push(Segment { first_bucket: bucket, last_bucket: bucket, writes: count });
            }
        }
    }
    segments
}

fn write_segment(out: &mut String, axis: &Axis, segment: &Segment, class: &str, y: f64, height: f64) -> fmt::Result {
    let from = axis.x(segment.first_bucket * BUCKET_US);
    let to = axis.x((segment.last_bucket + 1) * BUCKET_US);
    // Below half a pixel a bucket would vanish when rendered.
    writeln!(
        out,
        r#"<rect class="{class}" x="{from:.1}" y="{y:.0}" width="{:.1}" height="{height:.0}"/>"#,
        (to - from).max(0.5)
    )
}

/// The members in lab order, then any server the spans or writes name that the lab did not,
/// so that nothing recorded goes undrawn.
fn rows_of(group: &GroupRecord) -> Vec<String> {
    let mut rows = group.members.clone();
    let named = group.primaries.iter().map(|span| &span.member).chain(group.writes.iter().map(|write| &write.server));
    for name in named {
        if !rows.contains(name) {
            rows.push(name.clone());
        }
    }
    rows
}

/// The end of the time axis: the run's duration, stretched to anything recorded after it,
/// and never zero.
fn time_end(record: &RunRecord) -> u64 {
    let faults = record.faults.iter().map(|fault| fault.healed_at_us.unwrap_or(fault.at_us).max(fault.at_us));
    let groups = record.groups.iter().flat_map(|group| {
        let spans = group.primaries.iter().map(|span| span.to_us);
        let writes = group.writes.iter().map(|write| write.at_us);
        spans.chain(writes)
    });
    faults.chain(groups).fold(record.duration_us, u64::max).max(1_000_000)
}

fn shorten(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(limit - 1).collect();
        short.push('…');
        short
    }
}

/// Text safe in XML content and attribute values.
fn xml(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

// ---------------------------------------------------------------------------------------
// Soak summary.

fn write_soak(out: &mut String, records: &[(PathBuf, RunRecord)], command: &str) -> fmt::Result {
    let passed = records.iter().filter(|(_, record)| record.passed()).count();
    writeln!(out, "# Soak summary")?;
    writeln!(out)?;
    let verdict = if passed == records.len() { "PASSED" } else { "FAILED" };
    writeln!(out, "**{verdict}**: {} runs, {passed} passed, {} failed.", records.len(), records.len() - passed)?;
    writeln!(out)?;
    writeln!(out, "Reproduce the whole soak:")?;
    writeln!(out)?;
    code_block(out, command)?;
    writeln!(out)?;

    writeln!(out, "## Faults")?;
    writeln!(out)?;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for fault in records.iter().flat_map(|(_, record)| &record.faults) {
        *kinds.entry(fault.kind.as_str()).or_default() += 1;
    }
    if kinds.is_empty() {
        writeln!(out, "No faults were injected.")?;
    } else {
        writeln!(out, "| kind | injected |")?;
        writeln!(out, "|---|---|")?;
        for (kind, count) in &kinds {
            writeln!(out, "| {} | {count} |", cell(kind))?;
        }
    }
    writeln!(out)?;

    writeln!(out, "## Failovers")?;
    writeln!(out)?;
    let failovers = records.iter().flat_map(|(_, record)| &record.groups).flat_map(|group| &group.failovers);
    let mut rtos: Vec<u64> = failovers.clone().filter_map(|failover| failover.rto_us).collect();
    rtos.sort_unstable();
    writeln!(out, "- Failovers: {} ({} with an RTO)", failovers.count(), rtos.len())?;
    match (median(&rtos), percentile(&rtos, 95), rtos.last()) {
        (Some(median), Some(p95), Some(&max)) => writeln!(
            out,
            "- RTO: median {} ms, p95 {} ms, max {} ms",
            ms(signed(median)),
            ms(signed(p95)),
            ms(signed(max))
        )?,
        _ => writeln!(out, "- RTO: no failover recorded one")?,
    }
    let closest = records
        .iter()
        .flat_map(|(_, record)| record.groups.iter().map(move |group| (record, group)))
        .filter_map(|(record, group)| writer_gap(group).map(|gap| (record, group, gap)))
        .min_by_key(|(_, _, gap)| gap.gap_us);
    match closest {
        None => writeln!(out, "- Largest dual-primary overlap: no change of writer member in any run")?,
        Some((record, group, gap)) if gap.gap_us < 0 => writeln!(
            out,
            "- Largest dual-primary overlap: **{} ms**, run {}, group {}: {}",
            ms(-gap.gap_us),
            inline(&record.name),
            inline(&group.name),
            describe_gap(Some(&gap))
        )?,
        Some((record, group, gap)) => writeln!(
            out,
            "- Largest dual-primary overlap: none; the closest writers came {} ms apart (run {}, group {})",
            ms(gap.gap_us),
            inline(&record.name),
            inline(&group.name)
        )?,
    }
    writeln!(out)?;

    writeln!(out, "## Runs")?;
    writeln!(out)?;
    writeln!(out, "| run | seed | faults | failovers | max RTO (ms) | result |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for (dir, record) in records {
        let seed = record.seed.map_or_else(|| "scenario file".to_string(), |seed| seed.to_string());
        let kinds: Vec<&str> = record.faults.iter().map(|fault| fault.kind.as_str()).collect();
        let max_rto = record
            .groups
            .iter()
            .flat_map(|group| &group.failovers)
            .filter_map(|failover| failover.rto_us)
            .max()
            .map_or_else(|| "—".to_string(), |rto| ms(signed(rto)));
        let result = if record.passed() {
            "PASS".to_string()
        } else {
            let failed: Vec<String> = record.checks.iter().filter(|check| !check.passed).map(check_name).collect();
            format!("**FAIL**: {}", failed.join(", "))
        };
        writeln!(
            out,
            "| [{}]({}) | {seed} | {} | {} | {max_rto} | {} |",
            cell(&record.name).replace('[', "\\[").replace(']', "\\]"),
            link_target(&report_link(dir)),
            cell(&kinds.join(", ")),
            failover_count(record),
            cell(&result)
        )?;
    }
    Ok(())
}

/// The run's report relative to the summary, with `/` whatever the platform, as Markdown
/// renderers expect.
fn report_link(dir: &Path) -> String {
    let mut parts: Vec<String> =
        dir.components().map(|component| component.as_os_str().to_string_lossy().into_owned()).collect();
    parts.retain(|part| part != ".");
    parts.push("report.md".to_string());
    parts.join("/")
}

/// The middle value of sorted `values`, or the mean of the two middle ones.
fn median(values: &[u64]) -> Option<u64> {
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        len if len % 2 == 1 => Some(values[middle]),
        _ => Some(values[middle - 1] / 2 + values[middle] / 2 + (values[middle - 1] % 2 + values[middle] % 2) / 2),
    }
}

/// The nearest-rank percentile of sorted `values`: the smallest value that at least
/// `percent` % of them do not exceed.
fn percentile(values: &[u64], percent: usize) -> Option<u64> {
    let rank = (values.len() * percent).div_ceil(100);
    values.get(rank.max(1) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{CheckResult, Failover, FaultEvent, PrimarySpan};

    fn write(at_ms: u64, server: &str, acknowledged: bool) -> WriteRecord {
        WriteRecord {
            writer: "client".to_string(),
            sent_us: at_ms * 1000,
            at_us: at_ms * 1000,
            server: server.to_string(),
            value: i64::try_from(at_ms).unwrap(),
            acknowledged,
            epoch: None,
        }
    }

    fn span(member: &str, epoch: u64, from_ms: u64, to_ms: u64) -> PrimarySpan {
        PrimarySpan { member: member.to_string(), epoch, from_us: from_ms * 1000, to_us: to_ms * 1000 }
    }

    /// One group, dc1 primary until a cut at 2 s, dc2 after; the old primary's last
    /// acknowledgement at 1900 ms and the new one's first at 2200 ms: a 300 ms gap.
    fn record() -> RunRecord {
        let mut writes = Vec::new();
        for at_ms in (0..=1900).step_by(20) {
            writes.push(write(at_ms, "dc1", true));
        }
        for at_ms in (1920..2200).step_by(20) {
            writes.push(write(at_ms, "dc1", false));
        }
        for at_ms in (2200..6000).step_by(20) {
            writes.push(write(at_ms, "dc2", true));
        }
        RunRecord {
            name: "seed 17".to_string(),
            seed: Some(17),
            reproduce: "cargo run -p vigil-chaos-tests -- run --seed 17".to_string(),
            started_unix_ms: 1_700_000_000_000,
            duration_us: 6_000_000,
            faults: vec![FaultEvent {
                at_us: 2_000_000,
                healed_at_us: Some(4_000_000),
                description: "cut dc1 <primary of main> & more".to_string(),
                kind: "cut".to_string(),
            }],
            groups: vec![GroupRecord {
                name: "main".to_string(),
                kind: "postgres".to_string(),
                synchronous: true,
                members: vec!["dc1".to_string(), "dc2".to_string(), "dc3".to_string()],
                primaries: vec![span("dc1", 1, 0, 2100), span("dc2", 2, 2100, 6000)],
                writes,
                failovers: vec![Failover {
                    from: "dc1".to_string(),
                    to: "dc2".to_string(),
                    recorded_at_us: 2_100_000,
                    fault: Some(0),
                    rto_us: Some(200_000),
                }],
            }],
            checks: vec![
                CheckResult {
                    name: "dual primary".to_string(),
                    group: Some("main".to_string()),
                    passed: true,
                    detail: "no overlap".to_string(),
                },
                CheckResult {
                    name: "lost writes".to_string(),
                    group: Some("main".to_string()),
                    passed: false,
                    detail: "2 acknowledged writes missing: 40, 60".to_string(),
                },
            ],
        }
    }

    #[test]
    fn the_report_leads_with_the_failure_and_names_the_failing_check() {
        let report = markdown(&record(), "timeline.svg");
        let verdict = report.lines().find(|line| !line.is_empty() && !line.starts_with('#')).unwrap();
        assert!(verdict.contains("FAILED") && verdict.contains("lost writes (main)"), "{verdict}");
        assert!(report.contains("| lost writes | main | **FAIL** | 2 acknowledged writes missing: 40, 60 |"));
        assert!(report.contains("```sh\ncargo run -p vigil-chaos-tests -- run --seed 17\n```"));
        assert!(report.contains("2023-11-14T22:13:20Z"));
        assert!(report.contains("| dc1 → dc2 | 2.1 | #1 cut dc1 &lt;primary of main> & more | 200 |"), "{report}");
        assert!(report.contains("![timeline](timeline.svg)"));
    }

    #[test]
    fn a_passing_run_says_so() {
        let mut record = record();
        record.checks.retain(|check| check.passed);
        assert!(markdown(&record, "timeline.svg").contains("**PASSED**"));
    }

    #[test]
    fn the_gap_between_writers_is_measured() {
        let record = record();
        let gap = writer_gap(&record.groups[0]).unwrap();
        assert_eq!(
            gap,
            WriterGap { before: "dc1".to_string(), after: "dc2".to_string(), at_us: 2_200_000, gap_us: 300_000 }
        );
        let report = markdown(&record, "timeline.svg");
        assert!(report.contains("no overlap (smallest gap 300 ms"), "{report}");
    }

    /// The old primary acknowledges on, interleaved with the new one, until 2350 ms.
    #[test]
    fn an_overlap_of_writers_is_reported() {
        let mut record = record();
        record.groups[0].writes.extend([write(2210, "dc1", true), write(2350, "dc1", true)]);
        let gap = writer_gap(&record.groups[0]).unwrap();
        assert_eq!(gap.gap_us, -150_000);
        assert_eq!((gap.before.as_str(), gap.after.as_str()), ("dc1", "dc2"));
        let report = markdown(&record, "timeline.svg");
        assert!(report.contains("**OVERLAP**: dc1 acknowledged a write 150 ms after dc2's first"), "{report}");
    }

    /// dc1, then dc2, then dc1 again: the two eras of dc1 must not be read as one span
    /// covering dc2's, whether eras come from epochs or from the recorded spans.
    #[test]
    fn a_member_primary_twice_is_not_an_overlap() {
        let mut record = record();
        let group = &mut record.groups[0];
        group.primaries = vec![span("dc1", 1, 0, 2100), span("dc2", 2, 2100, 4000), span("dc1", 3, 4000, 6000)];
        // dc2's last acknowledgement at 3980 ms, dc1's first again at 4400 ms.
        for write in group.writes.iter_mut().filter(|write| write.at_us >= 4_000_000) {
            write.server = "dc1".to_string();
            write.acknowledged = write.at_us >= 4_400_000;
        }
        let gap = writer_gap(group).unwrap();
        assert_eq!(gap.gap_us, 300_000, "{gap:?}");

        for write in &mut group.writes {
            write.epoch = Some(match write.at_us {
                0..2_100_000 => 1,
                2_100_000..4_000_000 => 2,
                _ => 3,
            });
        }
        assert_eq!(writer_gap(group).unwrap().gap_us, 300_000);
    }

    #[test]
    fn one_writer_throughout_has_no_gap() {
        let mut record = record();
        record.groups[0].writes.retain(|write| write.server == "dc1");
        assert_eq!(writer_gap(&record.groups[0]), None);
    }

    #[test]
    fn the_timeline_is_well_formed_svg() {
        let record = record();
        let svg = timeline_svg(&record);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"<rect class="p""#).count(), record.groups[0].primaries.len());
        assert!(svg.contains("cut dc1 &lt;primary of main&gt; &amp; more"));
        assert!(!svg.contains("<primary"));
        for tag in ["text", "title"] {
            assert_eq!(svg.matches(&format!("<{tag}")).count(), svg.matches(&format!("</{tag}>")).count(), "{tag}");
        }
    }

    #[test]
    fn writes_are_drawn_in_buckets_not_one_by_one() {
        let record = record();
        let svg = timeline_svg(&record);
        let strips = svg.matches(r#"<rect class="a"#).count() + svg.matches(r#"<rect class="r""#).count();
        assert!(strips > 0);
        assert!(strips < record.groups[0].writes.len() / 10, "{strips} strips");
    }

    /// The size the brief budgets for: three minutes, eight writers at 50 writes per
    /// second, jittered so that bucket counts vary, plus a fault and a failover per group.
    #[test]
    fn a_three_minute_run_stays_small() {
        let mut record = record();
        record.duration_us = 180_000_000;
        let template = record.groups[0].clone();
        record.groups = ["main", "cache"]
            .into_iter()
            .map(|name| {
                let mut group = template.clone();
                group.name = name.to_string();
                group.primaries = vec![span("dc1", 1, 0, 60_000), span("dc2", 2, 60_000, 180_000)];
                group.writes.clear();
                for writer in 0..4u64 {
                    let member = ["dc1", "dc2", "dc3", "client"][usize::try_from(writer).unwrap()];
                    for n in 0..(180 * 50) {
                        let at_ms = n * 20 + (n * 7 + writer * 13) % 11;
                        let primary = if at_ms < 60_000 { "dc1" } else { "dc2" };
                        let server = if member == "client" { primary } else { member };
                        group.writes.push(write(
                            at_ms,
                            server,
                            server == primary && !(59_000..61_000).contains(&at_ms),
                        ));
                    }
                }
                group
            })
            .collect();
        let svg = timeline_svg(&record);
        assert!(svg.len() < 100_000, "{} bytes", svg.len());
    }

    #[test]
    fn the_soak_summary_counts_and_takes_percentiles() {
        let mut runs = Vec::new();
        for (index, rtos_ms) in [vec![400, 100], vec![300], vec![200, 1000]].into_iter().enumerate() {
            let mut record = record();
            record.name = format!("seed {index}");
            record.seed = Some(index as u64);
            if index != 1 {
                record.checks.retain(|check| check.passed);
            }
            record.groups[0].failovers = rtos_ms
                .into_iter()
                .map(|rto_ms| Failover { rto_us: Some(rto_ms * 1000), ..record.groups[0].failovers[0].clone() })
                .collect();
            runs.push((PathBuf::from(format!("seed-{index}")), record));
        }
        let summary = soak_summary(&runs, "cargo run -p vigil-chaos-tests -- soak --runs 3");
        assert!(summary.contains("3 runs, 2 passed, 1 failed"), "{summary}");
        assert!(summary.contains("median 300 ms, p95 1000 ms, max 1000 ms"), "{summary}");
        assert!(summary.contains("| cut | 3 |"));
        assert!(summary.contains("| [seed 1](seed-1/report.md) | 1 | cut | 1 | 300 | **FAIL**: lost writes (main) |"));
        assert!(summary.contains("| [seed 2](seed-2/report.md) | 2 | cut | 2 | 1000 | PASS |"));
    }

    #[test]
    fn median_and_percentile_of_known_sets() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[100, 200, 300, 400]), Some(250));
        assert_eq!(median(&[1, 2]), Some(1));
        assert_eq!(median(&[u64::MAX, u64::MAX]), Some(u64::MAX));
        assert_eq!(median(&[3, 5, 100]), Some(5));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 95), Some(95));
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile(&[], 95), None);
    }

    #[test]
    fn a_run_directory_holds_report_timeline_and_a_record_without_writes() {
        let dir = tempfile::tempdir().unwrap();
        let report = write_run(&record(), &dir.path().join("seed-17")).unwrap();
        assert_eq!(report, dir.path().join("seed-17/report.md"));
        assert!(std::fs::read_to_string(&report).unwrap().contains("# Chaos run: seed 17"));
        assert!(std::fs::read_to_string(dir.path().join("seed-17/timeline.svg")).unwrap().starts_with("<svg"));
        let json: RunRecord =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("seed-17/record.json")).unwrap()).unwrap();
        assert!(json.groups[0].writes.is_empty());
        assert_eq!(json.groups[0].failovers.len(), 1);
    }
}
