//! Fuzz targets on the stable toolchain: the cluster spec and the node configuration (TOML),
//! the API's request bodies and paths, and the Raft transport's frames. Each starts from
//! valid documents and mutates them (bytes flipped, dropped, cut off, hostile tokens put in:
//! huge numbers and durations, control characters, deep nesting) and asserts that nothing
//! panics: every input gets an answer or an error.
//!
//! `VIGIL_FUZZ_CASES` sets the cases per target (CI runs the default, 300); the long run is
//! `VIGIL_FUZZ_CASES=100000 cargo test --release -p vigil --test fuzz`. A panic found
//! becomes a regression test (the seeds below keep the ones found so far).

// The API target times nothing; the harness's temporary cluster uses no clock either.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use axum::Extension;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use proptest::prelude::*;
use proptest::sample::Index;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use vigil::api::auth::Principal;
use vigil::api::routes::{ApiState, router};
use vigil::config::NodeConfig;
use vigil::spec_file;
use vigil_consensus::allow::{AllowList, check_cluster};
use vigil_consensus::node::{NodeSetup, RaftNode, RaftSettings};
use vigil_consensus::pki::CertificateAuthority;
use vigil_consensus::tls::{Identity, TlsPaths};
use vigil_consensus::transport::frame::read_frame;
use vigil_consensus::transport::rpc::RaftRequest;
use vigil_consensus::{NodeInfo, limits};

fn cases() -> u32 {
    std::env::var("VIGIL_FUZZ_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(300)
}

/// What a mutation puts in: the kinds of token that broke parsers before.
const TOKENS: &[&str] = &[
    "200000000000years",
    "18446744073709551616",
    "-1",
    "1e400",
    "0",
    "\"",
    "'",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    "\n",
    "\u{0}",
    "\\u0000",
    "\"\"\"",
    "../../",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "nan",
    "9999999999999999ms",
    "null",
    "ü",
];

#[derive(Clone, Debug)]
enum Edit {
    Flip(Index, u8),
    Insert(Index, usize),
    Delete(Index, usize),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Flip(at, byte)),
        (any::<Index>(), 0..TOKENS.len()).prop_map(|(at, token)| Edit::Insert(at, token)),
        (any::<Index>(), 1usize..16).prop_map(|(at, len)| Edit::Delete(at, len)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for edit in edits {
        let at = |index: &Index, bytes: &Vec<u8>| if bytes.is_empty() { 0 } else { index.index(bytes.len()) };
        match edit {
            Edit::Flip(index, byte) if !bytes.is_empty() => {
                let at = at(index, &bytes);
                bytes[at] ^= byte;
            }
            Edit::Flip(..) => {}
            Edit::Insert(index, token) => {
                let at = at(index, &bytes);
                bytes.splice(at..at, TOKENS[*token].bytes());
            }
            Edit::Delete(index, len) => {
                let at = at(index, &bytes);
                let end = (at + len).min(bytes.len());
                bytes.drain(at..end);
            }
            Edit::Truncate(index) => {
                let at = at(index, &bytes);
                bytes.truncate(at);
            }
        }
    }
    bytes
}

/// A seed document, mutated.
fn mutated(seeds: &'static [&'static str]) -> impl Strategy<Value = String> {
    (0..seeds.len(), prop::collection::vec(edit(), 0..6))
        .prop_map(move |(seed, edits)| String::from_utf8_lossy(&apply(seeds[seed].as_bytes(), &edits)).into_owned())
}

const SPECS: &[&str] = &[
    r#"[[postgres]]
name = "main"
user = "vigil"
password = { file = "/etc/vigil/secrets/pg.password" }
replication_user = "replicator"
replication_password = { env = "VIGIL_REPLICATION_PASSWORD" }
maximum_lag_on_failover = 16777216
down_after = "600ms"
probe_interval = "200ms"
probe_timeout = "500ms"
lease_duration = "1500ms"
bin_dir = "/usr/lib/postgresql/15/bin"
run_as = "postgres"
synchronous = "strict"
fence_method = "stop"
allow_reclone = true
datacenter_preference = ["dc1", "dc2"]

[[postgres.members]]
name = "pg1"
host = "10.0.1.20"
port = 5432
node = "n1"
data_dir = "/var/lib/postgresql/15/main"
start_command = "systemctl start postgresql@15-main"
stop_command = "systemctl stop postgresql@15-main"
priority = 100

[[postgres.members]]
name = "pg2"
host = "10.0.2.20"
node = "n2"
data_dir = "/var/lib/postgresql/15/main"
nofailover = true
"#,
    r#"[[redis]]
name = "cache"
password = { file = "/etc/vigil/secrets/redis.password" }
user = "vigil"
maximum_lag_on_failover = 1048576
probe_interval = "200000000000years"
tls = { ca = "/etc/vigil/secrets/ca.crt", cert = "/etc/vigil/secrets/c.crt", key = "/etc/vigil/secrets/c.key" }

[[redis.members]]
name = "r1"
host = "10.0.1.30"
port = 6379
node = "n1"

[[redis.members]]
name = "r2"
host = "10.0.2.30"
node = "n2"
"#,
];

fn nodes() -> BTreeMap<u64, NodeInfo> {
    (1..=3)
        .map(|id| {
            let info = NodeInfo {
                name: format!("n{id}"),
                datacenter: format!("dc{id}"),
                raft_addr: format!("127.0.0.1:{}", 7100 + id),
                api_addr: format!("127.0.0.1:{}", 7200 + id),
            };
            (id, info)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_spec_never_panics_a_node(text in mutated(SPECS)) {
        if let Ok(spec) = spec_file::parse(&text) {
            let nodes = nodes();
            let _ = spec_file::validate(&spec, &nodes);
            let _ = limits::check_spec(&spec);
            let allowed = nodes.keys().map(|id| (*id, AllowList::default())).collect();
            let _ = check_cluster(&spec, &nodes, &allowed);
            for group in spec.groups() {
                let policy = group.policy();
                let _ = policy.lease_wait();
            }
        }
    }

    #[test]
    fn a_node_configuration_never_panics(text in mutated(node_configs())) {
        let dir = fixture_dir();
        let _ = NodeConfig::parse(&text, &dir.join("node.toml"));
    }

    #[test]
    fn a_frame_never_panics_a_node(bytes in frames()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut reader = bytes.as_slice();
        let _ = runtime.block_on(read_frame::<RaftRequest, _>(&mut reader));
    }

    #[test]
    fn an_api_request_never_panics_a_node((method, path, body) in api_requests()) {
        let api = api();
        let request = Request::builder().method(method).uri(path).header("content-type", "application/json");
        let Ok(request) = request.body(Body::from(body)) else { return Ok(()) };
        let status = api.runtime.block_on(api.router.clone().layer(Extension(Principal::Local {
            node: "n1".into(),
        })).oneshot(request)).unwrap().status();
        prop_assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

/// A directory with real certificates for node 1, for the configuration target.
fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("fuzz").unwrap();
        let node = ca.issue_node(1, &[]).unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs/ca.crt"), &ca.certificate().cert_pem).unwrap();
        std::fs::write(dir.path().join("certs/node1.crt"), &node.cert_pem).unwrap();
        let key = dir.path().join("certs/node1.key");
        std::fs::write(&key, &node.key_pem).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        dir
    })
    .path()
}

fn node_configs() -> &'static [&'static str] {
    const CONFIG: &str = include_str!("../../deploy/examples/node.toml");
    // The example, its data dir inside the fixture (nothing is written: only validated).
    static CONFIGS: OnceLock<[&'static str; 1]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let text = CONFIG.replace("/var/lib/vigil", &fixture_dir().join("data").display().to_string());
        [Box::leak(text.into_boxed_str())]
    })
}

fn frames() -> impl Strategy<Value = Vec<u8>> {
    const REQUESTS: &[&str] = &[
        r#"{"rpc":"hello","body":{"cluster":"test"}}"#,
        r#"{"rpc":"ping"}"#,
        r#"{"rpc":"forward","body":{"op":"write","command":{"type":"record_event","at_unix_ms":1,"proposer":2,"kind":{"kind":"note","author":"a","text":"t"}},"operator":{"name":"a","role":"admin"}}}"#,
        r#"{"rpc":"relay","body":{"body":"{}","scheme":1027,"signature":[1,2,3],"chain":[[48,130]]}}"#,
        r#"{"rpc":"forward","body":{"op":"add_member","id":4,"node":{"name":"n4","datacenter":"d","raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:2"},"learner_only":false}}"#,
        r#"{"rpc":"install_snapshot","body":{"vote":{"leader_id":{"term":1,"node_id":1},"committed":true},"meta":{"last_log_id":null,"last_membership":{"log_id":null,"membership":{"configs":[],"nodes":{}}},"snapshot_id":"x"},"data":{"groups":{}}}}"#,
    ];
    (0..REQUESTS.len(), prop::collection::vec(edit(), 0..6), any::<bool>()).prop_map(|(seed, edits, honest_length)| {
        let body = apply(REQUESTS[seed].as_bytes(), &edits);
        // Mostly the length the body has; sometimes one the mutations made up.
        let length = if honest_length { body.len() as u32 } else { u32::from_be_bytes([body.len() as u8, 0, 1, 7]) };
        let mut frame = length.to_be_bytes().to_vec();
        frame.extend(body);
        frame
    })
}

fn api_requests() -> impl Strategy<Value = (Method, String, String)> {
    // Each route with a body it takes; the body mutated, and sometimes the path too.
    const TEMPLATES: &[(&str, &str, &str)] = &[
        (
            "POST",
            "/spec",
            r#"{"author":"a","toml":"[[redis]]\nname = \"cache\"\nmaximum_lag_on_failover = 1\n[[redis.members]]\nname = \"r1\"\nhost = \"127.0.0.1\"\nnode = \"n1\"\n"}"#,
        ),
        ("POST", "/notes", r#"{"author":"a","text":"hello"}"#),
        (
            "POST",
            "/members",
            r#"{"id":1,"name":"n4","datacenter":"d","raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:2","learner":true}"#,
        ),
        ("DELETE", "/members/7", ""),
        ("POST", "/groups/cache/pause", r#"{"author":"a"}"#),
        ("POST", "/groups/cache/resume", r#"{"author":"a"}"#),
        ("POST", "/groups/cache/switchover", r#"{"author":"a","to":"r2"}"#),
        ("POST", "/groups/cache/failover", r#"{"author":"a","to":"r2"}"#),
        ("GET", "/history?since=18446744073709551615", ""),
        ("GET", "/groups/cache", ""),
        ("GET", "/primary/cache", ""),
        ("GET", "/status", ""),
    ];
    let template = (0..TEMPLATES.len(), prop::collection::vec(edit(), 0..4), prop::collection::vec(edit(), 0..2))
        .prop_map(|(index, body_edits, path_edits)| {
            let (method, path, body) = TEMPLATES[index];
            let body = String::from_utf8_lossy(&apply(body.as_bytes(), &body_edits)).into_owned();
            let path = String::from_utf8_lossy(&apply(path.as_bytes(), &path_edits)).into_owned();
            (Method::from_bytes(method.as_bytes()).unwrap(), path, body)
        });
    // A spec that is valid JSON around mutated TOML reaches the spec's parser and checks.
    let spec = mutated(SPECS).prop_map(|toml| {
        (Method::POST, "/spec".to_string(), serde_json::json!({ "author": "a", "toml": toml }).to_string())
    });
    prop_oneof![template, spec]
}

/// One in-process node, its router, and the runtime they run on.
struct Api {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = fixture_dir();
        let identity = Identity::load(&TlsPaths {
            ca: dir.join("certs/ca.crt"),
            cert: dir.join("certs/node1.crt"),
            key: dir.join("certs/node1.key"),
        })
        .unwrap();
        let info = NodeInfo {
            name: "n1".into(),
            datacenter: "dc1".into(),
            raft_addr: std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string(),
            api_addr: "127.0.0.1:1".into(),
        };
        let setup = NodeSetup {
            cluster_name: "fuzz".into(),
            id: 1,
            info: info.clone(),
            bind_addr: info.raft_addr.parse().unwrap(),
            data_dir: dir.join("api-node"),
            identity,
            raft: RaftSettings::default(),
            initial_members: [(1, info)].into(),
        };
        let router = runtime.block_on(async {
            let node = RaftNode::start(setup, CancellationToken::new()).await.unwrap();
            let cluster = node.cluster.clone();
            // Kept running for the whole test binary.
            std::mem::forget(node);
            // As a running node does: specs are then checked against what it allows, at once.
            let publish = vigil_consensus::Command::PublishAllowList { node: 1, allow: AllowList::default() };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while cluster.propose(publish.clone(), std::time::Duration::from_secs(2)).await.is_err() {
                assert!(std::time::Instant::now() < deadline, "the fuzz node never led");
            }
            let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
            router(ApiState { cluster, cluster_name: "fuzz".into(), prometheus })
        });
        Api { runtime, router }
    })
}
