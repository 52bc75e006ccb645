//! End of stream through a coordinator: a producer process that is SIGKILLed does not finish
//! the stream, and the consumer sees it leave (`Consumer::producers`) once the coordinator has
//! repaired it; a finish ends the stream; a producer admitted afterwards continues it. Every
//! test runs under a watchdog.

use shmring::{ChannelConfig, Client, Coordinator, CoordinatorConfig, Error, Overflow};
use shmring_tests::{Watchdog, serial};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// A scratch directory, a namespace and a socket, removed (with the coordinator's runtime
/// files) when dropped.
struct Place {
    dir: PathBuf,
    ns: String,
    sock: PathBuf,
}

impl Place {
    fn new() -> Place {
        let ns = format!("eos{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("shmring-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("coordinator.sock");
        Place { dir, ns, sock }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        shmring_tests::remove_runtime_files(&self.ns);
    }
}

#[test]
fn a_killed_producer_is_not_a_finish_and_leaves_the_count() {
    let _serial = serial();
    let dog = Watchdog::new("end of stream", Duration::from_secs(120));
    let place = Place::new();
    let coord = Coordinator::start(CoordinatorConfig::new(&place.ns).socket(&place.sock)).unwrap();
    let client = Client::connect(Some(&place.sock)).unwrap();
    let kinds = [
        (
            "spsc",
            ChannelConfig::spsc().capacity(4096).max_frame_size(64),
        ),
        (
            "mpmc",
            ChannelConfig::mpmc().capacity(4096).max_frame_size(64),
        ),
        (
            "bcast",
            ChannelConfig::broadcast()
                .capacity(4096)
                .max_frame_size(64)
                .overflow(Overflow::DropOldest),
        ),
    ];
    for (name, cfg) in kinds {
        client.create(name, &cfg).unwrap();
        let mut rx = client.consumer(name).unwrap();
        assert_eq!(rx.producers(), 0, "{name}");

        // A producer process holding a claim, SIGKILLed.
        let mut holder = dog.spawn(
            Command::new(env!("CARGO_BIN_EXE_shmring-peer"))
                .arg("hold-claim")
                .arg(&place.sock)
                .arg(name),
        );
        holder.expect_line("held");
        assert_eq!(rx.producers(), 1, "{name}");
        holder
            .kill()
            .expect("the holder was still holding its claim");
        // The coordinator repairs it and frees its entry (the watchdog ends a wait that never
        // ends).
        while rx.producers() != 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A crash is not a finish: the consumer is not told Closed; it knows it is alone.
        assert!(
            matches!(rx.try_read(), Err(Error::WouldBlock(_))),
            "{name}: {:?}",
            rx.try_read().map(|f| f.len())
        );
        assert!(matches!(
            rx.read_timeout(Duration::from_millis(30)),
            Err(Error::TimedOut(_))
        ));

        // A producer admitted now sends, and a closed producer leaves the count.
        let tx = client.producer(name).unwrap();
        assert_eq!(rx.producers(), 1, "{name}");
        drop(tx);
        assert_eq!(rx.producers(), 0, "{name}");

        // A finish ends the stream, after what was sent.
        let mut tx = client.producer(name).unwrap();
        tx.send(b"last").unwrap();
        tx.finish().unwrap();
        assert_eq!(rx.producers(), 0, "{name}");
        assert_eq!(&*rx.read_timeout(T).unwrap(), b"last", "{name}");
        match rx.read_timeout(T) {
            Err(Error::Closed(m)) => assert!(m.contains("finish"), "{name}: {m}"),
            other => panic!("{name}: {:?}", other.map(|f| f.len())),
        }

        // A producer the coordinator admits afterwards continues the stream.
        let mut tx = client.producer(name).unwrap();
        assert!(matches!(rx.try_read(), Err(Error::WouldBlock(_))), "{name}");
        tx.send(b"again").unwrap();
        assert_eq!(&*rx.read_timeout(T).unwrap(), b"again", "{name}");
        drop((tx, rx));
        client.delete(name).unwrap();
    }
    drop(client);
    coord.stop();
    dog.check();
}
