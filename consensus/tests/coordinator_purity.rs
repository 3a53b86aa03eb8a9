//! The coordinator is pure: its sources name no crate or std module that does IO, reads a
//! clock or spawns (Architecture Invariant of `vigil_consensus::coordinator`).

use std::path::Path;

/// Paths whose use in the coordinator would mean IO, a clock, or a thread.
/// (`std::net::IpAddr` is allowed: parsing an address reads nothing.)
const FORBIDDEN: [&str; 15] = [
    "tokio",
    "quinn",
    "redb",
    "tokio_postgres",
    "redis::",
    "openraft",
    "Instant",
    "SystemTime",
    "std::fs",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "ToSocketAddrs",
    "std::thread",
    "std::process",
];

#[test]
fn the_coordinator_names_no_io_crate_clock_or_thread() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/coordinator");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("the coordinator's directory") {
        let path = entry.expect("a directory entry").path();
        let source = std::fs::read_to_string(&path).expect("a source file");
        for (number, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in FORBIDDEN {
                assert!(!code.contains(word), "{}:{}: names `{word}`: {line}", path.display(), number + 1);
            }
        }
        files += 1;
    }
    assert!(files >= 10, "only {files} coordinator files were read from {}", dir.display());
}
