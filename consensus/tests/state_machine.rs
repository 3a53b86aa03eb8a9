//! Deterministic tests of the replicated state: applying, snapshotting and restoring.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::stream;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, LogId, Membership};
use proptest::prelude::*;
use vigil_consensus::state::HISTORY_CAPACITY;
use vigil_consensus::state_machine::StateMachineStore;
use vigil_consensus::types::Entry;
use vigil_consensus::{ClusterState, Command, EventKind, NodeId, NodeInfo};

fn node(id: NodeId) -> NodeInfo {
    NodeInfo {
        name: format!("n{id}"),
        datacenter: format!("dc{id}"),
        raft_addr: format!("127.0.0.1:{}", 7000 + id),
        api_addr: format!("127.0.0.1:{}", 8000 + id),
    }
}

fn membership(voters: &[NodeId]) -> Membership<NodeId, NodeInfo> {
    let nodes: BTreeMap<NodeId, NodeInfo> = voters.iter().map(|id| (*id, node(*id))).collect();
    Membership::new(vec![voters.iter().copied().collect()], nodes).expect("valid membership")
}

fn note(at_unix_ms: u64, text: &str) -> Command {
    Command::RecordEvent {
        at_unix_ms,
        proposer: 1,
        kind: EventKind::Note { author: "test".to_string(), text: text.to_string() },
    }
}

/// What a log entry may carry, for generated histories.
#[derive(Clone, Debug)]
enum Payload {
    Blank,
    Note(u64, String),
    Membership(Vec<NodeId>),
}

fn entry(term: u64, index: u64, payload: &Payload) -> Entry {
    let payload = match payload {
        Payload::Blank => EntryPayload::Blank,
        Payload::Note(at, text) => EntryPayload::Normal(note(*at, text)),
        Payload::Membership(voters) => EntryPayload::Membership(membership(voters)),
    };
    Entry { log_id: LogId::new_term_index(term, index), payload }
}

fn entries(payloads: &[Payload], first_index: u64) -> Vec<Entry> {
    payloads.iter().enumerate().map(|(offset, payload)| entry(1, first_index + offset as u64, payload)).collect()
}

async fn apply_all(store: &mut StateMachineStore, entries: Vec<Entry>) {
    let items = entries.into_iter().map(|entry| Ok((entry, None)));
    store.apply(stream::iter(items)).await.expect("apply");
}

fn state_of(store: &StateMachineStore) -> ClusterState {
    store.shared_state().read().expect("state lock").clone()
}

/// Applying a note records it once, with the proposer's time and the log index.
#[test]
fn applying_a_note_records_an_event_at_its_log_index() {
    let mut state = ClusterState::default();
    state.apply_command(LogId::new_term_index(2, 7), &note(1_700_000_000_000, "maintenance window"));
    assert_eq!(state.history.len(), 1);
    let event = &state.history[0];
    assert_eq!((event.id, event.log_index, event.at_unix_ms), (0, 7, 1_700_000_000_000));
    assert_eq!(state.last_applied, Some(LogId::new_term_index(2, 7)));
}

/// A membership entry replaces the membership and moves `last_applied`.
#[test]
fn applying_membership_updates_voters_and_nodes() {
    let mut state = ClusterState::default();
    state.apply_membership(LogId::new_term_index(1, 1), membership(&[1, 2, 3]));
    assert_eq!(state.voter_ids(), BTreeSet::from([1, 2, 3]));
    assert_eq!(state.nodes()[&2].name, "n2");
    state.apply_membership(LogId::new_term_index(1, 2), membership(&[1, 3]));
    assert_eq!(state.voter_ids(), BTreeSet::from([1, 3]));
}

/// The history keeps the newest events and never more than its capacity.
#[test]
fn history_is_bounded_and_keeps_the_newest_events() {
    let mut state = ClusterState::default();
    let total = HISTORY_CAPACITY as u64 + 25;
    for index in 1..=total {
        state.apply_command(LogId::new_term_index(1, index), &note(index, "x"));
    }
    assert_eq!(state.history.len(), HISTORY_CAPACITY);
    assert_eq!(state.history.front().map(|event| event.id), Some(25));
    assert_eq!(state.history.back().map(|event| event.id), Some(total - 1));
    assert_eq!(state.events_since(total - 3).count(), 3);
}

/// A snapshot installed on a fresh store, and a store reopened from the snapshot file,
/// both hold exactly the state the snapshot was built from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restores_the_same_state_on_another_store_and_after_reopening() {
    let source_dir = tempfile::tempdir().unwrap();
    let mut source = StateMachineStore::open(source_dir.path()).unwrap();
    let history = [
        Payload::Membership(vec![1, 2, 3]),
        Payload::Blank,
        Payload::Note(10, "first".into()),
        Payload::Note(20, "second".into()),
    ];
    apply_all(&mut source, entries(&history, 1)).await;
    let snapshot = source.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(LogId::new_term_index(1, 4)));

    let target_dir = tempfile::tempdir().unwrap();
    let mut target = StateMachineStore::open(target_dir.path()).unwrap();
    target.install_snapshot(&snapshot.meta, snapshot.snapshot.clone()).await.unwrap();
    assert_eq!(state_of(&target), state_of(&source));

    let reopened = StateMachineStore::open(target_dir.path()).unwrap();
    assert_eq!(state_of(&reopened), state_of(&source));
    let mut reopened = reopened;
    let current = reopened.get_current_snapshot().await.unwrap().expect("a snapshot on disk");
    assert_eq!(current.meta, snapshot.meta);
}

/// A snapshot whose data does not match its metadata is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_with_mismatched_metadata_is_refused() {
    let source_dir = tempfile::tempdir().unwrap();
    let mut source = StateMachineStore::open(source_dir.path()).unwrap();
    apply_all(&mut source, entries(&[Payload::Membership(vec![1]), Payload::Note(1, "a".into())], 1)).await;
    let mut snapshot = source.build_snapshot().await.unwrap();
    snapshot.meta.last_log_id = Some(LogId::new_term_index(1, 99));

    let target_dir = tempfile::tempdir().unwrap();
    let mut target = StateMachineStore::open(target_dir.path()).unwrap();
    let error = target.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap_err();
    assert!(error.to_string().contains("metadata"), "{error}");
    assert_eq!(state_of(&target), ClusterState::default());
}

fn payload_strategy() -> impl Strategy<Value = Payload> {
    prop_oneof![
        Just(Payload::Blank),
        (0u64..1_000_000, "[a-z]{0,12}").prop_map(|(at, text)| Payload::Note(at, text)),
        proptest::sample::subsequence(vec![1u64, 2, 3, 4, 5], 1..=5).prop_map(Payload::Membership),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Applying a history in one go, or applying a prefix, snapshotting, restoring the
    /// snapshot elsewhere and applying the rest, gives the same state.
    #[test]
    fn snapshot_then_rest_equals_applying_everything(
        history in proptest::collection::vec(payload_strategy(), 1..40),
        split in 0usize..40,
    ) {
        let split = split.min(history.len());
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(async {
            let all_dir = tempfile::tempdir().unwrap();
            let mut all = StateMachineStore::open(all_dir.path()).unwrap();
            apply_all(&mut all, entries(&history, 1)).await;

            let prefix_dir = tempfile::tempdir().unwrap();
            let mut prefix = StateMachineStore::open(prefix_dir.path()).unwrap();
            apply_all(&mut prefix, entries(&history[..split], 1)).await;
            let snapshot = prefix.build_snapshot().await.unwrap();

            let restored_dir = tempfile::tempdir().unwrap();
            let mut restored = StateMachineStore::open(restored_dir.path()).unwrap();
            restored.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
            apply_all(&mut restored, entries(&history[split..], split as u64 + 1)).await;

            prop_assert_eq!(state_of(&restored), state_of(&all));
            Ok(())
        })?;
    }
}
