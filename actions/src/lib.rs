//! Failover actions vigil performs on members: promotion, fencing, re-pointing replicas,
//! VIP moves, DNS updates, backup and restore, notifications.
//!
//! Empty so far: the actions arrive with the group support. Each action will be
//! idempotent and carry the group's epoch, so a stale order is refused. This crate will
//! know nothing of Raft.
