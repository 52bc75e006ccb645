//! `shmringd`: the shmring coordinator daemon. Creates channels, admits producers and
//! consumers, watches them and repairs what a crashed one left behind. Stops on SIGTERM,
//! SIGINT or SIGHUP.

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use shmring::{Coordinator, CoordinatorConfig, DEFAULT_NAMESPACE};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The shmring coordinator: serves one namespace of shared-memory channels on a Unix socket.
///
/// Producers and consumers keep exchanging frames while it is down; a restarted shmringd
/// adopts the namespace's channels that processes still use. On SIGTERM, SIGINT or SIGHUP it
/// removes its socket and (unless --keep-channels) deletes its channels.
#[derive(Parser, Debug)]
#[command(name = "shmringd", version)]
struct Args {
    /// Socket to listen on [default: $XDG_RUNTIME_DIR/shmring/NAMESPACE.sock, else
    /// /tmp/shmring-UID/NAMESPACE.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Namespace served (channels' segments are sealed memfds named
    /// shmring.NAMESPACE@UID.GENERATION.CHANNEL, with no name in /dev/shm)
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// Permission bits of the socket, in octal: 666 lets every user connect (each channel's
    /// own mode still decides who is admitted)
    #[arg(long, value_name = "OCTAL", default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Do not delete the channels on exit: the next shmringd adopts those that processes still
    /// use
    #[arg(long)]
    keep_channels: bool,
    /// Largest frame storage of one channel a client may create (suffixes K, M, G, T, as
    /// `shmring create --capacity`): an SPSC channel's capacity, or an MPMC or broadcast
    /// channel's slots (each its largest frame plus 16 bytes, rounded up to 64)
    #[arg(long, value_name = "SIZE", default_value_t = Size(shmring::DEFAULT_MAX_CHANNEL_BYTES))]
    max_channel_bytes: Size,
    /// Most channels one user (uid) may own in the namespace
    #[arg(long, value_name = "N", default_value_t = shmring::DEFAULT_MAX_CHANNELS_PER_UID)]
    max_channels_per_uid: usize,
    /// Most bytes of channels (segments, headers included) one user may own in the namespace,
    /// all together (suffixes K, M, G, T)
    #[arg(long, value_name = "SIZE", default_value_t = Size(shmring::DEFAULT_MAX_BYTES_PER_UID))]
    max_bytes_per_uid: Size,
    /// Most client connections at once (lowered to what the open-file limit allows: six
    /// descriptors a connection; shmringd raises its soft limit to the hard one)
    #[arg(long, value_name = "N", default_value_t = shmring::DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_count)]
    max_connections: usize,
    /// Most client connections at once of one user (uid): each process with live handles
    /// keeps one
    #[arg(long, value_name = "N", default_value_t = shmring::DEFAULT_MAX_CONNECTIONS_PER_UID,
          value_parser = parse_count)]
    max_connections_per_uid: usize,
    /// Seconds a client may take to finish a message it began (its hello included) or to
    /// take a reply: a connection that takes longer is closed
    #[arg(long, value_name = "SECONDS", default_value_t = shmring::DEFAULT_MESSAGE_TIMEOUT.as_secs_f64(),
          value_parser = parse_seconds)]
    message_timeout: f64,
    /// Log level: error, warn, info, debug or trace
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: tracing::Level,
}

/// A size flag: parsed as `shmring create --capacity` is (`1G`, `512M`, `4096`), and shown as
/// it would be typed.
#[derive(Clone, Copy, Debug)]
struct Size(u64);

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        shmring::units::parse_size(s).map(Size)
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = [(40, "T"), (30, "G"), (20, "M"), (10, "K")]
            .into_iter()
            .find(|&(shift, _)| self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift));
        match unit {
            Some((shift, u)) => write!(f, "{}{u}", self.0 >> shift),
            None => write!(f, "{}", self.0),
        }
    }
}

fn parse_count(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a whole number of at least 1"))
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v <= 86400.0)
        .ok_or_else(|| format!("{s:?} is not a number of seconds between 0 and 86400"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode between 000 and 777"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // Blocked before the coordinator's thread starts, so that it inherits the mask and the
    // signals wait for `sigwait` here.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("shmringd: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let config = CoordinatorConfig {
        namespace: args.namespace,
        socket: args.socket,
        socket_mode: args.socket_mode,
        keep_channels: args.keep_channels,
        max_channel_bytes: args.max_channel_bytes.0,
        max_channels_per_uid: args.max_channels_per_uid,
        max_bytes_per_uid: args.max_bytes_per_uid.0,
        max_connections: args.max_connections,
        max_connections_per_uid: args.max_connections_per_uid,
        message_timeout: Duration::from_secs_f64(args.message_timeout),
    };
    if let Err(e) = raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let coordinator = match Coordinator::start(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shmringd: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Waits for a signal, looking every second whether the coordinator still serves: one that
    // failed makes the daemon exit non-zero, so that a supervisor (systemd) restarts it.
    loop {
        match wait_signal(&signals, Duration::from_secs(1)) {
            Ok(Some(sig)) => {
                tracing::info!(signal = %sig, "stopping");
                break;
            }
            Ok(None) if coordinator.is_running() => continue,
            Ok(None) => {
                drop(coordinator);
                return ExitCode::FAILURE;
            }
            Err(e) => {
                tracing::error!(error = %e, "waiting for signals failed; stopping");
                break;
            }
        }
    }
    coordinator.stop();
    ExitCode::SUCCESS
}

/// Waits up to `timeout` for one of `signals` (blocked in this thread).
fn wait_signal(signals: &SigSet, timeout: Duration) -> Result<Option<Signal>, nix::Error> {
    let ts = nix::libc::timespec {
        tv_sec: timeout.as_secs() as nix::libc::time_t,
        tv_nsec: timeout.subsec_nanos() as nix::libc::c_long,
    };
    // SAFETY: sigtimedwait reads a valid signal set and timespec; the siginfo out-pointer may
    // be NULL.
    let r = unsafe { nix::libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &ts) };
    match r {
        -1 if nix::errno::Errno::last() == nix::errno::Errno::EAGAIN => Ok(None),
        -1 if nix::errno::Errno::last() == nix::errno::Errno::EINTR => Ok(None),
        -1 => Err(nix::errno::Errno::last()),
        sig => Ok(Signal::try_from(sig).ok()),
    }
}

/// Raises the soft limit on open files to the hard one: the coordinator holds a descriptor per
/// connection, per watched process and per channel.
fn raise_fd_limit() -> Result<(), nix::Error> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found trying the daemon as a new user: `--max-channel-bytes 1G` failed with "invalid
    /// digit found in string"; the flags take the sizes `shmring create` takes.
    #[test]
    fn size_flags_take_units_and_show_their_defaults_so() {
        let args = Args::try_parse_from([
            "shmringd",
            "--max-channel-bytes",
            "1G",
            "--max-bytes-per-uid",
            "2T",
        ])
        .unwrap();
        assert_eq!(args.max_channel_bytes.0, 1 << 30);
        assert_eq!(args.max_bytes_per_uid.0, 2 << 40);
        let args = Args::try_parse_from(["shmringd"]).unwrap();
        assert_eq!(args.max_channel_bytes.0, shmring::DEFAULT_MAX_CHANNEL_BYTES);
        assert_eq!(args.max_bytes_per_uid.0, shmring::DEFAULT_MAX_BYTES_PER_UID);
        assert_eq!(Size(1 << 30).to_string(), "1G");
        assert_eq!(Size(1536).to_string(), "1536");
        let e = Args::try_parse_from(["shmringd", "--max-channel-bytes", "1Q"]).unwrap_err();
        assert!(e.to_string().contains("K, M, G or T"), "{e}");
    }
}
