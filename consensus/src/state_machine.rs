//! The openraft state machine: applies committed entries to [`ClusterState`] and keeps its
//! snapshot on disk.
//!
//! The live state is in memory. On start the node loads its last snapshot, and openraft
//! re-applies the committed log entries after it, so a restarted node has every committed
//! change without rewriting the state on each apply. A snapshot file is replaced atomically
//! (write, fsync, rename, fsync the directory): a crash leaves the old snapshot or the new
//! one, never half of one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::state::ClusterState;
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// The replicated state, shared between the state machine and the readers (API, status).
pub type SharedState = Arc<RwLock<ClusterState>>;

/// A snapshot as openraft sees it: metadata and the serialized [`ClusterState`].
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;

const SNAPSHOT_FILE: &str = "snapshot.json";

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    state: ClusterState,
}

/// The state machine of one node.
#[derive(Clone)]
pub struct StateMachineStore {
    state: SharedState,
    snapshot_dir: PathBuf,
}

impl StateMachineStore {
    /// Opens the state machine whose snapshots live in `snapshot_dir`, starting from the
    /// last snapshot there, if any.
    pub fn open(snapshot_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(snapshot_dir).map_err(|e| StoreError::snapshot_file(snapshot_dir, e))?;
        let state = match read_snapshot_file(snapshot_dir)? {
            Some(file) => file.state,
            None => ClusterState::default(),
        };
        Ok(Self { state: Arc::new(RwLock::new(state)), snapshot_dir: snapshot_dir.to_path_buf() })
    }

    /// A handle on the live state for readers.
    pub fn shared_state(&self) -> SharedState {
        self.state.clone()
    }

    fn snapshot_of(&self, meta: SnapshotMeta, state: &ClusterState) -> Result<(Snapshot, Vec<u8>), StoreError> {
        let data = serde_json::to_vec(state)?;
        let file = serde_json::to_vec(&SnapshotFile { meta: meta.clone(), state: state.clone() })?;
        Ok((Snapshot { meta, snapshot: data }, file))
    }

    async fn persist(&self, file_bytes: Vec<u8>) -> Result<(), StoreError> {
        let dir = self.snapshot_dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, SNAPSHOT_FILE, &file_bytes))
            .await
            .map_err(|e| StoreError::Background(e.to_string()))?
    }
}

fn read_snapshot_file(dir: &Path) -> Result<Option<SnapshotFile>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::SnapshotCorrupt { path: path.clone(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::snapshot_file(&path, e)),
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let io = |e| StoreError::snapshot_file(&path, e);
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, &path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let state = self.state.read().expect("state lock poisoned").clone();
        let meta = SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone() };
        let (snapshot, file) = self.snapshot_of(meta, &state)?;
        self.persist(file).await?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let state = self.state.read().expect("state lock poisoned");
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut state = self.state.write().expect("state lock poisoned");
                match entry.payload {
                    EntryPayload::Blank => state.apply_blank(entry.log_id),
                    EntryPayload::Normal(command) => state.apply_command(entry.log_id, &command),
                    EntryPayload::Membership(membership) => state.apply_membership(entry.log_id, membership),
                }
            };
            // Every entry's responder must be answered, or its client_write never returns.
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> Result<(), std::io::Error> {
        let state: ClusterState = serde_json::from_slice(&snapshot).map_err(StoreError::from)?;
        if state.last_applied != meta.last_log_id {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "snapshot data was applied up to {:?} but its metadata says {:?}",
                    state.last_applied, meta.last_log_id
                ),
            ));
        }
        let (_, file) = self.snapshot_of(meta.clone(), &state)?;
        self.persist(file).await?;
        *self.state.write().expect("state lock poisoned") = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let dir = self.snapshot_dir.clone();
        let file = tokio::task::spawn_blocking(move || read_snapshot_file(&dir))
            .await
            .map_err(|e| StoreError::Background(e.to_string()))??;
        match file {
            Some(file) => Ok(Some(self.snapshot_of(file.meta, &file.state)?.0)),
            None => Ok(None),
        }
    }
}
