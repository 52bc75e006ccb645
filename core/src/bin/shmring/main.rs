//! `shmring`: inspect and manage the channels of a shmring coordinator, and measure shmring
//! against the alternatives (`shmring bench`).

mod bench;
mod failure;

use clap::{Parser, Subcommand, ValueEnum};
use failure::Failure;
use shmring::units::{format_size as bytes, parse_size};
use shmring::{
    ChannelConfig, ChannelInfo, ChannelStats, Client, DEFAULT_NAMESPACE, Kind, Limits, Overflow,
    Role, SOCKET_ENV, default_socket_path,
};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Inspect and manage the channels of a shmring coordinator (shmringd), and measure shmring.
#[derive(Parser, Debug)]
#[command(name = "shmring", version, after_help = failure::EXIT_CODES)]
struct Args {
    /// The coordinator's socket [default: $SHMRING_SOCKET, else the namespace's default socket]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The namespace whose default socket to use
    #[arg(long, global = true, value_name = "NAME", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the channels
    List {
        /// Print JSON (an array of channels)
        #[arg(long)]
        json: bool,
    },
    /// Show one channel: shape, depth, traffic, rates, participants, repairs
    Stat {
        /// Channel name
        channel: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Refreshing view of every channel (or the ones named), like top
    Watch {
        /// Channels to show [default: all]
        channels: Vec<String>,
        /// Seconds between refreshes
        #[arg(long, default_value = "1")]
        interval: f64,
        /// Stop after this many refreshes, at least 1 [default: run until interrupted]
        #[arg(long, value_parser = parse_count)]
        count: Option<u64>,
        /// Print one JSON object per refresh, one per line
        #[arg(long)]
        json: bool,
    },
    /// Create a channel owned by you
    Create {
        /// Channel name: 1 to 64 characters, each a letter, a digit, '.', '_' or '-', not
        /// starting with '.'; one that starts with '-' goes after `--` (`shmring create -- -x`)
        channel: String,
        /// spsc (one producer, one consumer, variable-length frames), mpmc (many of each,
        /// fixed-size slots, each frame to one consumer) or broadcast (one producer, many
        /// subscribers, fixed-size slots, every frame to every subscriber)
        #[arg(long, value_enum, default_value = "spsc")]
        kind: KindArg,
        /// broadcast: what the producer does when the ring is full: block (wait for the
        /// slowest subscriber, lossless) or drop-oldest (never wait; a lapped subscriber skips
        /// ahead and counts what it missed)
        #[arg(long, value_enum)]
        overflow: Option<OverflowArg>,
        /// broadcast: frames of history a new subscriber receives first (below the slot count)
        /// [default: 0]
        #[arg(long)]
        history: Option<u32>,
        /// Bytes of frame storage (suffixes K, M, G, T: powers of 1024), at least twice
        /// --max-frame-size (a channel holds two of its largest frames), rounded up to a power
        /// of two [default: 1M]
        #[arg(long, value_parser = parse_size)]
        capacity: Option<u64>,
        /// Largest frame, 1 byte to 1G (suffixes K, M, G) [default: 64K for spsc, 1K for mpmc
        /// and broadcast]
        #[arg(long, value_parser = parse_size)]
        max_frame_size: Option<u64>,
        /// Largest message, from --max-frame-size to 1T (suffixes K, M, G, T): a longer message
        /// than a frame is split into frames (spsc, broadcast) or passed through a message pool
        /// (mpmc) and received whole [default: --max-frame-size]
        #[arg(long, value_parser = parse_size)]
        max_message_size: Option<u64>,
        /// Partitions (spsc): a partitioned channel of this many rings, written by key
        /// (send_keyed) and read by one consumer group [default: not partitioned]
        #[arg(long)]
        partitions: Option<u32>,
        /// Bytes of state a checkpoint of each partition holds (suffixes K, M)
        /// [default: 64K with --partitions]
        #[arg(long, value_parser = parse_size)]
        checkpoint_size: Option<u64>,
        /// Producers admitted at once (mpmc) [default: 16]
        #[arg(long)]
        max_producers: Option<u32>,
        /// Consumers admitted at once (mpmc, broadcast) [default: 16]
        #[arg(long)]
        max_consumers: Option<u32>,
        /// Permission bits in octal, as for a file: 600 (you only), 660 (your group), 666
        #[arg(long, default_value = "600", value_parser = parse_mode)]
        mode: u32,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Give a live channel a new capacity while its producers and consumers keep running
    /// (spsc and broadcast; its owner or root only): nothing is lost or repeated, order is
    /// kept, nobody re-opens a handle
    Resize {
        /// Channel name
        channel: String,
        /// The new capacity: bytes of frame storage (suffixes K, M, G, T: powers of 1024),
        /// rounded up to a power of two, as `create --capacity`
        #[arg(long, value_parser = parse_size)]
        capacity: u64,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete a channel (its owner or root only)
    Delete {
        /// Channel name
        channel: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Measure round-trip latency and throughput between two processes: shmring against the
    /// physical floors, a Unix socket, a pipe and TCP, in one run (starts its own coordinator)
    Bench(bench::BenchArgs),
    /// The benchmark's second process (started by `shmring bench`)
    #[command(hide = true)]
    BenchPeer {
        #[arg(long)]
        control: PathBuf,
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long)]
        parent: u32,
        /// 0: the first peer; 1: the second subscriber of the fan-out runs
        #[arg(long, default_value = "0")]
        index: usize,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KindArg {
    Spsc,
    Mpmc,
    Broadcast,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OverflowArg {
    Block,
    DropOldest,
}

/// `watch --count`: zero refreshes would show nothing, and is refused.
fn parse_count(s: &str) -> Result<u64, String> {
    s.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        format!("{s:?} is not a count of at least 1 (leave --count out to run until interrupted)")
    })
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode between 000 and 777"))
}

fn rate(per_s: f64) -> String {
    match per_s {
        r if r >= 1e6 => format!("{:.2} M/s", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k/s", r / 1e3),
        r => format!("{r:.0} /s"),
    }
}

fn depth(info: &ChannelInfo) -> String {
    match info.kind {
        Kind::Spsc => bytes(info.depth),
        Kind::Mpmc => format!("{} frames", info.depth),
        // The slowest subscriber's lag (`stat` shows each one's).
        Kind::Broadcast => format!("{} frames", info.depth),
    }
}

fn capacity_text(info: &ChannelInfo) -> String {
    match info.kind {
        Kind::Spsc if info.partitions > 1 => {
            format!(
                "{} partitions of {}",
                info.partitions,
                bytes(info.capacity_bytes)
            )
        }
        Kind::Spsc => bytes(info.capacity_bytes),
        Kind::Mpmc | Kind::Broadcast => format!("{} slots", info.slots),
    }
}

fn main() -> ExitCode {
    // Arguments clap refuses are reported as JSON too when the command asked for JSON (the
    // bench's --json names a file: not that).
    let raw: Vec<_> = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .collect();
    let wants_json = raw.iter().any(|a| a == "--json") && !raw.iter().any(|a| a == "bench");
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if wants_json && e.use_stderr() => {
            let text = e.render().to_string();
            let message = text.trim().trim_start_matches("error: ").to_string();
            return report(
                true,
                Failure {
                    status: "usage",
                    message,
                },
            );
        }
        Err(e) => e.exit(),
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(args.command.json(), f),
    }
}

/// Says what failed, as JSON on standard output or in words on standard error, and gives the
/// exit code of the failure.
fn report(as_json: bool, f: Failure) -> ExitCode {
    if as_json {
        let _ = writeln!(std::io::stdout(), "{}", f.json());
    } else {
        let _ = writeln!(std::io::stderr(), "shmring: {}", f.message);
    }
    ExitCode::from(f.code())
}

impl Command {
    /// Whether the command prints JSON (`--json`).
    fn json(&self) -> bool {
        match self {
            Command::List { json }
            | Command::Stat { json, .. }
            | Command::Watch { json, .. }
            | Command::Create { json, .. }
            | Command::Resize { json, .. }
            | Command::Delete { json, .. } => *json,
            Command::Bench(_) | Command::BenchPeer { .. } => false,
        }
    }
}

/// The coordinator's socket: --socket, else the default socket of an explicit --namespace, else
/// `SHMRING_SOCKET`, else the default namespace's default socket.
fn socket_path(args: &Args) -> PathBuf {
    if let Some(s) = &args.socket {
        return s.clone();
    }
    match std::env::var_os(SOCKET_ENV) {
        // An explicit --namespace picks that namespace's default socket over SHMRING_SOCKET.
        Some(p) if !p.is_empty() && args.namespace == DEFAULT_NAMESPACE => PathBuf::from(p),
        _ => default_socket_path(&args.namespace),
    }
}

fn connect(args: &Args) -> shmring::Result<Client> {
    let path = socket_path(args);
    Client::connect(Some(&path)).map_err(|e| match e {
        // The library's hint is for programs; this one says which daemon to start.
        shmring::Error::Unavailable(_) => {
            shmring::Error::Unavailable(no_coordinator(&path, &args.namespace))
        }
        e => e,
    })
}

/// What to do when no coordinator answers at `path`: the `shmringd` command that serves it.
fn no_coordinator(path: &Path, namespace: &str) -> String {
    let why = if path.exists() {
        "nothing listens on the socket there (its coordinator has stopped)"
    } else {
        "there is no socket there"
    };
    let mut start = String::from("shmringd");
    if namespace != DEFAULT_NAMESPACE {
        start += &format!(" --namespace {namespace}");
    }
    if path != default_socket_path(namespace) {
        start += &format!(" --socket {}", path.display());
    }
    format!(
        "no coordinator answers at {} ({why}): start one with `{start}`, or name the socket of a \
         running one with --socket or {SOCKET_ENV}",
        path.display()
    )
}

fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        Command::Bench(b) => bench::run(b).map_err(Failure::other),
        Command::BenchPeer {
            control,
            socket,
            dir,
            cpu,
            parent,
            index,
        } => bench::run_peer(control, socket, dir, *cpu, *parent, *index).map_err(Failure::other),
        _ => match manage(args) {
            // Standard output was closed early (`shmring stat x | head -1`): what was wanted
            // has been read; nothing to report.
            Err(shmring::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                Ok(())
            }
            r => r.map_err(|e| Failure::of(&e)),
        },
    }
}

fn manage(args: &Args) -> shmring::Result<()> {
    let client = connect(args)?;
    let out = &mut std::io::stdout().lock();
    let names = &mut Names::default();
    match &args.command {
        Command::Bench(_) | Command::BenchPeer { .. } => unreachable!("handled by run"),
        Command::List { json } => {
            let channels = client.list()?;
            if *json {
                let v: Vec<_> = channels.iter().map(|c| info_json(c, names)).collect();
                writeln!(out, "{}", serde_json::Value::Array(v)).map_err(w)?;
            } else {
                print_list(out, &channels, names).map_err(w)?;
                // A coordinator of an earlier release does not know the request: no line then.
                if let Ok(l) = client.limits() {
                    print_limits(out, &l).map_err(w)?;
                }
            }
        }
        Command::Stat { channel, json } => {
            let s = client.stats(channel)?;
            let limits = client.limits().ok();
            if *json {
                let mut v = stats_json(&s, names);
                if let (Some(l), Some(o)) = (&limits, v.as_object_mut()) {
                    o.insert(
                        "limits".into(),
                        serde_json::to_value(l).expect("protocol types serialise to JSON"),
                    );
                }
                writeln!(out, "{v}").map_err(w)?;
            } else {
                print_stat(out, &s, names).map_err(w)?;
                if let Some(l) = &limits {
                    print_limits(out, l).map_err(w)?;
                }
            }
        }
        Command::Watch {
            channels,
            interval,
            count,
            json,
        } => watch(&client, *json, channels, *interval, *count, names)?,
        Command::Create {
            channel,
            kind,
            capacity,
            max_frame_size,
            max_message_size,
            partitions,
            checkpoint_size,
            max_producers,
            max_consumers,
            overflow,
            history,
            mode,
            json,
        } => {
            let mut cfg = match kind {
                KindArg::Spsc => ChannelConfig::spsc(),
                KindArg::Mpmc => ChannelConfig::mpmc(),
                KindArg::Broadcast => ChannelConfig::broadcast(),
            }
            .mode(*mode);
            if let Some(o) = overflow {
                cfg = cfg.overflow(match o {
                    OverflowArg::Block => Overflow::Block,
                    OverflowArg::DropOldest => Overflow::DropOldest,
                });
            }
            if let Some(h) = history {
                cfg = cfg.history(*h);
            }
            if let Some(c) = capacity {
                cfg = cfg.capacity(*c);
            }
            if let Some(m) = max_frame_size {
                cfg = cfg.max_frame_size(u32::try_from(*m).map_err(|_| {
                    shmring::Error::InvalidArgument(format!(
                        "--max-frame-size {} is too large: frames are 1 byte to 1 GiB",
                        bytes(*m)
                    ))
                })?);
            }
            if let Some(m) = max_message_size {
                cfg = cfg.max_message_size(*m);
            }
            if let Some(n) = partitions {
                cfg = cfg.partitions(*n);
            }
            if let Some(c) = checkpoint_size {
                cfg = cfg.checkpoint_size(u32::try_from(*c).map_err(|_| {
                    shmring::Error::InvalidArgument(format!(
                        "--checkpoint-size {} is too large",
                        bytes(*c)
                    ))
                })?);
            }
            if let Some(n) = max_producers {
                cfg = cfg.max_producers(*n);
            }
            if let Some(n) = max_consumers {
                cfg = cfg.max_consumers(*n);
            }
            let info = client.create(channel, &cfg)?;
            if *json {
                writeln!(out, "{}", info_json(&info, names)).map_err(w)?;
            } else {
                let policy = if info.kind == Kind::Broadcast {
                    format!(", overflow {}, history {}", info.overflow, info.history)
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "created {} channel {}: {}{policy}, frames up to {}{}, mode {}, generation {}",
                    info.kind,
                    info.name,
                    capacity_text(&info),
                    bytes(u64::from(info.max_frame_size)),
                    messages_text(&info),
                    mode_text(info.mode),
                    info.generation
                )
                .map_err(w)?;
            }
        }
        Command::Resize {
            channel,
            capacity,
            json,
        } => {
            let info = client.resize(channel, *capacity)?;
            if *json {
                writeln!(out, "{}", info_json(&info, names)).map_err(w)?;
            } else {
                writeln!(
                    out,
                    "resized {}: {} (generation {}); producers move on their next send, \
                     consumers once they have drained the old ring",
                    info.name,
                    capacity_text(&info),
                    info.generation
                )
                .map_err(w)?;
            }
        }
        Command::Delete { channel, json } => {
            client.delete(channel)?;
            if *json {
                writeln!(out, "{}", serde_json::json!({ "deleted": channel })).map_err(w)?;
            } else {
                writeln!(out, "deleted {channel}").map_err(w)?;
            }
        }
    }
    out.flush().map_err(w)
}

/// A failure to write standard output, as an error of the command.
fn w(e: std::io::Error) -> shmring::Error {
    shmring::Error::Io {
        context: "writing to standard output".into(),
        source: e,
    }
}

/// Permission bits as people write them: `0660`.
fn mode_text(mode: u32) -> String {
    format!("{mode:04o}")
}

/// User and group names, looked up once each.
#[derive(Default)]
struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }

    /// `alice (1000)`, or `1000` for a uid with no name.
    fn owner(&mut self, uid: u32) -> String {
        match self.user(uid) {
            Some(n) => format!("{n} ({uid})"),
            None => uid.to_string(),
        }
    }
}

/// A channel as JSON: the protocol's fields, with the mode as the octal text people write
/// (`"0660"`) and the owner's user and group names beside their ids (null without one).
/// ", messages up to N" for a channel that splits messages longer than a frame, else nothing.
fn messages_text(i: &ChannelInfo) -> String {
    if i.max_message_size > u64::from(i.max_frame_size) {
        format!(", messages up to {}", bytes(i.max_message_size))
    } else {
        String::new()
    }
}

fn info_json(info: &ChannelInfo, names: &mut Names) -> serde_json::Value {
    let mut v = serde_json::to_value(info).expect("protocol types serialise to JSON");
    if let Some(o) = v.as_object_mut() {
        o.insert("mode".into(), mode_text(info.mode).into());
        o.insert("owner".into(), names.user(info.owner_uid).into());
        o.insert("group".into(), names.group(info.owner_gid).into());
    }
    v
}

/// A channel's statistics as JSON, its `info` as [`info_json`].
fn stats_json(s: &ChannelStats, names: &mut Names) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("protocol types serialise to JSON");
    if let Some(o) = v.as_object_mut() {
        o.insert("info".into(), info_json(&s.info, names));
    }
    v
}

fn print_list(
    out: &mut impl Write,
    channels: &[ChannelInfo],
    names: &mut Names,
) -> std::io::Result<()> {
    if channels.is_empty() {
        return writeln!(out, "no channels");
    }
    writeln!(
        out,
        "{:<24} {:<5} {:>12} {:>10} {:>5} {:>5} {:>14} {:>5}  OWNER",
        "CHANNEL", "KIND", "CAPACITY", "MAX FRAME", "PROD", "CONS", "DEPTH", "MODE"
    )?;
    for c in channels {
        writeln!(
            out,
            "{:<24} {:<5} {:>12} {:>10} {:>2}/{:<2} {:>2}/{:<2} {:>14} {:>5}  {}",
            c.name,
            c.kind.to_string(),
            capacity_text(c),
            bytes(u64::from(c.max_frame_size)),
            c.producers,
            c.max_producers,
            c.consumers,
            c.max_consumers,
            depth(c),
            mode_text(c.mode),
            names.owner(c.owner_uid)
        )?;
    }
    Ok(())
}

/// The coordinator's limits and this user's use of them, in two lines.
fn print_limits(out: &mut impl Write, l: &Limits) -> std::io::Result<()> {
    writeln!(
        out,
        "limits      uid {}: {} of {} channels, {} of {}; channel storage up to {}; namespace: {} \
         of {} channels",
        l.uid,
        l.channels,
        l.max_channels_per_uid,
        bytes(l.bytes),
        bytes(l.max_bytes_per_uid),
        bytes(l.max_channel_bytes),
        l.namespace_channels,
        l.max_channels
    )?;
    writeln!(
        out,
        "connections uid {}: {} of {}; all users: {} of {}",
        l.uid, l.connections, l.max_connections_per_uid, l.all_connections, l.max_connections
    )
}

fn print_stat(out: &mut impl Write, s: &ChannelStats, names: &mut Names) -> std::io::Result<()> {
    let i = &s.info;
    writeln!(
        out,
        "channel     {} ({}, generation {})",
        i.name, i.kind, i.generation
    )?;
    writeln!(
        out,
        "capacity    {} ({} of storage), frames up to {}{}",
        capacity_text(i),
        bytes(i.capacity_bytes),
        bytes(u64::from(i.max_frame_size)),
        messages_text(i)
    )?;
    let group = match names.group(i.owner_gid) {
        Some(g) => format!("{g} ({})", i.owner_gid),
        None => i.owner_gid.to_string(),
    };
    writeln!(
        out,
        "access      owner {}, group {group}, mode {}",
        names.owner(i.owner_uid),
        mode_text(i.mode)
    )?;
    if i.kind == Kind::Broadcast {
        writeln!(
            out,
            "broadcast   overflow {}, history {} frames",
            i.overflow, i.history
        )?;
    }
    writeln!(out, "depth       {}", depth(i))?;
    if !s.partitions.is_empty() {
        match &s.group {
            Some((g, members)) => writeln!(
                out,
                "group       {g}: {} member{} ({})",
                members.len(),
                if members.len() == 1 { "" } else { "s" },
                members
                    .iter()
                    .map(|(m, pid)| format!("#{m} pid {pid}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?,
            None => writeln!(out, "group       none has joined")?,
        }
        for p in &s.partitions {
            writeln!(
                out,
                "partition {:<3} depth {:>10}  in {:>12}  out {:>12}  checkpoints {:>8}  owner {}",
                p.index,
                bytes(p.depth),
                p.frames_in,
                p.frames_out,
                p.checkpoints,
                p.owner
                    .map_or("-".to_string(), |(m, pid)| format!("#{m} (pid {pid})"))
            )?;
        }
    }
    if s.resizes > 0 || s.draining_generation != 0 {
        write!(out, "resizes     {}", s.resizes)?;
        if s.draining_generation != 0 {
            write!(
                out,
                "; moving from generation {} ({} of storage, {} left in it)",
                s.draining_generation,
                bytes(s.draining_capacity_bytes),
                match i.kind {
                    Kind::Spsc => bytes(s.draining_depth),
                    _ => format!("{} frames", s.draining_depth),
                }
            )?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "in          {} frames, {}  ({})",
        s.frames_in,
        bytes(s.bytes_in),
        rate(s.rate_in)
    )?;
    writeln!(
        out,
        "out         {} frames, {}  ({})",
        s.frames_out,
        bytes(s.bytes_out),
        rate(s.rate_out)
    )?;
    writeln!(
        out,
        "repairs     {} dead participants repaired, {} frames redelivered, {} positions skipped",
        s.repairs, s.redelivered, s.skipped
    )?;
    if s.pool_chunks > 0 {
        writeln!(
            out,
            "pool        {} of {} chunks of {} hold messages",
            s.pool_used,
            s.pool_chunks,
            bytes(u64::from(s.pool_chunk_bytes))
        )?;
    }
    writeln!(
        out,
        "participants {} of {} producers, {} of {} consumers",
        i.producers, i.max_producers, i.consumers, i.max_consumers
    )?;
    if !s.participants.is_empty() {
        let broadcast = i.kind == Kind::Broadcast;
        write!(
            out,
            "  {:<9} {:>5} {:>8} {:>14} {:>12}",
            "ROLE", "ENTRY", "PID", "FRAMES", "BYTES"
        )?;
        if broadcast {
            write!(out, " {:>10} {:>12}", "LAG", "MISSED")?;
        }
        writeln!(out)?;
        for p in &s.participants {
            write!(
                out,
                "  {:<9} {:>5} {:>8} {:>14} {:>12}",
                p.role.to_string(),
                p.index,
                p.pid,
                p.frames,
                bytes(p.bytes)
            )?;
            if broadcast {
                match p.lag {
                    Some(lag) => write!(out, " {lag:>10} {:>12}", p.missed)?,
                    None => write!(out, " {:>10} {:>12}", "-", "-")?,
                }
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

fn watch(
    client: &Client,
    as_json: bool,
    named: &[String],
    interval: f64,
    count: Option<u64>,
    names: &mut Names,
) -> shmring::Result<()> {
    if !(interval.is_finite() && interval > 0.0) {
        return Err(shmring::Error::InvalidArgument(format!(
            "--interval {interval} must be a positive number of seconds"
        )));
    }
    let mut out = std::io::stdout().lock();
    // A terminal is redrawn in place, as top does; a pipe or a file gets one table after
    // another, without escapes.
    let redraw = !as_json && out.is_terminal();
    let mut n = 0;
    loop {
        let mut stats = Vec::new();
        if named.is_empty() {
            for c in client.list()? {
                match client.stats(&c.name) {
                    Ok(s) => stats.push(s),
                    // Deleted between the list and the stat, or not ours to read: left out.
                    Err(shmring::Error::NotFound(_) | shmring::Error::PermissionDenied(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        } else {
            // A channel asked for by name that is not there (or not for us to see) is an
            // error, not an empty table.
            for name in named {
                stats.push(client.stats(name)?);
            }
        }
        if as_json {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let channels: Vec<_> = stats.iter().map(|s| stats_json(s, names)).collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({ "time": now, "channels": channels })
            )
            .map_err(w)?;
        } else {
            if redraw {
                // Clear the screen and home the cursor.
                write!(out, "\x1b[2J\x1b[H").map_err(w)?;
            } else if n > 0 {
                writeln!(out).map_err(w)?;
            }
            print_watch(&mut out, client, &stats, redraw).map_err(w)?;
        }
        out.flush().map_err(w)?;
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(interval));
    }
}

fn print_watch(
    out: &mut impl Write,
    client: &Client,
    stats: &[ChannelStats],
    redraw: bool,
) -> std::io::Result<()> {
    writeln!(
        out,
        "shmring watch: {} on {}{}",
        client.namespace().unwrap_or_default(),
        client.socket_path().display(),
        if redraw { "   (Ctrl-C to quit)\n" } else { "" }
    )?;
    writeln!(
        out,
        "{:<24} {:<5} {:>14} {:>11} {:>11} {:>14} {:>14} {:>5} {:>5} {:>7}",
        "CHANNEL",
        "KIND",
        "DEPTH",
        "IN",
        "OUT",
        "FRAMES IN",
        "FRAMES OUT",
        "PROD",
        "CONS",
        "REPAIRS"
    )?;
    for s in stats {
        let producers = s
            .participants
            .iter()
            .filter(|p| p.role == Role::Producer)
            .count();
        writeln!(
            out,
            "{:<24} {:<5} {:>14} {:>11} {:>11} {:>14} {:>14} {:>5} {:>5} {:>7}",
            s.info.name,
            s.info.kind.to_string(),
            depth(&s.info),
            rate(s.rate_in),
            rate(s.rate_out),
            s.frames_in,
            s.frames_out,
            producers,
            s.participants.len() - producers,
            s.repairs
        )?;
    }
    if stats.is_empty() {
        writeln!(out, "no channels")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_as_people_write_them() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("666"), Ok(0o666));
        assert!(parse_mode("800").is_err());
        assert!(parse_mode("1777").is_err());
        assert_eq!(mode_text(0o660), "0660");
        assert_eq!(mode_text(0o6), "0006");
    }

    /// Found trying the CLI as a new user: with --namespace nobody, the hint said to start
    /// `shmringd` (which serves "default") and named the Rust call `Coordinator::start`.
    #[test]
    fn the_hint_names_the_daemon_that_serves_the_socket() {
        let hint = no_coordinator(&default_socket_path("nobody"), "nobody");
        assert!(hint.contains("`shmringd --namespace nobody`"), "{hint}");
        assert!(!hint.contains("Coordinator::start"), "{hint}");
        let hint = no_coordinator(&default_socket_path(DEFAULT_NAMESPACE), DEFAULT_NAMESPACE);
        assert!(hint.contains("start one with `shmringd`,"), "{hint}");
        let hint = no_coordinator(Path::new("/nonexistent/x.sock"), DEFAULT_NAMESPACE);
        assert!(
            hint.contains("`shmringd --socket /nonexistent/x.sock`")
                && hint.contains("there is no socket there"),
            "{hint}"
        );
    }
}
