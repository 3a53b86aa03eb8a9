//! The API bounds what a caller may hold or send: connections that never finish the TLS
//! handshake are closed in time, and a note over its cap is refused with 413 and the cap,
//! while one at the cap is kept and reaches a node that joins afterwards.

// Real processes are timed with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::TestCluster;
use vigil::api::server::HANDSHAKE_TIMEOUT;
use vigil_consensus::limits::MAX_NOTE_BYTES;

const AGREEMENT_TIMEOUT: Duration = Duration::from_secs(20);

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count()).unwrap_or(0)
}

/// 300 connections that send nothing after connecting: the daemon holds at most its cap of
/// them, closes every one within the handshake timeout, and its file descriptors return to
/// what they were.
#[test]
fn unfinished_handshakes_are_closed_in_time() {
    let mut cluster = TestCluster::new(1);
    cluster.start_all();
    cluster.wait_for_agreed_leader(&[1], AGREEMENT_TIMEOUT);
    let pid = cluster.nodes[&1].child.as_ref().unwrap().id();
    let idle = open_descriptors(pid);
    let address = format!("127.0.0.1:{}", cluster.nodes[&1].api_port);
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&address).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = open_descriptors(pid);
    assert!(held > idle + 100, "the daemon took the connections: {idle} descriptors idle, {held} now");

    // Each connection is closed by the daemon: a read sees the end of the stream (or a reset).
    for stream in &mut streams {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT + Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) | Err(_) if started.elapsed() < HANDSHAKE_TIMEOUT + Duration::from_secs(3) => {}
            other => panic!("a connection stayed open {:?} after connecting: {other:?}", started.elapsed()),
        }
    }
    cluster.wait_until("the daemon's descriptors to return to idle", Duration::from_secs(5), || {
        open_descriptors(pid) <= idle + 2
    });
    // It still serves a client that completes the handshake.
    assert_eq!(cluster.http_get(1, "/health").0, 200);
    let log = cluster.log_of(1);
    assert!(!log.contains("refused an api connection"), "refusals are logged at debug only:\n{log}");
}

/// A note one byte over the cap gets 413 naming the cap; one at the cap is committed, and a
/// node that joins afterwards has it too.
#[test]
fn a_note_over_its_cap_is_refused_and_one_at_it_travels_to_a_new_node() {
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    let note = |text: &str| serde_json::json!({ "author": "ops", "text": text }).to_string();

    let (status, body) = cluster.http_post(2, "/notes", note(&"x".repeat(MAX_NOTE_BYTES + 1)));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains(&format!("at most {MAX_NOTE_BYTES}")), "{body}");

    let at_cap = "y".repeat(MAX_NOTE_BYTES);
    let (status, body) = cluster.http_post(2, "/notes", note(&at_cap));
    assert_eq!(status, 200, "{body}");

    cluster.add_joining_node(4);
    cluster.start(4);
    cluster.add_member(1, 4);
    cluster.wait_until("the note to reach node 4", AGREEMENT_TIMEOUT, || cluster.notes(4).contains(&at_cap));
}
