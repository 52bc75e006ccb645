//! The transports the ping-pong compares, and both processes' ends of each: the parent times
//! round trips (`Ends::ping`), the peer echoes (`Ends::echo`); the shmring channels also carry
//! the throughput runs. Every end is set up once and kept for the rounds that follow.

use super::shared::{Control, futex_wake, spin_until, wait_for};
use hdrhistogram::Histogram;
use shmring::{ChannelConfig, Client, Consumer, Kind, Overflow, Producer, WaitStrategy};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Longest any one operation of the benchmark may wait for the other process before the run is
/// declared broken (the peer died or hung).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What a ping-pong round trip goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Transport {
    /// One cache line bounced with atomics, both sides spinning: the physical limit.
    #[value(name = "atomic-floor")]
    AtomicFloor,
    /// Two SPSC channels, both sides busy-spinning.
    #[value(name = "shmring-spsc-spin")]
    ShmringSpscSpin,
    /// Two MPMC channels, both sides busy-spinning.
    #[value(name = "shmring-mpmc-spin")]
    ShmringMpmcSpin,
    /// The same over MPMC channels that also carry messages up to 1 MiB (a message pool
    /// beside the slots; frames of at least 24 bytes): what the pool costs small frames.
    #[value(name = "shmring-mpmc-pool-spin")]
    ShmringMpmcPoolSpin,
    /// Two broadcast channels (overflow `block`), one subscriber each, both sides
    /// busy-spinning.
    #[value(name = "shmring-broadcast-spin")]
    ShmringBroadcastSpin,
    /// Two futex words; a waiting side spins 20 µs, then sleeps until woken: with the pause
    /// before each round trip, one wake-up per round trip, the limit for a sleeping consumer.
    #[value(name = "futex-floor")]
    FutexFloor,
    /// Two SPSC channels, both sides parking on the futex when idle.
    #[value(name = "shmring-spsc-park")]
    ShmringSpscPark,
    /// Two SPSC channels, both sides waiting in `poll` on the consumer's descriptor
    /// (`Consumer::fd`) as an event loop does.
    #[value(name = "shmring-spsc-fd")]
    ShmringSpscFd,
    /// A Unix stream socket.
    #[value(name = "uds")]
    Uds,
    /// A pair of pipes (FIFOs).
    #[value(name = "pipe")]
    Pipe,
    /// TCP over loopback, Nagle off.
    #[value(name = "tcp")]
    Tcp,
}

impl Transport {
    /// Every transport, in the order they are run and shown.
    pub const ALL: [Transport; 11] = [
        Transport::AtomicFloor,
        Transport::ShmringSpscSpin,
        Transport::ShmringMpmcSpin,
        Transport::ShmringMpmcPoolSpin,
        Transport::ShmringBroadcastSpin,
        Transport::FutexFloor,
        Transport::ShmringSpscPark,
        Transport::ShmringSpscFd,
        Transport::Uds,
        Transport::Pipe,
        Transport::Tcp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transport::AtomicFloor => "atomic-floor",
            Transport::ShmringSpscSpin => "shmring-spsc-spin",
            Transport::ShmringMpmcSpin => "shmring-mpmc-spin",
            Transport::ShmringMpmcPoolSpin => "shmring-mpmc-pool-spin",
            Transport::ShmringBroadcastSpin => "shmring-broadcast-spin",
            Transport::FutexFloor => "futex-floor",
            Transport::ShmringSpscPark => "shmring-spsc-park",
            Transport::ShmringSpscFd => "shmring-spsc-fd",
            Transport::Uds => "uds",
            Transport::Pipe => "pipe",
            Transport::Tcp => "tcp",
        }
    }

    pub fn id(self) -> u64 {
        Transport::ALL.iter().position(|&t| t == self).unwrap() as u64
    }

    pub fn from_id(id: u64) -> Option<Transport> {
        Transport::ALL.get(id as usize).copied()
    }

    /// The waiting side sleeps in the kernel: the parent pauses between round trips so that it
    /// really is asleep when the frame comes (see `Plan::think`).
    pub fn sleeps(self) -> bool {
        matches!(
            self,
            Transport::FutexFloor | Transport::ShmringSpscPark | Transport::ShmringSpscFd
        )
    }

    /// The shmring channel kind and wait strategy, for the shmring transports.
    pub fn shmring(self) -> Option<(Kind, WaitStrategy)> {
        match self {
            Transport::ShmringSpscSpin => Some((Kind::Spsc, WaitStrategy::Spin)),
            Transport::ShmringSpscPark => Some((Kind::Spsc, WaitStrategy::Park)),
            Transport::ShmringMpmcSpin | Transport::ShmringMpmcPoolSpin => {
                Some((Kind::Mpmc, WaitStrategy::Spin))
            }
            Transport::ShmringBroadcastSpin => Some((Kind::Broadcast, WaitStrategy::Spin)),
            _ => None,
        }
    }
}

impl Transport {
    /// Whether its channels have a message pool (`ShmringMpmcPoolSpin`).
    pub fn pooled(self) -> bool {
        self == Transport::ShmringMpmcPoolSpin
    }
}

pub type Res<T> = Result<T, String>;

fn err(what: &str) -> impl Fn(shmring::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The channel names for `kind` and `payload`: the parent sends on ping and receives on pong.
fn channel(kind: Kind, payload: usize, dir: &str) -> String {
    format!("{kind}-{payload}-{dir}")
}

/// The channel of `channel`, or (`pooled`) its twin with a message pool.
fn channel_of(kind: Kind, payload: usize, dir: &str, pooled: bool) -> String {
    let name = channel(kind, payload, dir);
    if pooled { name + "-pool" } else { name }
}

/// The name of the ping-pong channel of `kind` for `payload`-byte frames, `dir` "ping" (the
/// parent's sends) or "pong" (the echoes).
pub fn channel_name(kind: Kind, payload: usize, dir: &str) -> String {
    channel(kind, payload, dir)
}

/// The slotted (MPMC, broadcast) channel of `kind` for frames of `payload` bytes: slots for
/// about 1 MiB, at most 4096 of them, one producer, one consumer.
fn slotted(kind: Kind, payload: usize) -> ChannelConfig {
    let frame = payload as u64;
    let stride = (frame + 16).div_ceil(64) * 64;
    let slots = ((1u64 << 20) / stride).clamp(2, 4096);
    ChannelConfig::new(kind)
        .capacity(slots * frame)
        .max_frame_size(payload as u32)
        .max_producers(1)
        .max_consumers(1)
}

/// Creates the two channels of `kind` for frames of `payload` bytes (rings of about 1 MiB, or
/// four frames when that is more).
pub fn create_channels(client: &Client, kind: Kind, payload: usize) -> Res<()> {
    let frame = payload as u64;
    let cfg = match kind {
        Kind::Spsc => ChannelConfig::spsc()
            .capacity((1u64 << 20).max(4 * (frame + 8)))
            .max_frame_size(payload as u32),
        Kind::Mpmc | Kind::Broadcast => slotted(kind, payload),
    };
    for dir in ["ping", "pong"] {
        client
            .create(&channel(kind, payload, dir), &cfg)
            .map_err(err("creating a channel"))?;
        if kind == Kind::Mpmc {
            // shmring-mpmc-pool-spin's: the same slots (a pool reference takes 24 bytes,
            // within the same 64-byte stride as an 8-byte frame), and messages up to 1 MiB.
            let pooled = cfg
                .max_frame_size((payload as u32).max(24))
                .max_message_size(1 << 20);
            client
                .create(&channel_of(kind, payload, dir, true), &pooled)
                .map_err(err("creating a channel"))?;
        }
        if kind == Kind::Spsc {
            // shmring-spsc-fd's own: the spin and park rows keep handles without descriptors.
            client
                .create(&fd_channel(payload, dir), &cfg)
                .map_err(err("creating a channel"))?;
        }
    }
    Ok(())
}

/// The channel of the messages runs of `kind` for messages of `size` bytes.
pub fn message_channel(kind: Kind, size: usize) -> String {
    format!("{kind}-messages-{size}")
}

/// Creates the channel of the messages runs of `kind` (SPSC, broadcast with one subscriber, or
/// MPMC with one producer and one consumer) for messages of `size` bytes: a 1 MiB ring of 64 KiB
/// frames. Returns its name.
pub fn create_message_channel(client: &Client, kind: Kind, size: usize) -> Res<String> {
    let ring = super::MESSAGE_RING;
    let cfg = ChannelConfig::new(kind)
        .capacity(ring)
        .max_frame_size(64 << 10)
        .max_consumers(1)
        .max_message_size(size as u64);
    let name = message_channel(kind, size);
    client
        .create(&name, &cfg)
        .map_err(err("creating a channel"))?;
    Ok(name)
}

/// Receives messages of up to `size` bytes from `rx` into one buffer until the empty message;
/// returns how many arrived.
pub fn consume_messages(rx: &mut Consumer, size: usize) -> Res<u64> {
    let mut buf = vec![0u8; size];
    let mut n = 0u64;
    loop {
        let got = rx
            .recv_timeout(&mut buf, PATIENCE)
            .map_err(err("receiving a message"))?;
        if got.len == 0 {
            return Ok(n);
        }
        if got.len != size {
            return Err(format!(
                "a message of {} bytes arrived, {size} were sent",
                got.len
            ));
        }
        n += 1;
    }
}

/// The channel names of shmring-spsc-fd.
fn fd_channel(payload: usize, dir: &str) -> String {
    format!("spsc-fd-{payload}-{dir}")
}

/// The broadcast channel of the fan-out runs with `overflow`, for frames of `payload` bytes.
fn fanout_channel(overflow: Overflow, payload: usize) -> String {
    format!("broadcast-{overflow}-{payload}-fanout")
}

/// Creates the fan-out runs' broadcast channel with `overflow` for frames of `payload` bytes:
/// the slots of the ping-pong's, two subscribers.
pub fn create_fanout_channel(client: &Client, overflow: Overflow, payload: usize) -> Res<()> {
    let cfg = slotted(Kind::Broadcast, payload)
        .max_consumers(2)
        .overflow(overflow);
    client
        .create(&fanout_channel(overflow, payload), &cfg)
        .map(drop)
        .map_err(err("creating a channel"))
}

/// One process's ends of every transport, set up on first use.
pub struct Ends {
    parent: bool,
    client: Client,
    dir: PathBuf,
    /// (kind, payload) -> (send end, receive end).
    shmring: HashMap<(Kind, usize, bool), (Producer, Consumer)>,
    /// payload -> shmring-spsc-fd's send end, receive end, and the receive end's descriptor.
    fd: HashMap<usize, (Producer, Consumer, RawFd)>,
    /// The fan-out runs' broadcast producer (parent) or subscriber (peers), by channel.
    fanout_tx: HashMap<(Overflow, usize), Producer>,
    fanout_rx: HashMap<(Overflow, usize), Consumer>,
    uds_listener: Option<UnixListener>,
    uds: Option<UnixStream>,
    tcp_listener: Option<TcpListener>,
    tcp: Option<TcpStream>,
    pipes: Option<(std::fs::File, std::fs::File)>,
}

impl Ends {
    /// The parent's ends: listens for the stream transports now, creates the FIFOs.
    pub fn parent(client: Client, dir: &Path) -> Res<Ends> {
        let uds = UnixListener::bind(dir.join("uds.sock")).map_err(io("binding a Unix socket"))?;
        let tcp = TcpListener::bind("127.0.0.1:0").map_err(io("binding a TCP socket"))?;
        // Accepts wait at most PATIENCE for the peer (see `accept_within`).
        uds.set_nonblocking(true)
            .and_then(|()| tcp.set_nonblocking(true))
            .map_err(io("non-blocking listeners"))?;
        for f in ["ping.fifo", "pong.fifo"] {
            nix::unistd::mkfifo(
                &dir.join(f),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| format!("making a FIFO: {e}"))?;
        }
        Ok(Ends {
            parent: true,
            client,
            dir: dir.to_path_buf(),
            shmring: HashMap::new(),
            fd: HashMap::new(),
            fanout_tx: HashMap::new(),
            fanout_rx: HashMap::new(),
            uds_listener: Some(uds),
            uds: None,
            tcp_listener: Some(tcp),
            tcp: None,
            pipes: None,
        })
    }

    /// The peer's ends.
    pub fn peer(client: Client, dir: &Path) -> Ends {
        Ends {
            parent: false,
            client,
            dir: dir.to_path_buf(),
            shmring: HashMap::new(),
            fd: HashMap::new(),
            fanout_tx: HashMap::new(),
            fanout_rx: HashMap::new(),
            uds_listener: None,
            uds: None,
            tcp_listener: None,
            tcp: None,
            pipes: None,
        }
    }

    /// The TCP port the parent listens on.
    pub fn tcp_port(&self) -> u16 {
        self.tcp_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or(0, |a| a.port())
    }

    /// The shmring ends for `kind` and `payload`, opened on first use, with `wait`.
    pub fn channels(
        &mut self,
        kind: Kind,
        payload: usize,
        wait: WaitStrategy,
    ) -> Res<&mut (Producer, Consumer)> {
        self.channels_of(kind, payload, wait, false)
    }

    /// [`Ends::channels`], or (`pooled`) the ends of its twin with a message pool.
    pub fn channels_of(
        &mut self,
        kind: Kind,
        payload: usize,
        wait: WaitStrategy,
        pooled: bool,
    ) -> Res<&mut (Producer, Consumer)> {
        if !self.shmring.contains_key(&(kind, payload, pooled)) {
            let (out, inn) = if self.parent {
                ("ping", "pong")
            } else {
                ("pong", "ping")
            };
            let tx = self
                .client
                .producer(&channel_of(kind, payload, out, pooled))
                .map_err(err("opening a channel"))?;
            let rx = self
                .client
                .consumer(&channel_of(kind, payload, inn, pooled))
                .map_err(err("opening a channel"))?;
            self.shmring.insert((kind, payload, pooled), (tx, rx));
        }
        let ends = self
            .shmring
            .get_mut(&(kind, payload, pooled))
            .expect("inserted above");
        ends.0.set_wait_strategy(wait);
        ends.1.set_wait_strategy(wait);
        Ok(ends)
    }

    /// shmring-spsc-fd's ends for `payload`, opened on first use, with the receive end's
    /// descriptor, armed.
    fn fd_channels(&mut self, payload: usize) -> Res<&mut (Producer, Consumer, RawFd)> {
        if !self.fd.contains_key(&payload) {
            let (out, inn) = if self.parent {
                ("ping", "pong")
            } else {
                ("pong", "ping")
            };
            let tx = self
                .client
                .producer(&fd_channel(payload, out))
                .map_err(err("opening a channel"))?;
            let mut rx = self
                .client
                .consumer(&fd_channel(payload, inn))
                .map_err(err("opening a channel"))?;
            let fd = rx.fd().map_err(err("making the consumer's descriptor"))?;
            self.fd.insert(payload, (tx, rx, fd));
        }
        Ok(self.fd.get_mut(&payload).expect("inserted above"))
    }

    /// The producer of the fan-out channel with `overflow` and `payload`, opened on first use;
    /// it busy-spins when it waits.
    pub fn fanout_producer(&mut self, overflow: Overflow, payload: usize) -> Res<&mut Producer> {
        let key = (overflow, payload);
        if !self.fanout_tx.contains_key(&key) {
            let mut tx = self
                .client
                .producer(&fanout_channel(overflow, payload))
                .map_err(err("opening a channel"))?;
            tx.set_wait_strategy(WaitStrategy::Spin);
            self.fanout_tx.insert(key, tx);
        }
        Ok(self.fanout_tx.get_mut(&key).expect("inserted above"))
    }

    /// A subscriber of the fan-out channel with `overflow` and `payload`, opened (joined) on
    /// first use, with `wait`.
    pub fn subscriber(
        &mut self,
        overflow: Overflow,
        payload: usize,
        wait: WaitStrategy,
    ) -> Res<&mut Consumer> {
        let key = (overflow, payload);
        if !self.fanout_rx.contains_key(&key) {
            let rx = self
                .client
                .consumer(&fanout_channel(overflow, payload))
                .map_err(err("opening a channel"))?;
            self.fanout_rx.insert(key, rx);
        }
        let rx = self.fanout_rx.get_mut(&key).expect("inserted above");
        rx.set_wait_strategy(wait);
        Ok(rx)
    }

    /// The byte stream of a stream transport, connected on first use.
    fn stream(&mut self, t: Transport, port: u16) -> Res<&mut dyn Stream> {
        match t {
            Transport::Uds => {
                if self.uds.is_none() {
                    let s = match &self.uds_listener {
                        Some(l) => accept_within(|| l.accept().map(|(s, _)| s)),
                        None => UnixStream::connect(self.dir.join("uds.sock")),
                    }
                    .map_err(io("connecting the Unix socket"))?;
                    s.set_nonblocking(false)
                        .and_then(|()| s.set_read_timeout(Some(PATIENCE)))
                        .and_then(|()| s.set_write_timeout(Some(PATIENCE)))
                        .map_err(io("socket timeout"))?;
                    self.uds = Some(s);
                }
                Ok(self.uds.as_mut().unwrap())
            }
            Transport::Tcp => {
                if self.tcp.is_none() {
                    let s = match &self.tcp_listener {
                        Some(l) => accept_within(|| l.accept().map(|(s, _)| s)),
                        None => TcpStream::connect(("127.0.0.1", port)),
                    }
                    .map_err(io("connecting the TCP socket"))?;
                    s.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
                    s.set_nonblocking(false)
                        .and_then(|()| s.set_read_timeout(Some(PATIENCE)))
                        .and_then(|()| s.set_write_timeout(Some(PATIENCE)))
                        .map_err(io("socket timeout"))?;
                    self.tcp = Some(s);
                }
                Ok(self.tcp.as_mut().unwrap())
            }
            Transport::Pipe => {
                if self.pipes.is_none() {
                    let dir = &self.dir;
                    let open = |name: &str, write: bool| {
                        open_fifo(&dir.join(name), write).map_err(io("opening a FIFO"))
                    };
                    // The parent opens pong for reading (that never waits), then ping for
                    // writing (waiting, at most PATIENCE, for the peer's reader). The peer opens
                    // ping for reading and waits there for the parent's writer (if the parent
                    // dies, so does the peer), then pong for writing; it says it is ready only
                    // then, so neither side reads a FIFO before its writer has it open.
                    self.pipes = Some(if self.parent {
                        let r = open("pong.fifo", false)?;
                        (open("ping.fifo", true)?, r)
                    } else {
                        let r = std::fs::File::open(dir.join("ping.fifo"))
                            .map_err(io("opening a FIFO"))?;
                        (open("pong.fifo", true)?, r)
                    });
                }
                Ok(self.pipes.as_mut().unwrap())
            }
            _ => Err(format!("{} is not a stream transport", t.name())),
        }
    }

    /// Times `n` round trips of `payload` bytes over `t` (the parent's side), pausing `think`
    /// before each.
    #[allow(clippy::too_many_arguments)]
    pub fn ping(
        &mut self,
        ctl: &Control,
        t: Transport,
        payload: usize,
        n: u64,
        think: Duration,
        port: u16,
        h: &mut Histogram<u64>,
    ) -> Res<()> {
        let frame = vec![0x5au8; payload];
        let mut buf = vec![0u8; payload];
        let pause = || {
            if !think.is_zero() {
                let until = Instant::now() + think;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
        };
        match t {
            Transport::AtomicFloor => {
                for i in 0..n {
                    let t0 = Instant::now();
                    ctl.floor.0[0].store(2 * i + 1, Ordering::Release);
                    if !spin_until(&ctl.floor.0[0], 2 * i + 2, PATIENCE) {
                        return Err("the peer stopped answering (atomic floor)".into());
                    }
                    h.saturating_record(t0.elapsed().as_nanos() as u64);
                }
            }
            Transport::FutexFloor => {
                let (a, b) = (&ctl.futex_a.0, &ctl.futex_b.0);
                for i in 1..=n as u32 {
                    pause();
                    let t0 = Instant::now();
                    a.store(i, Ordering::Release);
                    futex_wake(a);
                    if !wait_for(b, i) {
                        return Err("the peer stopped answering (futex floor)".into());
                    }
                    h.saturating_record(t0.elapsed().as_nanos() as u64);
                }
            }
            Transport::ShmringSpscFd => {
                let (tx, rx, fd) = self.fd_channels(payload)?;
                for _ in 0..n {
                    pause();
                    let t0 = Instant::now();
                    tx.send_timeout(&frame, PATIENCE).map_err(err("sending"))?;
                    loop {
                        match rx.try_recv(&mut buf) {
                            Ok(_) => break,
                            Err(shmring::Error::WouldBlock(_)) => poll_in(*fd)?,
                            Err(e) => return Err(format!("receiving the echo: {e}")),
                        }
                    }
                    h.saturating_record(t0.elapsed().as_nanos() as u64);
                }
            }
            _ => {
                if let Some((kind, wait)) = t.shmring() {
                    let (tx, rx) = self.channels_of(kind, payload, wait, t.pooled())?;
                    for _ in 0..n {
                        pause();
                        let t0 = Instant::now();
                        tx.send_timeout(&frame, PATIENCE).map_err(err("sending"))?;
                        rx.recv_timeout(&mut buf, PATIENCE)
                            .map_err(err("receiving the echo"))?;
                        h.saturating_record(t0.elapsed().as_nanos() as u64);
                    }
                } else {
                    let s = self.stream(t, port)?;
                    for _ in 0..n {
                        let t0 = Instant::now();
                        s.send(&frame).map_err(io("sending"))?;
                        s.receive(&mut buf).map_err(io("receiving the echo"))?;
                        h.saturating_record(t0.elapsed().as_nanos() as u64);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets up the peer's end of `t` (so that the parent can start timing once it is ready).
    pub fn prepare(&mut self, t: Transport, payload: usize, port: u16) -> Res<()> {
        match t {
            Transport::AtomicFloor | Transport::FutexFloor => Ok(()),
            Transport::ShmringSpscFd => self.fd_channels(payload).map(drop),
            _ => match t.shmring() {
                Some((kind, wait)) => self.channels_of(kind, payload, wait, t.pooled()).map(drop),
                None => self.stream(t, port).map(drop),
            },
        }
    }

    /// Echoes `n` round trips of `payload` bytes over `t` (the peer's side).
    pub fn echo(
        &mut self,
        ctl: &Control,
        t: Transport,
        payload: usize,
        n: u64,
        port: u16,
    ) -> Res<()> {
        let mut buf = vec![0u8; payload];
        match t {
            Transport::AtomicFloor => {
                for i in 0..n {
                    if !spin_until(&ctl.floor.0[0], 2 * i + 1, PATIENCE) {
                        return Err("the parent stopped (atomic floor)".into());
                    }
                    ctl.floor.0[0].store(2 * i + 2, Ordering::Release);
                }
            }
            Transport::FutexFloor => {
                let (a, b) = (&ctl.futex_a.0, &ctl.futex_b.0);
                for i in 1..=n as u32 {
                    if !wait_for(a, i) {
                        return Err("the parent stopped (futex floor)".into());
                    }
                    b.store(i, Ordering::Release);
                    futex_wake(b);
                }
            }
            Transport::ShmringSpscFd => {
                let (tx, rx, fd) = self.fd_channels(payload)?;
                for _ in 0..n {
                    loop {
                        match rx.try_read() {
                            Ok(f) => {
                                tx.send_timeout(&f, PATIENCE).map_err(err("echoing"))?;
                                break;
                            }
                            Err(shmring::Error::WouldBlock(_)) => poll_in(*fd)?,
                            Err(e) => return Err(format!("reading: {e}")),
                        }
                    }
                }
            }
            _ => {
                if let Some((kind, wait)) = t.shmring() {
                    let (tx, rx) = self.channels_of(kind, payload, wait, t.pooled())?;
                    for _ in 0..n {
                        let f = rx.read_timeout(PATIENCE).map_err(err("reading"))?;
                        tx.send_timeout(&f, PATIENCE).map_err(err("echoing"))?;
                    }
                } else {
                    let s = self.stream(t, port)?;
                    for _ in 0..n {
                        s.receive(&mut buf).map_err(io("reading"))?;
                        s.send(&buf).map_err(io("echoing"))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Waits in `poll` until `fd` is readable, at most `PATIENCE`.
fn poll_in(fd: RawFd) -> Res<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    // SAFETY: the consumer owning `fd` outlives the call.
    let mut fds = [PollFd::new(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        PollFlags::POLLIN,
    )];
    let ms = PollTimeout::try_from(PATIENCE.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, ms) {
            Ok(0) => return Err("the other side stopped answering (poll timed out)".into()),
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
}

/// What a consumer waiting on its descriptor, with nothing sent, costs: the CPU time this
/// thread used while it waited in `poll` (and handled each readiness, a recheck, as an event
/// loop does) for `span`, and how many times the descriptor became readable.
pub fn idle_fd_cost(span: Duration) -> Res<(Duration, u64)> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let seg = shmring::Segment::anonymous(&ChannelConfig::spsc()).map_err(err("a channel"))?;
    let _tx = seg.producer().map_err(err("a producer"))?;
    let mut rx = seg.consumer().map_err(err("a consumer"))?;
    let fd = rx.fd().map_err(err("the consumer's descriptor"))?;
    let mut buf = [0u8; 64];
    let cpu = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let (cpu0, t0) = (cpu(), Instant::now());
    let mut wakeups = 0;
    // The first receive arms the descriptor.
    let _ = rx.try_recv(&mut buf);
    while let Some(left) = span.checked_sub(t0.elapsed()) {
        // SAFETY: `rx` owns `fd` and outlives the call.
        let mut fds = [PollFd::new(
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            PollFlags::POLLIN,
        )];
        let ms = PollTimeout::try_from(left.as_millis().max(1) as i32).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, ms).map_err(|e| format!("poll: {e}"))? > 0 {
            wakeups += 1;
            match rx.try_recv(&mut buf) {
                Err(shmring::Error::WouldBlock(_)) => {}
                other => return Err(format!("an idle channel gave {other:?}")),
            }
        }
    }
    Ok((cpu() - cpu0, wakeups))
}

/// Accepts a connection on a listener made non-blocking, waiting at most `PATIENCE`.
fn accept_within<S>(mut accept: impl FnMut() -> std::io::Result<S>) -> std::io::Result<S> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the peer did not connect within {PATIENCE:?}"),
                ));
            }
            r => return r,
        }
    }
}

/// Opens a FIFO without waiting forever for its other end, then makes it blocking. A reader's
/// open never waits (O_NONBLOCK); a writer's fails with ENXIO until a reader has it open, so
/// it is retried for at most `PATIENCE`.
fn open_fifo(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + PATIENCE;
    let file = loop {
        match std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            r => break r?,
        }
    };
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(file)
}

/// A byte stream the ping-pong writes and reads whole frames on.
trait Stream {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    fn receive(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

impl Stream for UnixStream {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.write_all(frame)
    }
    fn receive(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact(buf)
    }
}

impl Stream for TcpStream {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.write_all(frame)
    }
    fn receive(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact(buf)
    }
}

/// (write end, read end) of the two FIFOs.
impl Stream for (std::fs::File, std::fs::File) {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.write_all(frame)
    }
    fn receive(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.1.read_exact(buf)
    }
}

/// The API a throughput run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `send` copies each frame in, `recv` copies it out.
    Copy,
    /// `claim` lets the producer write each frame in place (here: fill it), `drain` lends
    /// frames in place to the consumer (here: it reads every byte), released in batches.
    ZeroCopy,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Copy => "copy",
            Api::ZeroCopy => "zero-copy",
        }
    }
}

/// The producer's side of a throughput run: sends frames of `payload` bytes for `duration`,
/// then an empty frame. Returns how many frames it sent.
pub fn produce(tx: &mut Producer, api: Api, payload: usize, duration: Duration) -> Res<u64> {
    let frame = vec![0x42u8; payload];
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..64 {
            match api {
                Api::Copy => tx.send_timeout(&frame, PATIENCE).map_err(err("sending"))?,
                Api::ZeroCopy => {
                    let mut c = tx
                        .claim_timeout(payload, PATIENCE)
                        .map_err(err("claiming"))?;
                    c.fill(n as u8);
                    c.commit();
                }
            }
            n += 1;
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    tx.send_timeout(&[], PATIENCE)
        .map_err(err("sending the end"))?;
    Ok(n)
}

/// The consumer's side: receives until the empty frame, waiting at most `patience` for each
/// frame; returns how many frames it received.
pub fn consume(rx: &mut Consumer, api: Api, patience: Duration) -> Res<u64> {
    let mut buf = vec![0u8; rx.max_frame_size()];
    let mut n = 0u64;
    let mut fold = 0u64;
    loop {
        match api {
            Api::Copy => {
                let got = rx
                    .recv_timeout(&mut buf, patience)
                    .map_err(err("receiving"))?;
                if got.len == 0 {
                    break;
                }
                n += 1;
            }
            Api::ZeroCopy => {
                let mut end = false;
                rx.drain_timeout(256, patience, |f, _| {
                    if f.is_empty() {
                        end = true;
                        return;
                    }
                    // Reads every byte in place, eight at a time.
                    let mut words = f.chunks_exact(8);
                    for w in &mut words {
                        fold ^= u64::from_ne_bytes(w.try_into().unwrap());
                    }
                    for &b in words.remainder() {
                        fold ^= u64::from(b);
                    }
                    n += 1;
                })
                .map_err(err("draining"))?;
                if end {
                    break;
                }
            }
        }
    }
    std::hint::black_box(fold);
    Ok(n)
}

/// The bytes a memcpy measurement moves per copy, and the buffers it copies between: the
/// largest frame measured by default, through buffers the size of the rings (1 MiB), so that
/// the yardstick works in the same caches as the rings do.
pub const MEMCPY_BLOCK: usize = 64 << 10;
pub const MEMCPY_SPAN: usize = 1 << 20;

/// Single-threaded memcpy bandwidth, in bytes per second: `MEMCPY_BLOCK`-byte copies from one
/// `MEMCPY_SPAN`-byte buffer to another, block after block, for `duration`. The limit for moving
/// the bytes of a large frame once, on one core, in the caches a ring of that size uses.
pub fn memcpy_bandwidth(duration: Duration) -> f64 {
    let src = vec![0x17u8; MEMCPY_SPAN];
    let mut dst = vec![0u8; MEMCPY_SPAN];
    dst.copy_from_slice(&src); // first touch: both buffers mapped and cached
    let blocks = MEMCPY_SPAN / MEMCPY_BLOCK;
    let start = Instant::now();
    let mut copies = 0usize;
    while start.elapsed() < duration {
        for _ in 0..64 {
            let b = copies % blocks * MEMCPY_BLOCK;
            dst[b..b + MEMCPY_BLOCK]
                .copy_from_slice(std::hint::black_box(&src[b..b + MEMCPY_BLOCK]));
            std::hint::black_box(&dst);
            copies += 1;
        }
    }
    (copies * MEMCPY_BLOCK) as f64 / start.elapsed().as_secs_f64()
}
