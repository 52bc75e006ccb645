//! `shmring`: inspect and manage the channels of a shmring coordinator, and measure shmring
//! against the alternatives (`shmring bench`).

mod bench;

use clap::{Parser, Subcommand, ValueEnum};
use shmring::{
    ChannelConfig, ChannelInfo, ChannelStats, Client, DEFAULT_NAMESPACE, Kind, Limits, Overflow,
    Role, SOCKET_ENV, default_socket_path,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Inspect and manage the channels of a shmring coordinator (shmringd), and measure shmring.
#[derive(Parser, Debug)]
#[command(name = "shmring", version)]
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
        /// Stop after this many refreshes [default: run until interrupted]
        #[arg(long)]
        count: Option<u64>,
        /// Print one JSON object per refresh, one per line
        #[arg(long)]
        json: bool,
    },
    /// Create a channel owned by you
    Create {
        /// Channel name: 1 to 64 characters of [A-Za-z0-9._-]
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
        /// Bytes of frame storage (suffixes K, M, G), rounded up to a power of two
        /// [default: 1M]
        #[arg(long, value_parser = parse_size)]
        capacity: Option<u64>,
        /// Largest frame in bytes (suffixes K, M) [default: 64K for spsc, 1K for mpmc and
        /// broadcast]
        #[arg(long, value_parser = parse_size)]
        max_frame_size: Option<u64>,
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

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode between 000 and 777"))
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (a number, optionally with K, M or G)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
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
        Kind::Broadcast => format!("{} frames behind", info.depth),
    }
}

fn capacity_text(info: &ChannelInfo) -> String {
    match info.kind {
        Kind::Spsc => bytes(info.capacity_bytes),
        Kind::Mpmc => format!("{} slots", info.slots),
        Kind::Broadcast => format!(
            "{} slots, overflow {}, history {}",
            info.slots, info.overflow, info.history
        ),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmring: {e}");
            ExitCode::FAILURE
        }
    }
}

fn connect(args: &Args) -> shmring::Result<Client> {
    let socket = args.socket.clone().or_else(|| {
        // An explicit --namespace picks that namespace's default socket over SHMRING_SOCKET.
        (args.namespace != DEFAULT_NAMESPACE || std::env::var_os(SOCKET_ENV).is_none())
            .then(|| default_socket_path(&args.namespace))
    });
    Client::connect(socket.as_deref())
}

fn run(args: &Args) -> Result<(), String> {
    match &args.command {
        Command::Bench(b) => bench::run(b),
        Command::BenchPeer {
            control,
            socket,
            dir,
            cpu,
            parent,
            index,
        } => bench::run_peer(control, socket, dir, *cpu, *parent, *index),
        _ => manage(args).map_err(|e| e.to_string()),
    }
}

fn manage(args: &Args) -> shmring::Result<()> {
    let client = connect(args)?;
    let out = &mut std::io::stdout().lock();
    let w = |e: std::io::Error| shmring::Error::Io {
        context: "writing to standard output".into(),
        source: e,
    };
    match &args.command {
        Command::Bench(_) | Command::BenchPeer { .. } => unreachable!("handled by run"),
        Command::List { json } => {
            let channels = client.list()?;
            if *json {
                writeln!(out, "{}", to_json(&channels)).map_err(w)?;
            } else {
                print_list(out, &channels).map_err(w)?;
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
                let mut v = serde_json::to_value(&s).expect("protocol types serialise to JSON");
                if let (Some(l), Some(o)) = (&limits, v.as_object_mut()) {
                    o.insert(
                        "limits".into(),
                        serde_json::to_value(l).expect("protocol types serialise to JSON"),
                    );
                }
                writeln!(out, "{v}").map_err(w)?;
            } else {
                print_stat(out, &s).map_err(w)?;
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
        } => watch(&client, *json, channels, *interval, *count)?,
        Command::Create {
            channel,
            kind,
            capacity,
            max_frame_size,
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
                    shmring::Error::InvalidArgument(format!("max frame size {m} is too large"))
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
                writeln!(out, "{}", to_json(&info)).map_err(w)?;
            } else {
                writeln!(
                    out,
                    "created {} channel {}: {}, frames up to {}, mode {:03o}, generation {}",
                    info.kind,
                    info.name,
                    capacity_text(&info),
                    bytes(u64::from(info.max_frame_size)),
                    info.mode,
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
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("protocol types serialise to JSON")
}

fn print_list(out: &mut impl Write, channels: &[ChannelInfo]) -> std::io::Result<()> {
    if channels.is_empty() {
        return writeln!(out, "no channels");
    }
    writeln!(
        out,
        "{:<24} {:<5} {:>12} {:>10} {:>5} {:>5} {:>14} {:>5} {:>6}",
        "CHANNEL", "KIND", "CAPACITY", "MAX FRAME", "PROD", "CONS", "DEPTH", "MODE", "OWNER"
    )?;
    for c in channels {
        writeln!(
            out,
            "{:<24} {:<5} {:>12} {:>10} {:>2}/{:<2} {:>2}/{:<2} {:>14} {:>5} {:>6}",
            c.name,
            c.kind.to_string(),
            capacity_text(c),
            bytes(u64::from(c.max_frame_size)),
            c.producers,
            c.max_producers,
            c.consumers,
            c.max_consumers,
            depth(c),
            format!("{:03o}", c.mode),
            c.owner_uid
        )?;
    }
    Ok(())
}

/// The coordinator's limits and this user's use of them, in two lines.
fn print_limits(out: &mut impl Write, l: &Limits) -> std::io::Result<()> {
    writeln!(
        out,
        "limits      uid {}: {} of {} channels, {} of {}; channels up to {}; namespace: {} of {} \
         channels",
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

fn print_stat(out: &mut impl Write, s: &ChannelStats) -> std::io::Result<()> {
    let i = &s.info;
    writeln!(
        out,
        "channel     {} ({}, generation {})",
        i.name, i.kind, i.generation
    )?;
    writeln!(
        out,
        "capacity    {} ({} of storage), frames up to {}",
        capacity_text(i),
        bytes(i.capacity_bytes),
        bytes(u64::from(i.max_frame_size))
    )?;
    writeln!(
        out,
        "access      owner uid {} gid {}, mode {:03o}",
        i.owner_uid, i.owner_gid, i.mode
    )?;
    writeln!(out, "depth       {}", depth(i))?;
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
    names: &[String],
    interval: f64,
    count: Option<u64>,
) -> shmring::Result<()> {
    if !(interval.is_finite() && interval > 0.0) {
        return Err(shmring::Error::InvalidArgument(format!(
            "--interval {interval} must be a positive number of seconds"
        )));
    }
    let mut out = std::io::stdout().lock();
    let mut n = 0;
    loop {
        let names: Vec<String> = if names.is_empty() {
            client.list()?.into_iter().map(|c| c.name).collect()
        } else {
            names.to_vec()
        };
        let mut stats = Vec::new();
        for name in &names {
            match client.stats(name) {
                Ok(s) => stats.push(s),
                // Deleted between the list and the stat, or not ours to read: left out.
                Err(shmring::Error::NotFound(_) | shmring::Error::PermissionDenied(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let written = if as_json {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            writeln!(
                out,
                "{}",
                serde_json::json!({ "time": now, "channels": stats })
            )
        } else {
            print_watch(&mut out, client, &stats)
        };
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(()); // standard output closed (a pipe to `head`, say)
        }
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
) -> std::io::Result<()> {
    // Clear the screen and home the cursor, as top does.
    write!(out, "\x1b[2J\x1b[H")?;
    writeln!(
        out,
        "shmring watch: {} on {}   (Ctrl-C to quit)\n",
        client.namespace().unwrap_or_default(),
        client.socket_path().display()
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
    fn sizes_and_modes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12q").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("666"), Ok(0o666));
        assert!(parse_mode("800").is_err());
        assert!(parse_mode("1777").is_err());
        assert_eq!(bytes(1 << 20), "1 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100), "100 B");
    }
}
