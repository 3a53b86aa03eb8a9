//! The Redis probe over TLS against a real redis-server that takes only TLS connections and
//! requires client certificates: it answers with the right CA and client certificate, and
//! fails, as data with the reason, with a foreign CA or without a client certificate.

// Waiting for a real server to come up measures real time.
#![allow(clippy::disallowed_types)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_consensus::pki::CertificateAuthority;
use vigil_probes::{RedisOutcome, RedisProbe, RedisTarget, RedisTls};

const PASSWORD: &str = "tls-secret";

/// A redis-server started by this test, killed by its PID when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_tls_server(dir: &Path, port: u16) -> Server {
    let config = format!(
        "bind 127.0.0.1\nport 0\ntls-port {port}\ntls-cert-file {dir}/server.crt\ntls-key-file {dir}/server.key\n\
         tls-ca-cert-file {dir}/ca.crt\ntls-auth-clients yes\nrequirepass {PASSWORD}\ndir {dir}\nsave \"\"\n\
         appendonly no\ndaemonize no\nlogfile {dir}/redis.log\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("redis.conf"), config).unwrap();
    let child = Command::new("redis-server")
        .arg(dir.join("redis.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (Debian's is built with TLS)");
    Server(child)
}

fn target(port: u16, tls: RedisTls) -> RedisTarget {
    RedisTarget {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: Some(PASSWORD.into()),
        timeout: Duration::from_secs(2),
        tls: Some(tls),
    }
}

#[tokio::test]
async fn the_probe_speaks_tls_and_refuses_a_server_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("redis-tls-test").unwrap();
    let server = ca.issue_node(1, &["127.0.0.1".to_string()]).unwrap();
    let client = ca.issue_node(2, &[]).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.certificate().cert_pem).unwrap();
    std::fs::write(dir.path().join("server.crt"), &server.cert_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
    let port = free_port();
    let _server = start_tls_server(dir.path(), port);

    let good = RedisTls {
        ca: ca.certificate().cert_pem.clone().into_bytes(),
        client: Some((client.cert_pem.clone().into_bytes(), client.key_pem.clone().into_bytes())),
    };
    let probe = RedisProbe::new(target(port, good.clone()), 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    let observation = loop {
        match probe.check().await {
            RedisOutcome::Answered(observation) => break observation,
            RedisOutcome::Failed { reason } => {
                assert!(Instant::now() < deadline, "the TLS server never answered: {reason}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(observation.is_master);
    assert_eq!(observation.heartbeat, Some(Ok(())), "the heartbeat write over TLS failed");

    // A CA that did not sign the server's certificate: the connection is refused by us.
    let foreign = CertificateAuthority::generate("someone-else").unwrap();
    let wrong_ca = RedisTls { ca: foreign.certificate().cert_pem.clone().into_bytes(), ..good.clone() };
    match RedisProbe::new(target(port, wrong_ca), 1).check().await {
        RedisOutcome::Failed { reason } => assert!(reason.to_lowercase().contains("certificate"), "{reason}"),
        RedisOutcome::Answered(_) => panic!("a server signed by another CA was trusted"),
    }

    // No client certificate: the server, which requires one, refuses us.
    let anonymous = RedisTls { client: None, ..good };
    assert!(
        matches!(RedisProbe::new(target(port, anonymous), 1).check().await, RedisOutcome::Failed { .. }),
        "a server that requires client certificates answered without one"
    );
}
