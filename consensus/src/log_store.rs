//! The persistent Raft log: entries, vote and commit index in one redb file.
//!
//! Why redb: it is pure Rust, every commit is fsync'd by default, and a database reopened
//! after `kill -9` holds every committed transaction (see ARCHITECTURE.md). Writes run on
//! tokio's blocking pool so an fsync never stalls the runtime, and each write finishes
//! before the next starts, so the log is written in the order openraft asks.
//!
//! Entries are stored as JSON: small, easy to inspect with tools, and free of the pitfalls
//! that non-self-describing formats have with serde attributes on openraft's types.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftTypeConfig};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StoreError;
use crate::types::{Entry, LogId, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// redb's page cache for the log. The log is read mostly near its tail, so a small cache
/// keeps the idle memory of a node low without slowing replication.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// The Raft log store of one node. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens the log at `path`, creating it if it does not exist, and reads its metadata and
    /// both ends of the log once: a corrupt file is reported here, named, at start.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // redb panics on some corrupted pages instead of returning an error: a panic while
        // opening and reading the file is taken for corruption of that file.
        let opened = std::panic::catch_unwind(|| -> Result<Self, StoreError> {
            let db =
                Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| StoreError::open(path, e))?;
            // redb creates the file with the process's umask: the owner's only.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Database(format!("cannot restrict its permissions: {e}")))?;
            let store = Self { db: Arc::new(db) };
            // Create both tables up front so readers never meet a missing table.
            store.write_sync(Durability::Immediate, |_, _| Ok(()))?;
            store.read_ends()?;
            Ok(store)
        });
        let unreadable = |reason: String| StoreError::Unreadable { path: path.to_path_buf(), reason };
        match opened {
            Ok(Err(StoreError::Database(reason))) => Err(unreadable(reason)),
            Ok(Err(StoreError::Decode(error))) => Err(unreadable(format!("a record does not decode: {error}"))),
            Ok(result) => result,
            Err(panic) => Err(unreadable(panic_message(panic.as_ref()))),
        }
    }

    /// Reads the vote, the commit index, the last purged id and the first and last entries.
    fn read_ends(&self) -> Result<(), StoreError> {
        let _: Option<Vote> = self.read_meta(KEY_VOTE)?;
        let _: Option<LogId> = self.read_meta(KEY_COMMITTED)?;
        let _: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        for entry in [log.first()?, log.last()?].into_iter().flatten() {
            let _: Entry = serde_json::from_slice(entry.1.value())?;
        }
        Ok(())
    }

    /// Whether the log holds any vote or entry, that is, whether this node has ever run.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let meta = txn.open_table(META)?;
        Ok(log.first()?.is_none() && meta.get(KEY_VOTE)?.is_none())
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        match meta.get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes.value())?)),
            None => Ok(None),
        }
    }

    fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for row in log.range((range.start_bound().cloned(), range.end_bound().cloned()))? {
            let (_, bytes) = row?;
            entries.push(serde_json::from_slice(bytes.value())?);
        }
        Ok(entries)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        match log.last()? {
            Some((_, bytes)) => {
                let entry: Entry = serde_json::from_slice(bytes.value())?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    /// Runs one write transaction on this thread and commits it with `durability`.
    fn write_sync(
        &self,
        durability: Durability,
        write: impl FnOnce(&mut redb::Table<u64, &[u8]>, &mut redb::Table<&str, &[u8]>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        {
            let mut log = txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            write(&mut log, &mut meta)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Runs one write transaction on the blocking pool and waits for its commit.
    async fn write<F>(&self, durability: Durability, write: F) -> Result<(), StoreError>
    where
        F: FnOnce(&mut redb::Table<u64, &[u8]>, &mut redb::Table<&str, &[u8]>) -> Result<(), StoreError>
            + Send
            + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_sync(durability, write))
            .await
            .map_err(|e| StoreError::Background(e.to_string()))?
    }
}

fn put_meta<T: Serialize>(meta: &mut redb::Table<&str, &[u8]>, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value)?;
    meta.insert(key, bytes.as_slice())?;
    Ok(())
}

fn delete_range(log: &mut redb::Table<u64, &[u8]>, start: Bound<u64>, end: Bound<u64>) -> Result<(), StoreError> {
    log.retain_in((start, end), |_, _| false)?;
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        Ok(self.read_entries(range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        Ok(self.read_meta(KEY_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let vote = *vote;
        Ok(self.write(Durability::Immediate, move |_, meta| put_meta(meta, KEY_VOTE, &vote)).await?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        // The commit index may lag after a crash (openraft then re-learns it from the leader),
        // so it rides along with the next durable commit instead of costing an fsync of its own.
        Ok(self.write(Durability::None, move |_, meta| put_meta(meta, KEY_COMMITTED, &committed)).await?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = <TypeConfig as RaftTypeConfig>::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((entry.log_id.index, serde_json::to_vec(&entry).map_err(StoreError::from)?));
        }
        let result = self
            .write(Durability::Immediate, move |log, _| {
                for (index, bytes) in &rows {
                    log.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .await
            .map_err(std::io::Error::from);
        // The callback may fire only once the entries are durable; `write` returns after the
        // fsync'd commit, so this is that moment.
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.io_completed(Err(std::io::Error::new(error.kind(), error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let first_removed = last_log_id.map_or(0, |log_id| log_id.index + 1);
        Ok(self
            .write(Durability::Immediate, move |log, _| {
                delete_range(log, Bound::Included(first_removed), Bound::Unbounded)
            })
            .await?)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        Ok(self
            .write(Durability::Immediate, move |log, meta| {
                put_meta(meta, KEY_LAST_PURGED, &log_id)?;
                delete_range(log, Bound::Unbounded, Bound::Included(log_id.index))
            })
            .await?)
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => format!("the database library panicked: {message}"),
        (_, Some(message)) => format!("the database library panicked: {message}"),
        _ => "the database library panicked".to_string(),
    }
}
