//! Protocol fuzz: raw sockets send the coordinator random bytes, truncated and oversized frames,
//! and well-formed requests with wild fields, some connections stalling half-way through a
//! frame; between them a well-behaved client must be served every time, and the coordinator
//! must stop cleanly at the end (a panic on its thread would have failed the client first).

#![cfg(not(loom))]

use shmring::protocol::{self, Request};
use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, Kind, Overflow, Role};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn name(&mut self) -> String {
        match self.below(5) {
            0 => String::new(),
            1 => "../../etc/passwd".into(),
            2 => {
                let n = 65 + self.below(100) as usize;
                "x".repeat(n)
            }
            3 => {
                let n = 1 + self.below(20) as usize;
                String::from_utf8_lossy(&self.bytes(n)).into_owned()
            }
            _ => format!("fz{}", self.below(8)),
        }
    }
    fn wild(&mut self) -> u64 {
        match self.below(4) {
            0 => 0,
            1 => u64::MAX >> self.below(64),
            2 => self.below(1 << 20),
            _ => self.next(),
        }
    }
}

fn random_request(r: &mut Rng) -> Request {
    let role = if r.below(2) == 0 {
        Role::Producer
    } else {
        Role::Consumer
    };
    match r.below(11) {
        0 => Request::Create {
            name: r.name(),
            config: ChannelConfig {
                kind: [Kind::Spsc, Kind::Mpmc, Kind::Broadcast][r.below(3) as usize],
                capacity: r.wild(),
                max_frame_size: r.wild() as u32,
                max_producers: r.wild() as u32,
                max_consumers: r.wild() as u32,
                mode: r.wild() as u32,
                overflow: if r.below(2) == 0 {
                    Overflow::Block
                } else {
                    Overflow::DropOldest
                },
                history: r.wild() as u32,
                max_message_size: r.wild(),
                partitions: r.below(6) as u32,
                checkpoint_size: r.wild() as u32,
            },
        },
        1 => Request::Open {
            name: r.name(),
            role,
        },
        2 => Request::Close {
            name: r.name(),
            generation: r.wild(),
            role,
            index: r.wild() as u32,
            owner: r.wild(),
        },
        3 => Request::Delete { name: r.name() },
        4 => Request::List,
        // Without the descriptor it must come with.
        5 => Request::Adopt {
            name: r.name(),
            generation: r.wild(),
        },
        7 => Request::OpenPartition {
            channel: r.name(),
            partition: r.wild() as u32,
            role,
            member: (r.below(2) == 0).then(|| r.wild()),
        },
        8 => Request::JoinGroup {
            channel: r.name(),
            group: r.name(),
        },
        9 => Request::GroupSync {
            channel: r.name(),
            member: r.wild(),
        },
        10 => Request::LeaveGroup {
            channel: r.name(),
            member: r.wild(),
        },
        _ => Request::Stats { name: r.name() },
    }
}

#[test]
fn the_coordinator_survives_hostile_clients() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(240)).is_err() {
            eprintln!("watchdog: protocol fuzz still running after 240 s: aborting");
            std::process::abort();
        }
    });
    let ns = format!("fuzz{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("c.sock");
    let coord = Coordinator::start(
        CoordinatorConfig::new(&ns)
            .socket(&sock)
            .max_channel_bytes(64 << 20),
    )
    .unwrap();
    let good = Client::connect(Some(&sock)).unwrap();
    good.create(
        "good",
        &ChannelConfig::spsc().capacity(4096).max_frame_size(64),
    )
    .unwrap();
    let mut gtx = good.producer("good").unwrap();
    let mut grx = good.consumer("good").unwrap();
    let seed = 0xf022_u64 ^ u64::from(std::process::id());
    println!("seed {seed:#x}");
    let mut r = Rng(seed);
    let mut stalled: Vec<UnixStream> = Vec::new();
    let hello = protocol::client_hello(protocol::PROTOCOL_VERSION);
    for i in 0..20_000u32 {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut msg = Vec::new();
        match r.below(11) {
            0 => {
                let n = r.below(300) as usize;
                msg = r.bytes(n);
            }
            1 => {
                msg.extend_from_slice(&hello);
                let n = r.below(300) as usize;
                msg.extend(r.bytes(n));
            }
            2 => {
                msg.extend_from_slice(&hello);
                let req = protocol::encode(&random_request(&mut r));
                let cut = r.below(req.len() as u64) as usize;
                msg.extend_from_slice(&req[..cut]);
            }
            3 => {
                msg.extend_from_slice(&hello);
                msg.extend_from_slice(
                    &(r.below(u64::from(u32::MAX)) as u32 | 1 << 20).to_le_bytes(),
                );
                msg.extend(r.bytes(64));
            }
            4 => {
                // A plausible frame length with garbage inside.
                msg.extend_from_slice(&hello);
                let n = r.below(100) as usize;
                let body = r.bytes(n);
                msg.extend_from_slice(&protocol::frame(&body));
            }
            _ => {
                msg.extend_from_slice(&hello);
                for _ in 0..1 + r.below(4) {
                    msg.extend_from_slice(&protocol::encode(&random_request(&mut r)));
                }
            }
        }
        // The coordinator may close the connection as soon as it has seen enough.
        let _ = s.write_all(&msg);
        if r.below(10) == 0 && stalled.len() < 64 {
            stalled.push(s); // left open, possibly mid-frame
        } else if r.below(2) == 0 {
            // Read whatever comes back, until the coordinator closes or goes quiet.
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
        if i % 25 == 0 {
            // The well-behaved client is served throughout.
            assert!(good.list().unwrap().iter().any(|c| c.name == "good"));
            gtx.send_timeout(&i.to_le_bytes(), Duration::from_secs(5))
                .unwrap();
            assert_eq!(
                &*grx.read_timeout(Duration::from_secs(5)).unwrap(),
                &i.to_le_bytes()
            );
        }
        if stalled.len() >= 64 {
            stalled.clear();
        }
    }
    drop(stalled);
    let s = good.stats("good").unwrap();
    assert_eq!(s.frames_in, s.frames_out);
    drop((gtx, grx, good));
    coord.stop();
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("shmring.{ns}@")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&dir);
    // What the coordinator keeps of the namespace in the user's runtime directory.
    for ext in ["lock", "channels"] {
        let _ = std::fs::remove_file(shmring::default_socket_path(&ns).with_extension(ext));
    }
    tx.send(()).unwrap();
}
