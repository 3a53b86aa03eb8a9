//! openraft's own storage conformance suite, run against the redb log store and the
//! snapshotting state machine on a real temporary directory.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use vigil_consensus::TypeConfig;
use vigil_consensus::log_store::LogStore;
use vigil_consensus::state_machine::StateMachineStore;

struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = LogStore::open(&dir.path().join("raft-log.redb")).expect("open log store");
        let state_machine = StateMachineStore::open(&dir.path().join("snapshots")).expect("open state machine");
        Ok((dir, log, state_machine))
    }
}

/// The stores pass every check openraft ships for storage implementations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_pass_the_openraft_storage_suite() {
    Suite::test_all(TempStoreBuilder).await.expect("openraft storage suite");
}
