//! Two hosts on one machine, for the two-namespace test and the benchmark: network namespaces
//! joined by a veth pair with link-local addresses (no traffic leaves them). Needs root and
//! `ip` (iproute2). Everything made is removed on drop, processes first, failure or not.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The first host's address on the veth pair.
pub const ADDR_A: &str = "169.254.77.1";
/// The second host's.
pub const ADDR_B: &str = "169.254.77.2";

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    // Relaxed: looked at in `Hosts::wait`'s loop (async-signal-safe: one store).
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM interrupt `Hosts::wait` (which then fails), so that the hosts are
/// dropped, and removed, before the program exits.
pub fn clean_up_on_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// Two namespaces, their processes, and a scratch directory.
pub struct Hosts {
    /// The first host's namespace.
    pub a: String,
    /// The second host's.
    pub b: String,
    /// Scratch directory (sockets, reports), removed on drop.
    pub dir: PathBuf,
    children: Vec<(String, Child)>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (iproute2 is needed)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why this machine cannot make the hosts (not root, no `ip`), if it cannot.
pub fn unavailable() -> Option<String> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Some("making network namespaces needs root".into());
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

impl Hosts {
    /// Makes the namespaces `shr-TAG-PID-a` and `-b`, joined by a veth pair, addresses
    /// [`ADDR_A`] and [`ADDR_B`] (/30), loopback up in each.
    pub fn new(tag: &str) -> Result<Hosts, String> {
        let id = format!("{tag}{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("shmring-bridge-{id}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let hosts = Hosts {
            a: format!("shr-{id}-a"),
            b: format!("shr-{id}-b"),
            dir,
            children: Vec::new(),
        };
        // Interface names: at most 15 bytes.
        let (va, vb) = (format!("v{}a", &id), format!("v{}b", &id));
        let (va, vb) = (
            va[va.len().saturating_sub(15)..].to_string(),
            vb[vb.len().saturating_sub(15)..].to_string(),
        );
        ip(&["netns", "add", &hosts.a])?;
        ip(&["netns", "add", &hosts.b])?;
        ip(&[
            "link", "add", &va, "netns", &hosts.a, "type", "veth", "peer", "name", &vb, "netns",
            &hosts.b,
        ])?;
        for (ns, dev, addr) in [(&hosts.a, &va, ADDR_A), (&hosts.b, &vb, ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// A file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts `program args` in namespace `ns`, its output appended to `LABEL.log` in the
    /// scratch directory; returns its index (for `kill`, `wait`).
    pub fn spawn(&mut self, ns: &str, label: &str, program: &Path, args: &[&str]) -> usize {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{label}.log")))
            .expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        self.children.push((label.to_string(), child));
        self.children.len() - 1
    }

    /// SIGKILLs process `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        let c = &mut self.children[i].1;
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Sends SIGTERM to process `i`.
    pub fn terminate(&mut self, i: usize) {
        let pid = nix::unistd::Pid::from_raw(self.children[i].1.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    /// Waits until process `i` exits, at most `limit`: its exit status, or an error that says
    /// it was still running (it is then killed).
    pub fn wait(&mut self, i: usize, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + limit;
        let (label, c) = &mut self.children[i];
        loop {
            if let Some(s) = c.try_wait().map_err(|e| e.to_string())? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!("{label} still ran after {limit:?}: killed"));
            }
            // Relaxed: as in `on_interrupt`.
            if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether process `i` still runs.
    pub fn running(&mut self, i: usize) -> bool {
        matches!(self.children[i].1.try_wait(), Ok(None))
    }

    /// The log of `label`.
    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{label}.log"))).unwrap_or_default()
    }

    /// Every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut labels: Vec<&str> = self.children.iter().map(|(l, _)| l.as_str()).collect();
        labels.sort();
        labels.dedup();
        labels
            .iter()
            .map(|l| {
                let log = self.log(l);
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {l}.log (last lines)\n{}\n", tail.join("\n"))
            })
            .collect()
    }
}

/// Waits until `path` exists, at most `limit`.
pub fn wait_for_file(path: &Path, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not appear within {limit:?}", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
