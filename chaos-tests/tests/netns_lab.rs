//! The network lab against the real kernel: hosts in namespaces reach each other over TCP,
//! each fault does exactly what it says and is undone by its inverse, dropping a lab (also
//! while a test panics) leaves no namespace or process behind, and a PostgreSQL cluster
//! spread over the lab replicates across it and loses its primary when the link is cut.

// These tests measure real connect and start-up times; tokio's clock is not involved.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use vigil_chaos_tests::netns::{NFT_TABLE, NetLab};
use vigil_chaos_tests::postgres::{LAB_PORT, PgCluster, VIGIL_PASSWORD, VIGIL_USER};

/// How long a connect may take before a test calls the peer unreachable. Generous against
/// a loaded machine: inside the lab a healthy connect takes well under a millisecond.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// A listener on the host's lab address with an echo server behind it, which serves one
/// connection after another until the test process ends.
fn echo_server(lab: &NetLab, host: &str) -> SocketAddr {
    let ip = lab.ip(host);
    let listener = lab.run_in(host, move || TcpListener::bind((ip, 0))).unwrap().expect("bind in the namespace");
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buffer = [0u8; 256];
                while let Ok(read) = stream.read(&mut buffer) {
                    if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

/// Connects from inside `from`'s namespace.
fn connect(lab: &NetLab, from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    lab.run_in(from, move || TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)).unwrap()
}

/// Sends a line through an echo server and checks it comes back.
fn assert_echoes(lab: &NetLab, from: &str, to: SocketAddr) {
    let mut stream = connect(lab, from, to).unwrap_or_else(|error| panic!("{from} cannot reach {to}: {error}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"hello across the lab").unwrap();
    let mut answer = [0u8; 20];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"hello across the lab");
}

/// Asserts that a connect from `from` to `to` times out: the packets vanish, nothing
/// answers, not even with a refusal.
fn assert_times_out(lab: &NetLab, from: &str, to: SocketAddr) {
    let started = Instant::now();
    match connect(lab, from, to) {
        Ok(_) => panic!("{from} still reaches {to}"),
        Err(error) => assert_eq!(error.kind(), ErrorKind::TimedOut, "{from} -> {to}: {error}"),
    }
    assert!(started.elapsed() >= CONNECT_TIMEOUT, "gave up after {:?}", started.elapsed());
}

/// The lab namespaces `ip netns list` shows.
fn listed_namespaces() -> BTreeSet<String> {
    let output = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Runs a command to completion and returns its output.
fn output_of(command: &mut Command) -> Output {
    command.output().expect("the command runs")
}

/// The PIDs `ip netns pids` lists for the host's namespace.
fn pids_in(lab: &NetLab, host: &str) -> BTreeSet<u32> {
    let output = output_of(Command::new("ip").args(["netns", "pids", lab.namespace(host)]));
    String::from_utf8_lossy(&output.stdout).split_whitespace().filter_map(|word| word.parse().ok()).collect()
}

/// Two hosts get distinct addresses on one private /24, and namespaces with short names
/// that `ip netns list` shows, and reach each other over TCP both ways.
#[test]
fn two_hosts_reach_each_other_over_tcp() {
    let started = Instant::now();
    let lab = NetLab::create(&["dc1", "dc2"]).expect("lab is created");
    eprintln!("NetLab::create(2 hosts) took {:?}", started.elapsed());

    assert_eq!(lab.hosts(), ["dc1", "dc2"]);
    let (network, prefix) = lab.subnet();
    assert_eq!(prefix, 24);
    assert_eq!(network.octets()[0], 10);
    for host in ["dc1", "dc2"] {
        let octets = lab.ip(host).octets();
        assert_eq!(octets[..3], network.octets()[..3], "{host} is outside the lab subnet");
        assert!(lab.namespace(host).len() <= 15, "{} is too long", lab.namespace(host));
    }
    assert_ne!(lab.ip("dc1"), lab.ip("dc2"));
    assert_ne!(lab.namespace("dc1"), lab.namespace("dc2"));
    let listed = listed_namespaces();
    for namespace in [lab.namespace("dc1"), lab.namespace("dc2"), lab.bridge_namespace()] {
        assert!(listed.contains(namespace), "{namespace} not in {listed:?}");
    }

    let on_dc1 = echo_server(&lab, "dc1");
    let on_dc2 = echo_server(&lab, "dc2");
    assert_echoes(&lab, "dc1", on_dc2);
    assert_echoes(&lab, "dc2", on_dc1);
    // The lab network is invisible from the root namespace.
    assert!(TcpStream::connect_timeout(&on_dc2, Duration::from_millis(300)).is_err());

    // A program started through `command` sees the lab network too.
    let output = output_of(lab.command("dc1", "ip").args(["-4", "-o", "addr", "show", "dev", "eth0"]));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("{}/24", lab.ip("dc1"))), "{output:?}");

    let started = Instant::now();
    drop(lab);
    eprintln!("dropping a 2-host lab took {:?}", started.elapsed());
}

/// A cut host's packets vanish: a connect that was refused before (closed port) now times
/// out instead, in both directions; heal restores both.
#[test]
fn cut_makes_connect_time_out_and_heal_restores_it() {
    let lab = NetLab::create(&["dc1", "dc2"]).expect("lab is created");
    let on_dc2 = echo_server(&lab, "dc2");
    let on_dc1 = echo_server(&lab, "dc1");
    // Nothing listens on port 1: a reachable host refuses at once.
    let closed_on_dc2 = SocketAddr::from((lab.ip("dc2"), 1));
    let refused = connect(&lab, "dc1", closed_on_dc2).expect_err("nothing listens on port 1");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    // A connection open before the cut survives it, as over a real dead link.
    let mut open_stream = connect(&lab, "dc1", on_dc2).expect("connects before the cut");

    lab.cut("dc2").expect("cut");
    assert_times_out(&lab, "dc1", closed_on_dc2);
    assert_times_out(&lab, "dc1", on_dc2);
    assert_times_out(&lab, "dc2", on_dc1);

    lab.heal("dc2").expect("heal");
    assert_echoes(&lab, "dc1", on_dc2);
    assert_echoes(&lab, "dc2", on_dc1);
    open_stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    open_stream.write_all(b"still here").unwrap();
    let mut answer = [0u8; 10];
    open_stream.read_exact(&mut answer).expect("the open connection works again");
    assert_eq!(&answer, b"still here");
    // Healing twice, or a host that is not cut, is harmless.
    lab.heal("dc2").expect("heal again");
    assert!(lab.cut("nowhere").is_err());
}

/// A partition drops exactly one pair, both directions, and leaves every other pair
/// alone; unpartition lifts it.
#[test]
fn partition_blocks_one_pair_and_nothing_else() {
    let lab = NetLab::create(&["a", "b", "c"]).expect("lab is created");
    let servers: Vec<(&str, SocketAddr)> =
        ["a", "b", "c"].into_iter().map(|host| (host, echo_server(&lab, host))).collect();
    let server = |host: &str| servers.iter().find(|(name, _)| *name == host).unwrap().1;

    lab.partition("a", "b").expect("partition");
    assert_times_out(&lab, "a", server("b"));
    assert_times_out(&lab, "b", server("a"));
    for (from, to) in [("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")] {
        assert_echoes(&lab, from, server(to));
    }
    // The rule sits in the partitioned hosts' own namespaces, and only there.
    let rules = |host: &str| {
        let output = output_of(lab.command(host, "nft").args(["list", "table", "inet", NFT_TABLE]));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(rules("a").contains(&format!("ip saddr {} drop", lab.ip("b"))), "{}", rules("a"));
    assert!(rules("b").contains(&format!("ip saddr {} drop", lab.ip("a"))), "{}", rules("b"));
    assert!(!rules("c").contains("drop"), "{}", rules("c"));

    // Either order names the same pair.
    lab.unpartition("b", "a").expect("unpartition");
    assert_echoes(&lab, "a", server("b"));
    assert_echoes(&lab, "b", server("a"));
    assert!(!rules("a").contains("drop"), "{}", rules("a"));
    assert!(lab.partition("a", "a").is_err());
}

/// A blocked port cuts one service of a host off from the other hosts, both ways, while its
/// other services and its own loopback traffic to that service still work.
#[test]
fn block_port_cuts_one_service_and_nothing_else() {
    let lab = NetLab::create(&["a", "b"]).expect("lab is created");
    let blocked = echo_server(&lab, "a");
    let open = echo_server(&lab, "a");
    lab.block_port("a", blocked.port()).expect("block the port");
    assert_times_out(&lab, "b", blocked);
    assert_echoes(&lab, "b", open);
    assert_echoes(&lab, "a", blocked);
    // The other direction too: the blocked host's traffic from that port is dropped where it
    // arrives, so an asymmetric half-link never forms.
    let rules = output_of(lab.command("b", "nft").args(["list", "table", "inet", NFT_TABLE]));
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains(&format!("ip saddr {}", lab.ip("a"))) && rules.contains(&blocked.port().to_string()),
        "{rules}"
    );
    lab.unblock_port("a", blocked.port()).expect("unblock the port");
    assert_echoes(&lab, "b", blocked);
}

/// Loss of 100% on a host drops everything arriving over the lab network, so neither side
/// can open a connection (the replies vanish too), while the host's loopback still works;
/// 0% restores it.
#[test]
fn packet_loss_100_drops_everything_inbound_and_0_restores() {
    let lab = NetLab::create(&["dc1", "dc2"]).expect("lab is created");
    let on_dc1 = echo_server(&lab, "dc1");
    let on_dc2 = echo_server(&lab, "dc2");

    lab.packet_loss("dc2", 100).expect("loss on");
    assert_times_out(&lab, "dc1", on_dc2);
    assert_times_out(&lab, "dc2", on_dc1);
    let loopback_port = on_dc2.port();
    let ip = lab.ip("dc2");
    // dc2 reaching its own address goes over its loopback, which the `iifname` match spares.
    assert_echoes(&lab, "dc2", SocketAddr::from((ip, loopback_port)));
    assert!(lab.packet_loss("dc2", 101).is_err());

    lab.packet_loss("dc2", 0).expect("loss off");
    assert_echoes(&lab, "dc1", on_dc2);
    assert_echoes(&lab, "dc2", on_dc1);
}

/// A partial loss drops about that share of the packets: of 1000 datagrams at 50% loss,
/// between 350 and 650 arrive (a miss is over nine standard deviations away).
#[test]
fn partial_packet_loss_drops_about_that_share() {
    const SENT: usize = 1000;
    let lab = NetLab::create(&["dc1", "dc2"]).expect("lab is created");
    let ip = lab.ip("dc2");
    let receiver = lab.run_in("dc2", move || UdpSocket::bind((ip, 0))).unwrap().expect("bind udp in dc2");
    receiver.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let target = receiver.local_addr().unwrap();
    let sender = lab.run_in("dc1", || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))).unwrap().expect("bind udp in dc1");

    // Count every datagram that arrives until none has for half a second.
    let count_arrivals = |receiver: &UdpSocket| {
        let mut received = 0;
        let mut buffer = [0u8; 4];
        while receiver.recv_from(&mut buffer).is_ok() {
            received += 1;
        }
        received
    };

    lab.packet_loss("dc2", 50).expect("loss on");
    let received = thread::scope(|scope| {
        // Reading while sending keeps the receive buffer from overflowing, which would
        // look like loss.
        let counter = scope.spawn(|| count_arrivals(&receiver));
        for sequence in 0..SENT {
            sender.send_to(&(sequence as u32).to_be_bytes(), target).unwrap();
            if sequence % 50 == 49 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        counter.join().unwrap()
    });
    assert!((350..=650).contains(&received), "{received} of {SENT} datagrams arrived at 50% loss");

    lab.packet_loss("dc2", 0).expect("loss off");
    for sequence in 0..10u32 {
        sender.send_to(&sequence.to_be_bytes(), target).unwrap();
    }
    assert_eq!(count_arrivals(&receiver), 10, "datagrams lost after the loss was removed");
}

/// kill_all kills every process inside the host's namespace, also ones the lab did not
/// spawn itself, and nothing elsewhere.
#[test]
fn kill_all_empties_the_namespace() {
    let lab = NetLab::create(&["dc1", "dc2"]).expect("lab is created");
    let mut spawned = lab.spawn("dc1", lab.command("dc1", "sleep").tap_arg("600")).expect("spawn");
    // A grandchild the lab never saw, and a process on the other host.
    let mut shell =
        lab.spawn("dc1", lab.command("dc1", "sh").tap_args(["-c", "sleep 600 & sleep 600; wait"])).expect("spawn sh");
    let mut elsewhere = lab.spawn("dc2", lab.command("dc2", "sleep").tap_arg("600")).expect("spawn on dc2");
    assert!(lab.spawn("dc1", lab.command("dc2", "sleep").tap_arg("1")).is_err(), "a dc2 command spawned as dc1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids_in(&lab, "dc1").len() < 4 {
        assert!(Instant::now() < deadline, "dc1 runs only {:?}", pids_in(&lab, "dc1"));
        thread::sleep(Duration::from_millis(20));
    }
    assert!(pids_in(&lab, "dc1").contains(&spawned.id()));

    lab.kill_all("dc1").expect("kill_all");
    assert!(pids_in(&lab, "dc1").is_empty(), "{:?}", pids_in(&lab, "dc1"));
    assert!(spawned.wait().unwrap().code().is_none(), "sleep was not killed by a signal");
    assert!(shell.wait().unwrap().code().is_none());
    assert!(process_alive(elsewhere.id()), "kill_all(dc1) reached dc2");
    assert!(elsewhere.try_wait().unwrap().is_none());

    // Dropping the lab kills what is left.
    let pid = elsewhere.id();
    drop(lab);
    assert!(elsewhere.wait().unwrap().code().is_none());
    assert!(!process_alive(pid));
}

/// Dropping a lab kills its processes, deletes its nftables tables and namespaces, also
/// when the test using it panics.
#[test]
fn drop_removes_everything_also_after_a_panic() {
    for panic_inside in [false, true] {
        let mut seen_namespaces = Vec::new();
        let mut seen_pid = None;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let started = Instant::now();
            let lab = NetLab::create(&["dc1", "dc2", "dc3", "client"]).expect("lab is created");
            eprintln!("NetLab::create(4 hosts) took {:?}", started.elapsed());
            for host in lab.hosts() {
                seen_namespaces.push(lab.namespace(&host).to_string());
            }
            seen_namespaces.push(lab.bridge_namespace().to_string());
            lab.partition("dc1", "dc2").unwrap();
            lab.packet_loss("client", 30).unwrap();
            lab.cut("dc3").unwrap();
            let child = lab.spawn("dc3", lab.command("dc3", "sleep").tap_arg("600")).unwrap();
            seen_pid = Some(child.id());
            // The child handle is forgotten on purpose: the lab alone must end it.
            std::mem::forget(child);
            if panic_inside {
                panic!("a test fails while the lab is up");
            }
            let started = Instant::now();
            drop(lab);
            eprintln!("dropping a 4-host lab with faults took {:?}", started.elapsed());
        }));
        assert_eq!(outcome.is_err(), panic_inside);
        assert_eq!(seen_namespaces.len(), 5);
        let listed = listed_namespaces();
        for namespace in &seen_namespaces {
            assert!(!listed.contains(namespace), "{namespace} survived the drop (panic: {panic_inside})");
            assert!(!Path::new("/run/netns").join(namespace).exists());
        }
        let pid = seen_pid.expect("the child was spawned");
        assert!(!process_alive(pid), "sleep {pid} survived the drop (panic: {panic_inside})");
    }
    // The lab never creates tables in the root namespace.
    let root_tables = output_of(Command::new("nft").args(["list", "tables"]));
    assert!(!String::from_utf8_lossy(&root_tables.stdout).contains(NFT_TABLE));
}

/// Labs created at once get distinct subnets and namespaces.
#[test]
fn parallel_labs_never_collide() {
    let labs: Vec<NetLab> = thread::scope(|scope| {
        let handles: Vec<_> =
            (0..4).map(|_| scope.spawn(|| NetLab::create(&["dc1"]).expect("lab is created"))).collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    let subnets: BTreeSet<Ipv4Addr> = labs.iter().map(|lab| lab.subnet().0).collect();
    let namespaces: BTreeSet<&str> = labs.iter().map(|lab| lab.namespace("dc1")).collect();
    assert_eq!(subnets.len(), 4);
    assert_eq!(namespaces.len(), 4);
    assert!(NetLab::create(&[]).is_err());
    assert!(NetLab::create(&["dc1", "dc1"]).is_err());
    assert!(NetLab::create(&["bad name"]).is_err());
}

/// Runs psql as the vigil user from inside `from`'s namespace against member `index`.
fn psql_from(lab: &NetLab, cluster: &PgCluster, from: &str, index: usize, sql: &str) -> Output {
    let (host, port) = cluster.address(index);
    let connect = ["-h", &host, "-p", &port.to_string(), "-U", VIGIL_USER, "-d", "postgres"].map(String::from);
    output_of(
        lab.command(from, cluster.bin_dir().join("psql"))
            .env("PGPASSWORD", VIGIL_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "3")
            .args(["-X", "-A", "-t"])
            .args(connect)
            .args(["-c", sql]),
    )
}

/// Polls `sql` on member `index` until it answers `expected`.
fn wait_for_answer(cluster: &PgCluster, index: usize, sql: &str, expected: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = cluster.sql(index, sql);
        if matches!(&answer, Ok(text) if text == expected) {
            return;
        }
        assert!(Instant::now() < deadline, "member {index} answered {answer:?} to {sql:?}, expected {expected:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A three-member cluster over three datacenters replicates across the lab network;
/// cutting the primary's datacenter makes it unreachable from dc2 (psql times out) while
/// the replicas keep running, and healing restores both the access and the replication.
#[test]
fn postgres_across_the_lab_replicates_and_loses_its_primary_when_cut() {
    let lab = NetLab::create(&["dc1", "dc2", "dc3", "client"]).expect("lab is created");
    let started = Instant::now();
    let cluster = PgCluster::start_in(&lab, &["dc1", "dc2", "dc3"]).expect("cluster starts in the lab");
    eprintln!("PgCluster::start_in(3 members) took {:?}", started.elapsed());

    for (index, host) in ["dc1", "dc2", "dc3"].into_iter().enumerate() {
        assert_eq!(cluster.host_of(index), Some(host));
        assert_eq!(cluster.address(index), (lab.ip(host).to_string(), LAB_PORT));
        assert!(cluster.connection_string(index).contains(&format!("host={} port=5432", lab.ip(host))));
    }
    assert_eq!(cluster.host_of(3), None);
    assert!(!cluster.is_in_recovery(0).unwrap());
    assert!(cluster.is_in_recovery(1).unwrap());
    assert!(cluster.is_in_recovery(2).unwrap());
    // The replicas stream from the primary's lab address, not over loopback.
    wait_for_answer(
        &cluster,
        0,
        "SELECT string_agg(application_name || '@' || host(client_addr) || ':' || state, ',' ORDER BY application_name) \
         FROM pg_stat_replication",
        &format!("pg2@{}:streaming,pg3@{}:streaming", lab.ip("dc2"), lab.ip("dc3")),
        Duration::from_secs(10),
    );
    // The postmasters run inside their hosts' namespaces.
    let postmaster = cluster.postmaster_pid(0).unwrap().expect("the primary runs");
    assert!(pids_in(&lab, "dc1").contains(&(postmaster as u32)));

    cluster.sql(0, "CREATE TABLE lab_check (id int PRIMARY KEY, note text)").unwrap();
    cluster.sql(0, "INSERT INTO lab_check VALUES (1, 'written in dc1')").unwrap();
    for replica in [1, 2] {
        wait_for_answer(
            &cluster,
            replica,
            "SELECT note FROM lab_check WHERE id = 1",
            "written in dc1",
            Duration::from_secs(10),
        );
    }
    let from_client = psql_from(&lab, &cluster, "client", 0, "SELECT count(*) FROM lab_check");
    assert!(from_client.status.success(), "{from_client:?}");
    assert_eq!(String::from_utf8_lossy(&from_client.stdout).trim(), "1");

    lab.cut("dc1").expect("cut dc1");
    let started = Instant::now();
    let from_dc2 = psql_from(&lab, &cluster, "dc2", 0, "SELECT 1");
    let stderr = String::from_utf8_lossy(&from_dc2.stderr);
    assert!(!from_dc2.status.success(), "dc2 still reaches the cut primary: {from_dc2:?}");
    assert!(stderr.contains("timeout expired"), "expected a connect timeout, got: {stderr}");
    assert!(started.elapsed() >= Duration::from_secs(2), "psql gave up after {:?}", started.elapsed());
    for replica in [1, 2] {
        assert!(cluster.is_in_recovery(replica).unwrap(), "member {replica} stopped being a replica");
        assert_eq!(cluster.sql(replica, "SELECT note FROM lab_check WHERE id = 1").unwrap(), "written in dc1");
    }
    // The primary itself keeps running and accepting local writes.
    cluster.sql(0, "INSERT INTO lab_check VALUES (2, 'written during the cut')").unwrap();

    lab.heal("dc1").expect("heal dc1");
    let healed = Instant::now();
    let from_dc2 = psql_from(&lab, &cluster, "dc2", 0, "SELECT count(*) FROM lab_check");
    assert!(from_dc2.status.success(), "dc2 cannot reach the healed primary: {from_dc2:?}");
    assert_eq!(String::from_utf8_lossy(&from_dc2.stdout).trim(), "2");
    for replica in [1, 2] {
        wait_for_answer(&cluster, replica, "SELECT count(*) FROM lab_check", "2", Duration::from_secs(60));
    }
    eprintln!("the replicas caught up {:?} after the heal", healed.elapsed());

    // The cluster may outlive the lab: dropping the lab kills the servers, and the
    // cluster's own drop then only removes its directory.
    let root = cluster.root().to_path_buf();
    drop(lab);
    assert!(cluster.sql(1, "SELECT 1").is_err());
    drop(cluster);
    assert!(!root.exists());
}

/// Losing a datacenter with kill_all takes its server down with it; the member restarts
/// inside its namespace and streams again; stop and start work as on loopback, and a
/// cluster dropped before its lab stops every server.
#[test]
fn postgres_members_survive_kill_all_and_restart_in_their_namespace() {
    let lab = NetLab::create(&["dc1", "dc2"]).expect("lab is created");
    let cluster = PgCluster::start_in(&lab, &["dc1", "dc2"]).expect("cluster starts in the lab");
    assert!(PgCluster::start_in(&lab, &["dc1", "nowhere"]).is_err());
    assert!(PgCluster::start_in(&lab, &["dc1", "dc1"]).is_err());

    lab.kill_all("dc2").expect("kill_all dc2");
    assert!(cluster.sql(1, "SELECT 1").is_err(), "the replica survived its datacenter");
    assert_eq!(cluster.sql(0, "SELECT 1").unwrap(), "1");
    cluster.start_instance(1).expect("the replica restarts");
    cluster.wait_streaming(1, Duration::from_secs(30)).expect("the replica streams again");
    let postmaster = cluster.postmaster_pid(1).unwrap().expect("the replica runs");
    assert!(pids_in(&lab, "dc2").contains(&(postmaster as u32)), "the replica restarted outside dc2");

    cluster.stop(0).expect("the primary stops");
    assert!(cluster.sql(0, "SELECT 1").is_err());
    cluster.start_instance(0).expect("the primary starts again");
    assert!(!cluster.is_in_recovery(0).unwrap());
    cluster.kill_postmaster(0).expect("kill the primary");
    cluster.start_instance(0).expect("the primary recovers from the crash");
    cluster.wait_streaming(1, Duration::from_secs(30)).expect("the replica streams again");

    let root = cluster.root().to_path_buf();
    drop(cluster);
    assert!(pids_in(&lab, "dc1").is_empty(), "dc1 still runs {:?}", pids_in(&lab, "dc1"));
    assert!(pids_in(&lab, "dc2").is_empty(), "dc2 still runs {:?}", pids_in(&lab, "dc2"));
    assert!(!root.exists());
}

/// Small conveniences to build a command in an expression.
trait CommandExt {
    fn tap_arg(self, arg: &str) -> Self;
    fn tap_args<const N: usize>(self, args: [&str; N]) -> Self;
}

impl CommandExt for Command {
    fn tap_arg(mut self, arg: &str) -> Self {
        self.arg(arg);
        self
    }

    fn tap_args<const N: usize>(mut self, args: [&str; N]) -> Self {
        self.args(args);
        self
    }
}
