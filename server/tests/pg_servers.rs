//! Several servers on one PostgreSQL database and one data directory
//! (issue 17), in process: each server is the real event loop on a thread
//! of its own, with its own database worker, sharing a throw-away cluster
//! (`sealdrop_testkit::pg`) and a temporary data directory. Where
//! PostgreSQL is not installed each test prints "skipped: PostgreSQL not
//! found (install postgresql)" and passes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use sealdrop_protocol::cksum::cksum;
use sealdrop_protocol::message::Response;
use sealdrop_server::config::Settings;
use sealdrop_server::files;
use sealdrop_server::inprocess::{self, Running};
use sealdrop_server::pg::DatabaseUrl;
use sealdrop_server::store::{DiskStore, StoreConfig};
use sealdrop_testkit::pg::PgCluster;
use sealdrop_testkit::util::scrape_metric;
use sealdrop_testkit::Client;

fn shared() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::start).as_ref()
}

/// A fresh database in the shared cluster: its URL.
fn fresh_db(cluster: &PgCluster) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    cluster.create_database(&format!("s{}", N.fetch_add(1, Ordering::Relaxed)))
}

fn settings(url: &str, dir: &Path, id: &str) -> Settings {
    let mut s = Settings::with_defaults(SocketAddr::from(([127, 0, 0, 1], 0)), dir);
    s.store.database = DatabaseUrl::parse(url).unwrap();
    s.store.server_id = Some(id.to_owned());
    s
}

/// `n` servers on one database and one data directory.
fn servers(url: &str, dir: &Path, n: usize) -> Vec<Running> {
    (0..n)
        .map(|i| inprocess::spawn(settings(url, dir, &format!("srv{i}"))).unwrap())
        .collect()
}

/// A client that registered and exchanged keys through `addr`.
fn keyed(name: &str, addr: SocketAddr) -> Client {
    let mut client = Client::new(name);
    let mut c = client.connect(addr);
    client.register(&mut c);
    client.exchange_key(&mut c);
    client
}

fn verified_rows(cluster: &PgCluster, url: &str) -> u64 {
    let db = url.rsplit('/').next().unwrap();
    cluster
        .psql(db, "SELECT count(*) FROM files WHERE Verified = 1")
        .trim()
        .parse()
        .unwrap()
}

fn query(cluster: &PgCluster, url: &str, sql: &str) -> String {
    let db = url.rsplit('/').next().unwrap();
    cluster.psql(db, sql).trim().to_owned()
}

#[test]
fn a_client_registers_on_one_server_and_uploads_through_another() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let dir = tempfile::tempdir().unwrap();
    let s = servers(&url, dir.path(), 2);

    let mut alice = keyed("alice", s[0].addr());

    // The other server knows her: 1027 gives 2105, and the upload lands.
    let mut c = alice.connect(s[1].addr());
    assert!(matches!(
        alice.reconnect(&mut c),
        Response::ReconnectAccepted { .. }
    ));
    let data = b"stored through the second server".repeat(100);
    alice.upload_verified(&mut c, "notes.txt", &data);
    let path = files::final_path(dir.path(), &alice.id, "notes.txt");
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(verified_rows(cluster, &url), 1);
    assert_eq!(
        query(
            cluster,
            &url,
            "SELECT Size || ' ' || Cksum FROM file_meta WHERE FileName = 'notes.txt'"
        ),
        format!("{} {}", data.len(), cksum(&data))
    );

    // And the first server sees the name as taken.
    let mut bob = Client::new("alice");
    let mut c = bob.connect(s[0].addr());
    assert!(matches!(
        bob.register_reply(&mut c),
        Response::RegistrationFailed
    ));
}

#[test]
fn a_name_registered_on_two_servers_at_once_goes_to_exactly_one() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let dir = tempfile::tempdir().unwrap();
    let s = servers(&url, dir.path(), 2);
    let addrs: Vec<SocketAddr> = s.iter().map(Running::addr).collect();
    const ROUNDS: usize = 12;
    for round in 0..ROUNDS {
        let name = format!("race{round}");
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = addrs
            .iter()
            .map(|&addr| {
                let (name, barrier) = (name.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut client = Client::new(&name);
                    let mut c = client.connect(addr);
                    barrier.wait();
                    // Losing shows as a 2101 (the other server's keyed
                    // record was read), a 2107 (both decided, and the
                    // database's unique name refused this one at its
                    // commit), or a refused 1026 (this one's unkeyed
                    // record was replaced by the other, as §3 allows).
                    client.try_register(&mut c).is_ok() && client.try_exchange_key(&mut c).is_ok()
                })
            })
            .collect();
        let won: usize = threads
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(won, 1, "round {round}: {won} registrations of {name:?} won");
        // The name is held by one keyed client; a retry is refused with
        // 2101 on either server.
        assert_eq!(
            query(
                cluster,
                &url,
                &format!(
                    "SELECT count(*) FROM clients WHERE Name = '{name}' AND PublicKey IS NOT NULL"
                )
            ),
            "1"
        );
        for &addr in &addrs {
            let mut late = Client::new(&name);
            let mut c = late.connect(addr);
            assert!(matches!(
                late.register_reply(&mut c),
                Response::RegistrationFailed
            ));
        }
    }
    assert_eq!(
        query(cluster, &url, "SELECT count(*) FROM clients"),
        ROUNDS.to_string()
    );
}

#[test]
fn two_hundred_concurrent_clients_spread_over_three_servers_are_all_verified() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let dir = tempfile::tempdir().unwrap();
    let s = servers(&url, dir.path(), 3);
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(s.iter().map(Running::addr).collect());
    const CLIENTS: usize = 200;
    // All at once: every client holds its connections while the others
    // register and upload.
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addrs, barrier) = (addrs.clone(), barrier.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let mut client = Client::new(&format!("client{i:03}"));
                    let mut first = client.connect(addrs[i % addrs.len()]);
                    let mut second = client.connect(addrs[(i + 1) % addrs.len()]);
                    barrier.wait();
                    // Register on one server, upload through the next.
                    client.register(&mut first);
                    client.exchange_key(&mut first);
                    client.reconnect(&mut second);
                    let data = format!("file of client {i}\n").repeat(i + 1);
                    client.upload_verified(&mut second, "data.txt", data.as_bytes());
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(verified_rows(cluster, &url), CLIENTS as u64);
    assert_eq!(
        query(cluster, &url, "SELECT count(*) FROM clients"),
        CLIENTS.to_string()
    );
    // No temporary file is left anywhere.
    let mut parts = 0;
    for dir in std::fs::read_dir(files::files_root(dir.path())).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            parts += usize::from(files::is_part_name(
                &f.unwrap().file_name().to_string_lossy(),
            ));
        }
    }
    assert_eq!(parts, 0);
}

#[test]
fn one_client_uploading_one_name_through_two_servers_ends_with_one_file_its_record_describes() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let dir = tempfile::tempdir().unwrap();
    let s = servers(&url, dir.path(), 2);
    let alice = keyed("alice", s[0].addr());
    let payloads: Vec<Vec<u8>> = vec![vec![b'a'; 300_000], vec![b'b'; 200_000]];
    for round in 0..8 {
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = s
            .iter()
            .zip(payloads.clone())
            .map(|(server, data)| {
                let (addr, barrier) = (server.addr(), barrier.clone());
                let mut me = alice.clone();
                std::thread::spawn(move || {
                    let mut c = me.connect(addr);
                    me.reconnect(&mut c);
                    me.send_file(&mut c, "same.bin", &data);
                    let r = c.recv();
                    me.check_received(&r, "same.bin", data.len() as u64, cksum(&data));
                    barrier.wait();
                    me.verify(&mut c, "same.bin");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stored = std::fs::read(files::final_path(dir.path(), &alice.id, "same.bin")).unwrap();
        assert!(
            payloads.contains(&stored),
            "round {round}: the stored file is neither upload ({} bytes)",
            stored.len()
        );
        assert_eq!(verified_rows(cluster, &url), 1, "round {round}");
        // The database decided: its record describes the file on disk.
        assert_eq!(
            query(
                cluster,
                &url,
                "SELECT Size || ' ' || Cksum FROM file_meta WHERE FileName = 'same.bin'"
            ),
            format!("{} {}", stored.len(), cksum(&stored)),
            "round {round}"
        );
    }
}

#[test]
fn a_starting_server_leaves_another_servers_upload_in_flight_alone() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let dir = tempfile::tempdir().unwrap();
    let first = inprocess::spawn(settings(&url, dir.path(), "first")).unwrap();
    let mut alice = keyed("alice", first.addr());
    let mut c = alice.connect(first.addr());
    alice.reconnect(&mut c);
    // Half an upload: its temporary file carries the first server's id.
    let data = vec![7u8; 1 << 20];
    let frame = alice.file_frame("big.bin", &data);
    c.send(&frame[..frame.len() / 2]);
    let client_dir = files::client_dir(dir.path(), &alice.id);
    sealdrop_testkit::util::wait_until(Duration::from_secs(20), || {
        std::fs::read_dir(&client_dir).is_ok_and(|d| {
            d.flatten()
                .any(|f| files::part_owner(&f.file_name().to_string_lossy()) == Some(Some("first")))
        })
    });
    // A second server starts on the same data directory (its clean-up
    // runs now) and serves alongside.
    let second = inprocess::spawn(settings(&url, dir.path(), "second")).unwrap();
    c.send(&frame[frame.len() / 2..]);
    let r = c.recv();
    alice.check_received(&r, "big.bin", data.len() as u64, cksum(&data));
    alice.verify(&mut c, "big.bin");
    assert_eq!(
        std::fs::read(files::final_path(dir.path(), &alice.id, "big.bin")).unwrap(),
        data
    );
    drop(second);
}

#[test]
fn every_servers_metrics_count_the_files_all_of_them_stored() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let dir = tempfile::tempdir().unwrap();
    let s: Vec<Running> = (0..2)
        .map(|i| {
            let mut settings = settings(&url, dir.path(), &format!("m{i}"));
            settings.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            settings.store.measure_every = Duration::from_millis(200);
            inprocess::spawn(settings).unwrap()
        })
        .collect();
    let mut alice = keyed("alice", s[0].addr());
    let mut c = alice.connect(s[0].addr());
    alice.reconnect(&mut c);
    alice.upload_verified(&mut c, "one.bin", &[1u8; 3000]);
    let mut c = alice.connect(s[1].addr());
    alice.reconnect(&mut c);
    alice.upload_verified(&mut c, "two.bin", &[2u8; 2000]);
    for server in &s {
        let addr = server.metrics_addr().unwrap();
        let files = || scrape_metric(addr, "sealdrop_files_size_bytes");
        assert!(
            sealdrop_testkit::util::wait_until(Duration::from_secs(20), || files() == 5000.0),
            "{} counts {} bytes",
            addr,
            files()
        );
        assert!(scrape_metric(addr, "sealdrop_database_size_bytes") > 0.0);
        // Both report the same store, so a dashboard counts it once.
        let store = sealdrop_server::metrics::store_label(
            &sealdrop_server::pg::DatabaseUrl::parse(&url).unwrap(),
            None,
        );
        let labelled = format!("sealdrop_files_size_bytes{{store=\"{store}\"}}");
        assert_eq!(scrape_metric(addr, &labelled), 5000.0, "{labelled}");
    }
}

#[test]
fn sqlite_and_postgresql_servers_never_share_a_data_directory() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let dir = tempfile::tempdir().unwrap();
    let pg = inprocess::spawn(settings(&url, dir.path(), "pg1")).unwrap();
    let err = DiskStore::open(dir.path(), StoreConfig::default()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(pg);
    let sqlite = DiskStore::open(dir.path(), StoreConfig::default()).unwrap();
    let config = settings(&url, dir.path(), "pg2").store;
    let err = DiskStore::open(dir.path(), config).unwrap_err();
    assert!(err.to_string().contains("on SQLite"), "{err}");
    drop(sqlite);
}

#[test]
fn the_records_survive_every_server_restarting() {
    let Some(cluster) = shared() else { return };
    let url = fresh_db(cluster);
    let dir = tempfile::tempdir().unwrap();
    let s = servers(&url, dir.path(), 2);
    let mut alice = keyed("alice", s[0].addr());
    let mut c = alice.connect(s[0].addr());
    alice.reconnect(&mut c);
    alice.upload_verified(&mut c, "a.txt", b"first");
    drop(c);
    for server in s {
        server.stop().unwrap();
    }
    let s = servers(&url, dir.path(), 1);
    let mut c = alice.connect(s[0].addr());
    assert!(matches!(
        alice.reconnect(&mut c),
        Response::ReconnectAccepted { .. }
    ));
    alice.upload_verified(&mut c, "a.txt", b"second");
    assert_eq!(
        std::fs::read(files::final_path(dir.path(), &alice.id, "a.txt")).unwrap(),
        b"second"
    );
    assert_eq!(verified_rows(cluster, &url), 1);
}
