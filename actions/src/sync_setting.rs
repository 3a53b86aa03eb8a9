//! The synchronous standbys of a PostgreSQL primary: setting them, in order, and reading
//! them back.
//!
//! Several leaders may ask one primary for a setting over time, and a deposed leader's
//! request can land after a newer leader's. Every change therefore carries a generation
//! (three numbers compared in order; vigil uses epoch, Raft term and request), kept beside
//! the setting in `postgresql.auto.conf` as the custom parameter `vigil.sync_generation`,
//! and a change older than the one kept is refused. The comparison and the write happen
//! under vigil's configuration lock (a session-level advisory lock), so two changes cannot
//! interleave between them; the lock ends with the session, however the session ends.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::types::PgLsn;
use vigil_probes::PgTarget;

use crate::conninfo::sql_literal;
use crate::error::ActionError;
use crate::sql::{Connection, bounded};

/// The custom parameter that keeps the generation of the setting in force.
pub const GENERATION_PARAMETER: &str = "vigil.sync_generation";

/// Where a change stands among all changes asked of one server; compared in order.
pub type Generation = [u64; 3];

/// Sets `synchronous_standby_names` (reloaded, no restart needed) unless the server keeps
/// a setting of a newer generation, which is then left as it is and the change refused
/// ([`ActionError::Unexpected`], naming both). An equal generation is the same request
/// again and goes through. Works on a standby too, where it takes effect once it is
/// promoted.
pub async fn set_synchronous_standby_names(
    target: &PgTarget,
    value: &str,
    generation: Generation,
) -> Result<(), ActionError> {
    let address = target.address();
    bounded(target.timeout * 2, format!("setting synchronous_standby_names on {address}"), async {
        let connection = Connection::open(target, target.timeout).await?;
        connection.lock_configuration().await?;
        if let Some(kept) = kept_generation(&connection).await?
            && kept > generation
        {
            return Err(ActionError::Unexpected(format!(
                "{address} keeps synchronous standbys of generation {} (a newer leader's or promotion's); this \
                 request of generation {} is older and is refused",
                show(kept),
                show(generation)
            )));
        }
        write_generation(&connection, generation).await?;
        let alter = format!("ALTER SYSTEM SET synchronous_standby_names = {}", sql_literal(value));
        connection.batch_execute(&alter, "setting synchronous_standby_names").await?;
        connection.batch_execute("SELECT pg_reload_conf()", "reloading the configuration").await
    })
    .await
}

/// Writes `generation` as the one kept, whatever was kept before: for a promotion, whose
/// generation is newer than any change asked of the server while it was a replica.
pub(crate) async fn write_generation(connection: &Connection, generation: Generation) -> Result<(), ActionError> {
    let value = sql_literal(&show(generation));
    // ALTER SYSTEM before PostgreSQL 17 refuses a custom parameter its session does not
    // know; setting it in the session first makes it known.
    connection
        .batch_execute(&format!("SET {GENERATION_PARAMETER} = {value}"), "naming vigil's generation parameter")
        .await?;
    connection
        .batch_execute(&format!("ALTER SYSTEM SET {GENERATION_PARAMETER} = {value}"), "writing the generation")
        .await
}

/// The generation the server's configuration files keep, if any. Read from the files, not
/// from the setting in force, which a reload still on its way would leave behind.
async fn kept_generation(connection: &Connection) -> Result<Option<Generation>, ActionError> {
    let rows = connection
        .client
        .query(
            "SELECT setting FROM pg_file_settings WHERE name = $1 ORDER BY seqno DESC LIMIT 1",
            &[&GENERATION_PARAMETER],
        )
        .await
        .map_err(|error| connection.error("reading the kept generation", &error))?;
    let Some(row) = rows.first() else { return Ok(None) };
    let kept: Option<String> = connection.column(row, 0)?;
    let Some(kept) = kept else { return Ok(None) };
    parse(&kept).map(Some).ok_or_else(|| {
        ActionError::Unexpected(format!(
            "{} keeps {GENERATION_PARAMETER} = '{kept}', expected three numbers as EPOCH.TERM.REQUEST; \
             remove it with ALTER SYSTEM RESET {GENERATION_PARAMETER}",
            connection.address
        ))
    })
}

/// A generation as it is kept: `EPOCH.TERM.REQUEST`.
fn show(generation: Generation) -> String {
    let [epoch, term, request] = generation;
    format!("{epoch}.{term}.{request}")
}

/// Reads a kept generation back; `None` for anything but three numbers.
fn parse(kept: &str) -> Option<Generation> {
    let mut parts = kept.split('.').map(|part| part.parse::<u64>().ok());
    let generation = [parts.next()??, parts.next()??, parts.next()??];
    parts.next().is_none().then_some(generation)
}

/// The primary's view of its standbys, as [`synchronous_state`] reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SynchronousState {
    /// `synchronous_standby_names` in force.
    pub setting: String,
    /// The primary's current WAL position.
    pub position: Option<u64>,
    /// Each streaming standby by `application_name`: its `sync_state` (`sync`, `quorum`,
    /// `async`...) and the WAL position it has flushed.
    pub standbys: BTreeMap<String, (String, Option<u64>)>,
}

/// The primary's view of its standbys: the setting in force, its own WAL position, and each
/// streaming standby's state and flushed position.
pub async fn synchronous_state(target: &PgTarget) -> Result<SynchronousState, ActionError> {
    let address = target.address();
    bounded(target.timeout * 2, format!("reading the standbys of {address}"), async {
        let connection = Connection::open(target, target.timeout).await?;
        let row = connection
            .query_one(
                "SELECT current_setting('synchronous_standby_names'), pg_current_wal_lsn()",
                &[],
                "reading synchronous_standby_names",
            )
            .await?;
        let setting: String = connection.column(&row, 0)?;
        let position: Option<PgLsn> = connection.column(&row, 1)?;
        let rows = connection
            .client
            .query(
                "SELECT application_name, sync_state, flush_lsn FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await
            .map_err(|error| connection.error("reading pg_stat_replication", &error))?;
        let mut standbys = BTreeMap::new();
        for row in &rows {
            let name: String = connection.column(row, 0)?;
            let state: String = connection.column(row, 1)?;
            let flushed: Option<PgLsn> = connection.column(row, 2)?;
            standbys.insert(name, (state, flushed.map(u64::from)));
        }
        Ok(SynchronousState { setting, position: position.map(u64::from), standbys })
    })
    .await
}

/// The `synchronous_standby_names` value that makes commits wait for every one of `standbys`.
pub fn require_all(standbys: &BTreeSet<String>) -> String {
    if standbys.is_empty() {
        return String::new();
    }
    let names: Vec<String> = standbys.iter().map(|name| format!("\"{}\"", name.replace('"', "\"\""))).collect();
    format!("FIRST {} ({})", standbys.len(), names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_round_trip_and_compare_in_order() {
        for generation in [[0, 0, 0], [3, 7, 1_765_000_000_123], [u64::MAX, 1, 2]] {
            assert_eq!(parse(&show(generation)), Some(generation));
        }
        assert!([2, 9, 9] < [3, 0, 0], "a newer epoch beats any request of an older one");
        assert!([3, 4, 99] < [3, 5, 1], "a newer term beats an older leader's later request");
    }

    #[test]
    fn a_kept_generation_that_is_not_three_numbers_is_not_read() {
        for kept in ["", "3", "3.4", "3.4.5.6", "3.x.5", "-1.0.0", "3..5"] {
            assert_eq!(parse(kept), None, "{kept:?}");
        }
    }
}
