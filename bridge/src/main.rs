//! `shmring-bridge`: forwards shmring channels between hosts over Zenoh.

use clap::{Parser, Subcommand};
use shmring::units::parse_size;
use shmring::{ChannelConfig, Client, SOCKET_ENV};
use shmring_bridge::config::{Config, Create};
use shmring_bridge::{Endpoints, Error, ExportOptions, ImportOptions, Stop};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Forward shmring channels between hosts over Zenoh: `export` a local channel on one host,
/// `import` it into a channel on another. Producers and consumers on both hosts are unchanged.
#[derive(Parser, Debug)]
#[command(name = "shmring-bridge", version)]
struct Args {
    /// The local coordinator's socket [default: $SHMRING_SOCKET, else the default namespace's
    /// socket]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log what happens in detail (stream starts, rewinds, acknowledgements)
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct Net {
    /// A Zenoh endpoint to connect to, tcp/HOST:PORT (the other side's --listen); repeatable.
    /// Retried until it answers, and again after a cut
    #[arg(long, value_name = "ENDPOINT")]
    connect: Vec<String>,
    /// A Zenoh endpoint to listen on, tcp/ADDRESS:PORT; repeatable
    #[arg(long, value_name = "ENDPOINT")]
    listen: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume a local channel and publish every frame on a Zenoh key, keeping each until an
    /// importer acknowledges it. Ends (exit 0) once the channel's stream ended and every frame
    /// was acknowledged
    Export {
        /// The local channel
        #[arg(long)]
        channel: String,
        /// The Zenoh key to publish on (one key, no wildcards), e.g. plant/line1/frames
        #[arg(long)]
        key: String,
        /// Consume as a member of this consumer group (a partitioned channel)
        #[arg(long)]
        group: Option<String>,
        /// Most frames sent and not yet acknowledged
        #[arg(long, default_value_t = 16384)]
        window_frames: u64,
        /// Most bytes sent and not yet acknowledged (suffixes K, M, G)
        #[arg(long, default_value = "16M", value_parser = parse_size)]
        window_bytes: u64,
        /// Microseconds to spin on an empty channel before sleeping: lower latency for a frame
        /// that comes meanwhile, a core busy while spinning (0 where cores are scarce)
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// Publish every frame at once, never batched by Zenoh: lower latency for frames sent
        /// one at a time, less throughput for small ones
        #[arg(long)]
        express: bool,
        #[command(flatten)]
        net: Net,
    },
    /// Subscribe to a Zenoh key and produce every frame into a local channel, created with the
    /// shape given if it does not exist. Ends (exit 0) when the exporting channel's stream ends,
    /// after finishing the local channel
    Import {
        /// The Zenoh key an exporter publishes on
        #[arg(long)]
        key: String,
        /// The local channel
        #[arg(long)]
        channel: String,
        /// If the channel does not exist: spsc, mpmc or broadcast
        #[arg(long, default_value = "spsc")]
        kind: String,
        /// If the channel does not exist: bytes of frame storage (suffixes K, M, G)
        #[arg(long, default_value = "4M")]
        capacity: String,
        /// If the channel does not exist: largest frame (suffixes K, M)
        #[arg(long, default_value = "64K")]
        max_frame_size: String,
        /// If the channel does not exist: largest message, when longer than a frame
        #[arg(long)]
        max_message_size: Option<String>,
        /// If the channel does not exist: permission bits in octal
        #[arg(long, default_value = "600")]
        mode: String,
        #[command(flatten)]
        net: Net,
    },
    /// Run the exports and imports of a configuration file (JSON; see the README), all on one
    /// Zenoh session
    Run {
        /// The file
        #[arg(long)]
        config: PathBuf,
    },
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Relaxed: looked at by a thread in a loop (async-signal-safe: one store).
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM stop the bridge: what was not acknowledged stays with the exporting
/// channel (or the exporter's peer resends it).
fn stop_on_signals() -> Stop {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
    let stop = Stop::new();
    let s = stop.clone();
    std::thread::spawn(move || {
        loop {
            // Relaxed: as in `on_signal`.
            if SIGNALLED.load(Ordering::Relaxed) {
                s.set();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    stop
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if args.verbose {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmring-bridge: {e}");
            if let Error::Shmring(shmring::Error::Unavailable(_)) = e {
                eprintln!(
                    "  (start shmringd on this host, or point --socket or {SOCKET_ENV} at its socket)"
                );
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Error> {
    let stop = stop_on_signals();
    let connect = || Client::connect(args.socket.as_deref()).map_err(Error::from);
    match args.command {
        Command::Export {
            channel,
            key,
            group,
            window_frames,
            window_bytes,
            spin_us,
            express,
            net,
        } => {
            let client = connect()?;
            let session = shmring_bridge::session::open(&endpoints(net))?;
            let mut opts = ExportOptions::new(&channel, &key);
            opts.group = group;
            opts.window_frames = window_frames.max(1);
            opts.window_bytes = window_bytes;
            opts.spin = Duration::from_micros(spin_us);
            opts.express = express;
            let st = shmring_bridge::export(&client, &session, &opts, &stop)?;
            tracing::info!(
                frames = st.frames,
                bytes = st.bytes,
                resent = st.resent,
                rewinds = st.rewinds,
                ended = st.ended,
                "export done"
            );
            Ok(())
        }
        Command::Import {
            key,
            channel,
            kind,
            capacity,
            max_frame_size,
            max_message_size,
            mode,
            net,
        } => {
            let create: ChannelConfig = Create {
                kind: Some(kind),
                capacity: Some(capacity),
                max_frame_size: Some(max_frame_size),
                max_message_size,
                mode: Some(mode),
            }
            .channel_config()?;
            let client = connect()?;
            let session = shmring_bridge::session::open(&endpoints(net))?;
            let mut opts = ImportOptions::new(&key, &channel);
            opts.create = Some(create);
            let st = shmring_bridge::import(&client, &session, &opts, &stop)?;
            tracing::info!(
                frames = st.frames,
                bytes = st.bytes,
                redelivered = st.redelivered,
                duplicates = st.duplicates,
                lost = st.lost,
                refused = st.refused,
                ended = st.ended,
                "import done"
            );
            Ok(())
        }
        Command::Run { config } => {
            let mut c = Config::load(&config)?;
            if c.socket.is_none() {
                c.socket = args.socket;
            }
            c.run(&stop)
        }
    }
}

fn endpoints(net: Net) -> Endpoints {
    Endpoints {
        connect: net.connect,
        listen: net.listen,
    }
}
