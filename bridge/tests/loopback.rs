//! The bridges on one host, over TCP on loopback, between two coordinators of this process:
//! what the two-namespace test does not cover (MPMC and partitioned sources, the flag set by
//! a producer, the configuration file). Needs no root.

use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, FrameFlags};
use shmring_bridge::config::Config;
use shmring_bridge::{Endpoints, ExportOptions, ImportOptions, Stop};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

struct Host {
    coordinator: Option<Coordinator>,
    socket: PathBuf,
    dir: PathBuf,
}

impl Host {
    fn new(tag: &str) -> Host {
        let ns = format!("bl{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("c.sock");
        let coordinator = Coordinator::start(CoordinatorConfig::new(&ns).socket(&socket)).unwrap();
        Host {
            coordinator: Some(coordinator),
            socket,
            dir,
        }
    }

    fn client(&self) -> Client {
        Client::connect(Some(&self.socket)).unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(c) = self.coordinator.take() {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free TCP port on loopback.
fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fails the test (instead of hanging it) if `rx` gets nothing within `secs`.
fn within<T>(rx: &mpsc::Receiver<T>, secs: u64, what: &str) -> T {
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what}: nothing after {secs} s"))
}

fn endpoints(listen: bool, port: u16) -> Endpoints {
    let e = vec![format!("tcp/127.0.0.1:{port}")];
    if listen {
        Endpoints {
            listen: e,
            connect: vec![],
        }
    } else {
        Endpoints {
            connect: e,
            listen: vec![],
        }
    }
}

/// Runs an export of `opts` from `a` and an import of its key into `channel` on `b`, each in a
/// thread; returns their results' receivers.
fn bridge(
    a: &Host,
    b: &Host,
    opts: ExportOptions,
    channel: &str,
    stop: &Stop,
) -> (
    mpsc::Receiver<shmring_bridge::ExportStats>,
    mpsc::Receiver<shmring_bridge::ImportStats>,
) {
    let port = port();
    let (etx, erx) = mpsc::channel();
    let (itx, irx) = mpsc::channel();
    let (sa, sb) = (a.socket.clone(), b.socket.clone());
    let mut iopts = ImportOptions::new(&opts.key, channel);
    iopts.create = Some(ChannelConfig::spsc());
    let (s1, s2) = (stop.clone(), stop.clone());
    std::thread::spawn(move || {
        let session = shmring_bridge::session::open(&endpoints(true, port)).unwrap();
        let client = Client::connect(Some(&sa)).unwrap();
        etx.send(shmring_bridge::export(&client, &session, &opts, &s1).unwrap())
            .unwrap();
    });
    std::thread::spawn(move || {
        let session = shmring_bridge::session::open(&endpoints(false, port)).unwrap();
        let client = Client::connect(Some(&sb)).unwrap();
        itx.send(shmring_bridge::import(&client, &session, &iopts, &s2).unwrap())
            .unwrap();
    });
    (erx, irx)
}

#[test]
fn an_mpmc_channel_crosses_in_order_with_a_producers_flag_and_its_end() {
    let (a, b) = (Host::new("mpmc-a"), Host::new("mpmc-b"));
    let ca = a.client();
    ca.create("m", &ChannelConfig::mpmc()).unwrap();
    let mut tx = ca.producer("m").unwrap();
    let stop = Stop::new();
    let (erx, irx) = bridge(&a, &b, ExportOptions::new("m", "loop/mpmc"), "m", &stop);
    let n = 5000u32;
    let producer = std::thread::spawn(move || {
        for i in 0..n {
            let mut c = tx.claim(4).unwrap();
            c.copy_from_slice(&i.to_le_bytes());
            let flags = if i == 10 {
                FrameFlags::REDELIVERED
            } else {
                FrameFlags::NONE
            };
            c.commit_flagged(4, flags).unwrap();
        }
        tx.finish().unwrap();
    });
    let cb = b.client();
    let mut rx = loop {
        match cb.consumer("m") {
            Ok(c) => break c,
            Err(shmring::Error::NotFound(_)) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    };
    let mut buf = [0u8; 64];
    for i in 0..n {
        let r = rx.recv_timeout(&mut buf, Duration::from_secs(30)).unwrap();
        assert_eq!(u32::from_le_bytes(buf[..4].try_into().unwrap()), i);
        assert_eq!(r.flags.is_redelivered(), i == 10, "frame {i}");
    }
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_secs(30)),
        Err(shmring::Error::Closed(_))
    ));
    producer.join().unwrap();
    let e = within(&erx, 30, "the exporter");
    let i = within(&irx, 30, "the importer");
    assert!(e.ended && i.ended, "{e:?} {i:?}");
    assert_eq!((e.frames, i.frames, i.redelivered), (n as u64, n as u64, 1));
}

#[test]
fn a_group_member_exports_a_partitioned_channel_keeping_each_keys_order() {
    let (a, b) = (Host::new("grp-a"), Host::new("grp-b"));
    let ca = a.client();
    let mut config = ChannelConfig::spsc();
    config.partitions = 3;
    ca.create("p", &config).unwrap();
    let mut tx = ca.keyed_producer("p").unwrap();
    let stop = Stop::new();
    let mut opts = ExportOptions::new("p", "loop/grp");
    opts.group = Some("bridges".into());
    let (erx, irx) = bridge(&a, &b, opts, "keyed", &stop);
    let n = 3000u64;
    let producer = std::thread::spawn(move || {
        for i in 0..n {
            let key = [(i % 10) as u8];
            let mut f = [0u8; 9];
            f[0] = key[0];
            f[1..].copy_from_slice(&(i / 10).to_le_bytes());
            tx.send_keyed(&key, &f).unwrap();
        }
        tx.finish().unwrap();
    });
    let cb = b.client();
    let mut rx = loop {
        match cb.consumer("keyed") {
            Ok(c) => break c,
            Err(shmring::Error::NotFound(_)) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    };
    let mut next = [0u64; 10];
    let mut buf = [0u8; 64];
    for _ in 0..n {
        let r = rx.recv_timeout(&mut buf, Duration::from_secs(30)).unwrap();
        assert_eq!(r.len, 9);
        let k = buf[0] as usize;
        let seq = u64::from_le_bytes(buf[1..9].try_into().unwrap());
        assert_eq!(seq, next[k], "key {k} out of order");
        next[k] += 1;
    }
    producer.join().unwrap();
    assert!(matches!(
        rx.recv_timeout(&mut buf, Duration::from_secs(30)),
        Err(shmring::Error::Closed(_))
    ));
    assert!(within(&erx, 30, "the exporter").ended);
    assert!(within(&irx, 30, "the importer").ended);
}

#[test]
fn a_configuration_file_runs_an_export_and_an_import() {
    let (a, b) = (Host::new("cfg-a"), Host::new("cfg-b"));
    let port = port();
    let write = |name: &str, text: String| {
        let p = a.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let fa = write(
        "a.json",
        format!(
            r#"{{ "socket": {:?}, "listen": ["tcp/127.0.0.1:{port}"],
                 "export": [ {{ "channel": "c", "key": "loop/cfg", "window_frames": 64 }} ] }}"#,
            a.socket
        ),
    );
    let fb = write(
        "b.json",
        format!(
            r#"{{ "socket": {:?}, "connect": ["tcp/127.0.0.1:{port}"],
                 "import": [ {{ "key": "loop/cfg", "channel": "c",
                               "create": {{ "capacity": "64K", "max_frame_size": "1K" }} }} ] }}"#,
            b.socket
        ),
    );
    let ca = a.client();
    ca.create("c", &ChannelConfig::spsc()).unwrap();
    let mut tx = ca.producer("c").unwrap();
    let stop = Stop::new();
    let (ra, rb) = (mpsc::channel(), mpsc::channel());
    for (file, done) in [(fa, ra.0), (fb, rb.0)] {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = Config::load(&file).unwrap();
            done.send(c.run(&stop).map_err(|e| e.to_string())).unwrap();
        });
    }
    for i in 0..1000u32 {
        tx.send(&i.to_le_bytes()).unwrap();
    }
    tx.finish().unwrap();
    let cb = b.client();
    let mut rx = loop {
        match cb.consumer("c") {
            Ok(c) => break c,
            Err(shmring::Error::NotFound(_)) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    };
    let mut buf = [0u8; 1024];
    for i in 0..1000u32 {
        rx.recv_timeout(&mut buf, Duration::from_secs(30)).unwrap();
        assert_eq!(u32::from_le_bytes(buf[..4].try_into().unwrap()), i);
    }
    within(&ra.1, 30, "the exporting file").unwrap();
    within(&rb.1, 30, "the importing file").unwrap();
    // A file with a mistake says where.
    let bad = write("bad.json", r#"{ "export": [ { "channel": "c" } ] }"#.into());
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("key"), "{e}");
}
