//! Which member a replica replicates from, told from the "host:port" it reports (PostgreSQL's
//! `pg_stat_wal_receiver`, Redis's `master_host`/`master_port`).
//!
//! The port alone does not tell: in a real deployment every member listens on the same port
//! on its own host, so a replica left following another replica (after a rejoin against a
//! primary that was replaced meanwhile) would pass for following the primary, and never be
//! re-pointed. The host is compared too, as vigil spells it in the spec (which is what it
//! writes into `primary_conninfo` and `REPLICAOF`), or as the same IP address.

use std::net::IpAddr;

/// Whether `upstream` is the member named `primary` among `members` (name, host, port).
///
/// An upstream whose host no member is spelt as (say, a name for an address, set by hand)
/// still counts as the primary when the primary is the only member on that port; when the
/// port is shared it cannot be told, and the answer is `false`, so the replica is re-pointed
/// once, after which vigil's own spelling is reported.
pub fn upstream_is(upstream: &str, primary: &str, members: &[(&str, &str, u16)]) -> bool {
    let Some((host, port)) = split(upstream) else { return false };
    if let Some((name, ..)) =
        members.iter().find(|(_, member_host, member_port)| *member_port == port && same_host(member_host, host))
    {
        return *name == primary;
    }
    let mut on_port = members.iter().filter(|(_, _, member_port)| *member_port == port);
    matches!((on_port.next(), on_port.next()), (Some((name, ..)), None) if *name == primary)
}

/// "host:port", "[v6]:port" or "v6:port" (as `pg_stat_wal_receiver` writes an IPv6 host).
fn split(upstream: &str) -> Option<(&str, u16)> {
    let (host, port) = upstream.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host);
    Some((host, port.parse().ok()?))
}

fn same_host(a: &str, b: &str) -> bool {
    let (a, b) = (bare(a), bare(b));
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// An IPv6 host without its brackets, as a spec may spell it.
fn bare(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three datacenters, every member on the same port.
    const SAME_PORT: [(&str, &str, u16); 3] =
        [("r1", "10.0.1.1", 6379), ("r2", "10.0.2.1", 6379), ("r3", "10.0.3.1", 6379)];
    /// One host, a port per member (the loopback tests).
    const ONE_HOST: [(&str, &str, u16); 3] =
        [("r1", "127.0.0.1", 7001), ("r2", "127.0.0.1", 7002), ("r3", "127.0.0.1", 7003)];

    #[test]
    fn a_replica_of_another_replica_on_the_same_port_does_not_follow_the_primary() {
        assert!(!upstream_is("10.0.2.1:6379", "r3", &SAME_PORT));
        assert!(upstream_is("10.0.3.1:6379", "r3", &SAME_PORT));
    }

    #[test]
    fn members_on_one_host_are_told_apart_by_port() {
        assert!(upstream_is("127.0.0.1:7003", "r3", &ONE_HOST));
        assert!(!upstream_is("127.0.0.1:7002", "r3", &ONE_HOST));
    }

    #[test]
    fn ip_addresses_are_compared_as_addresses() {
        let members = [("a", "::1", 5432), ("b", "fd00::2", 5432)];
        assert!(upstream_is("[::1]:5432", "a", &members));
        assert!(upstream_is("fd00:0:0:0:0:0:0:2:5432", "b", &members));
        assert!(!upstream_is("fd00::2:5432", "a", &members));
    }

    #[test]
    fn host_names_are_compared_without_case() {
        let members = [("a", "db1.example", 5432), ("b", "db2.example", 5432)];
        assert!(upstream_is("DB2.example:5432", "b", &members));
    }

    #[test]
    fn an_unknown_spelling_counts_only_when_the_port_says_who() {
        // A name for 127.0.0.1 set by hand: the port is the primary's alone.
        assert!(upstream_is("localhost:7003", "r3", &ONE_HOST));
        assert!(!upstream_is("localhost:7002", "r3", &ONE_HOST));
        // Every member on 6379: cannot be told, so not counted as following.
        assert!(!upstream_is("db3.internal:6379", "r3", &SAME_PORT));
    }

    #[test]
    fn unreadable_upstreams_follow_nothing() {
        assert!(!upstream_is("10.0.3.1", "r3", &SAME_PORT));
        assert!(!upstream_is("10.0.3.1:port", "r3", &SAME_PORT));
        assert!(!upstream_is("", "r3", &SAME_PORT));
    }
}
