//! A configuration file for several channels at once (`shmring-bridge run --config FILE`), in
//! JSON:
//!
//! ```json
//! {
//!   "socket": "/run/user/1000/shmring/default.sock",
//!   "listen": ["tcp/0.0.0.0:7447"],
//!   "connect": [],
//!   "export": [
//!     { "channel": "ticks", "key": "market/ticks" },
//!     { "channel": "orders", "key": "market/orders", "group": "bridge" }
//!   ],
//!   "import": [
//!     { "key": "plant/status", "channel": "status",
//!       "create": { "kind": "spsc", "capacity": "4M", "max_frame_size": "64K" } }
//!   ]
//! }
//! ```
//!
//! Every entry runs in its own thread, all on one Zenoh session; the first that fails stops
//! the others.

use crate::{Endpoints, Error, ExportOptions, ImportOptions, Stop};
use serde::Deserialize;
use shmring::units::parse_size;
use shmring::{ChannelConfig, Client, Kind};
use std::path::{Path, PathBuf};

/// The file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The coordinator's socket (default: as every client finds it, `SHMRING_SOCKET` or the
    /// default namespace's socket).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Zenoh endpoints to connect to.
    #[serde(default)]
    pub connect: Vec<String>,
    /// Zenoh endpoints to listen on.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Channels to export.
    #[serde(default)]
    pub export: Vec<ExportEntry>,
    /// Keys to import.
    #[serde(default)]
    pub import: Vec<ImportEntry>,
}

/// One channel to export.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportEntry {
    /// The local channel.
    pub channel: String,
    /// The Zenoh key.
    pub key: String,
    /// Consume as a member of this group (a partitioned channel).
    #[serde(default)]
    pub group: Option<String>,
    /// Most frames unacknowledged (default 16384).
    #[serde(default)]
    pub window_frames: Option<u64>,
    /// Most bytes unacknowledged, with a size suffix (default "16M").
    #[serde(default)]
    pub window_bytes: Option<String>,
}

/// One key to import.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportEntry {
    /// The Zenoh key.
    pub key: String,
    /// The local channel.
    pub channel: String,
    /// Create the channel with this shape if it does not exist.
    #[serde(default)]
    pub create: Option<Create>,
}

/// The shape of a channel an import creates (as `shmring create`'s flags).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create {
    /// "spsc" (default), "mpmc" or "broadcast".
    #[serde(default)]
    pub kind: Option<String>,
    /// Bytes of frame storage, with a size suffix (default "4M").
    #[serde(default)]
    pub capacity: Option<String>,
    /// Largest frame (default "64K").
    #[serde(default)]
    pub max_frame_size: Option<String>,
    /// Largest message (default: the largest frame).
    #[serde(default)]
    pub max_message_size: Option<String>,
    /// Permission bits in octal (default "600").
    #[serde(default)]
    pub mode: Option<String>,
}

impl Create {
    /// The channel's configuration.
    pub fn channel_config(&self) -> Result<ChannelConfig, Error> {
        let bad = |what: &str, e: String| Error::Config(format!("create.{what}: {e}"));
        let mut c = match self.kind.as_deref().unwrap_or("spsc") {
            "spsc" => ChannelConfig::spsc(),
            "mpmc" => ChannelConfig::mpmc(),
            "broadcast" => ChannelConfig::broadcast(),
            k => return Err(bad("kind", format!("{k:?} is not spsc, mpmc or broadcast"))),
        };
        c.capacity =
            parse_size(self.capacity.as_deref().unwrap_or("4M")).map_err(|e| bad("capacity", e))?;
        let frame = parse_size(self.max_frame_size.as_deref().unwrap_or("64K"))
            .map_err(|e| bad("max_frame_size", e))?;
        c.max_frame_size = u32::try_from(frame)
            .map_err(|_| bad("max_frame_size", format!("{frame} is above 1G")))?;
        if let Some(m) = &self.max_message_size {
            c.max_message_size = parse_size(m).map_err(|e| bad("max_message_size", e))?;
        }
        if let Some(m) = &self.mode {
            c.mode = u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| bad("mode", format!("{m:?} is not octal permission bits")))?;
        }
        if c.kind != Kind::Spsc {
            c.max_producers = c.max_producers.max(1);
        }
        Ok(c)
    }
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let c: Config = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if c.export.is_empty() && c.import.is_empty() {
            return Err(Error::Config(format!(
                "{}: nothing to do: no \"export\" or \"import\" entry",
                path.display()
            )));
        }
        for i in &c.import {
            if let Some(create) = &i.create {
                create.channel_config()?;
            }
        }
        for e in &c.export {
            if let Some(w) = &e.window_bytes {
                parse_size(w).map_err(|err| Error::Config(format!("window_bytes: {err}")))?;
            }
        }
        Ok(c)
    }

    /// The Zenoh endpoints.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            connect: self.connect.clone(),
            listen: self.listen.clone(),
        }
    }

    /// Runs every entry, each in a thread with its own client, on one session, until all end
    /// or `stop` is set; the first that fails stops the others and is returned.
    pub fn run(&self, stop: &Stop) -> Result<(), Error> {
        let session = crate::session::open(&self.endpoints())?;
        let first_error = std::sync::Mutex::new(None::<Error>);
        let fail = |e: Error| {
            stop.set();
            first_error.lock().unwrap().get_or_insert(e);
        };
        std::thread::scope(|s| {
            for e in &self.export {
                let (session, socket, fail) = (&session, self.socket.as_deref(), &fail);
                s.spawn(move || {
                    let mut opts = ExportOptions::new(&e.channel, &e.key);
                    opts.group = e.group.clone();
                    if let Some(w) = e.window_frames {
                        opts.window_frames = w.max(1);
                    }
                    if let Some(w) = &e.window_bytes {
                        opts.window_bytes = parse_size(w).unwrap_or(opts.window_bytes);
                    }
                    let r = Client::connect(socket)
                        .map_err(Error::from)
                        .and_then(|c| crate::export(&c, session, &opts, stop));
                    match r {
                        Ok(st) => tracing::info!(channel = %e.channel, ?st, "export ended"),
                        Err(err) => fail(Error::Config(format!("export of {}: {err}", e.channel))),
                    }
                });
            }
            for i in &self.import {
                let (session, socket, fail) = (&session, self.socket.as_deref(), &fail);
                s.spawn(move || {
                    let mut opts = ImportOptions::new(&i.key, &i.channel);
                    opts.create = i.create.as_ref().map(|c| c.channel_config().unwrap());
                    let r = Client::connect(socket)
                        .map_err(Error::from)
                        .and_then(|c| crate::import(&c, session, &opts, stop));
                    match r {
                        Ok(st) => tracing::info!(key = %i.key, ?st, "import ended"),
                        Err(err) => fail(Error::Config(format!("import of {}: {err}", i.key))),
                    }
                });
            }
        });
        match first_error.into_inner().unwrap() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
