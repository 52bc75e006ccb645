//! The coordinator's record of its namespace's live channels, `<runtime dir>/<namespace>.channels`
//! in the coordinator user's private runtime directory (mode 0700, see `make_default_dir`).
//!
//! A restarted coordinator adopts a segment only if this record lists exactly that segment
//! (channel name, generation, and the memfd's inode) as live, and takes the channel's owner,
//! group and mode from here, never from the segment's header: every admitted participant holds
//! a writable descriptor of the segment and can rewrite its header (the checksum is plain FNV,
//! recomputable) or set a deleted generation's state word back to ready. Only the coordinator's
//! user can write this file (found in review of step 5).
//!
//! The file is small text, rewritten whole on every change: written to a temporary file in the
//! same directory, then renamed over the old one (a crash leaves the old record or the new one,
//! never half of one). Format, one item a line:
//!
//! ```text
//! shmring-channels 1
//! next <next generation>
//! channel <generation> <owner uid> <owner gid> <mode, octal> <dev> <ino> <name>
//! partitioned <partitions> <name>
//! ```
//! A `partitioned` line names a partitioned channel, whose partitions are the `channel` lines
//! `<name>.p0` ... (`registry/partitions.rs`).

use crate::error::{Error, Result};
use crate::protocol::validate_channel_name;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const FIRST_LINE: &str = "shmring-channels 1";

/// A live channel as the record lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub generation: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub mode: u32,
    /// The memfd's identity (`st_dev`, `st_ino`): a generation number alone could be reused
    /// if the record is lost, the inode of a segment someone still holds cannot.
    pub dev: u64,
    pub ino: u64,
}

/// What the record holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Contents {
    /// The generation the next channel created gets (generations are never reused).
    pub next_generation: u64,
    /// Live channels by name.
    pub channels: BTreeMap<String, Entry>,
    /// Partitioned channels, by name, with their partition counts.
    pub partitioned: BTreeMap<String, u32>,
}

/// Where the record of `namespace` lives in runtime directory `dir`.
pub(super) fn path(dir: &Path, namespace: &str) -> PathBuf {
    dir.join(format!("{namespace}.channels"))
}

/// Reads the record; `Ok(None)` if there is none.
pub(super) fn load(path: &Path) -> Result<Option<Contents>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::os(format!("reading {}", path.display()), e)),
    };
    parse(&text)
        .map(Some)
        .ok_or_else(|| Error::Corrupted(format!("{} is not a record of channels", path.display())))
}

fn parse(text: &str) -> Option<Contents> {
    let mut lines = text.lines();
    if lines.next()? != FIRST_LINE {
        return None;
    }
    let mut c = Contents::default();
    for line in lines {
        let mut w = line.split(' ');
        match w.next()? {
            "next" => c.next_generation = w.next()?.parse().ok()?,
            "channel" => {
                let generation = w.next()?.parse().ok()?;
                let owner_uid = w.next()?.parse().ok()?;
                let owner_gid = w.next()?.parse().ok()?;
                let mode = u32::from_str_radix(w.next()?, 8).ok()?;
                let dev = w.next()?.parse().ok()?;
                let ino = w.next()?.parse().ok()?;
                let name = w.next()?;
                validate_channel_name(name).ok()?;
                let e = Entry {
                    generation,
                    owner_uid,
                    owner_gid,
                    mode,
                    dev,
                    ino,
                };
                c.channels.insert(name.to_string(), e);
            }
            "partitioned" => {
                let n = w.next()?.parse().ok()?;
                let name = w.next()?;
                validate_channel_name(name).ok()?;
                c.partitioned.insert(name.to_string(), n);
            }
            _ => return None,
        }
        if w.next().is_some() {
            return None;
        }
    }
    Some(c)
}

fn format(c: &Contents) -> String {
    let mut s = format!("{FIRST_LINE}\nnext {}\n", c.next_generation);
    for (name, e) in &c.channels {
        s.push_str(&format!(
            "channel {} {} {} {:o} {} {} {name}\n",
            e.generation, e.owner_uid, e.owner_gid, e.mode, e.dev, e.ino
        ));
    }
    for (name, n) in &c.partitioned {
        s.push_str(&format!("partitioned {n} {name}\n"));
    }
    s
}

/// Replaces the record at `path` with `c`: a temporary file in the same directory, renamed
/// over it.
pub(super) fn save(path: &Path, c: &Contents) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("channels.{}.tmp", crate::sys::pid()));
    let write = || -> std::io::Result<()> {
        // A temporary file of this name is a stale one of ours: a coordinator of the same pid
        // (a container's, a reused pid) killed between writing and renaming it, in this
        // user's private directory.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(format(c).as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        // Our own temporary file, if it was made.
        let _ = std::fs::remove_file(&tmp);
        Error::os(format!("writing {}", path.display()), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary file left by a coordinator of the same pid that was killed before its
    /// rename does not fail the write (it failed once with "already exists", found in review).
    #[test]
    fn a_stale_temporary_file_does_not_fail_a_write() {
        let dir = std::env::temp_dir().join(format!("shmring-record-{}", crate::sys::pid()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = path(&dir, "ns");
        let tmp = p.with_extension(format!("channels.{}.tmp", crate::sys::pid()));
        std::fs::write(&tmp, "half a record").unwrap();
        let c = Contents {
            next_generation: 3,
            ..Contents::default()
        };
        save(&p, &c).unwrap();
        assert_eq!(load(&p).unwrap(), Some(c));
        assert!(!tmp.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let mut c = Contents {
            next_generation: 42,
            ..Contents::default()
        };
        c.channels.insert(
            "a-b_c".into(),
            Entry {
                generation: 41,
                owner_uid: 1000,
                owner_gid: 100,
                mode: 0o640,
                dev: 7,
                ino: 12345,
            },
        );
        c.partitioned.insert("ticks".into(), 4);
        assert_eq!(parse(&format(&c)), Some(c));
        assert_eq!(parse("shmring-channels 1\nnext 3 4\n"), None);
        assert_eq!(parse("something else\n"), None);
        assert_eq!(
            parse("shmring-channels 1\nchannel 1 0 0 600 1 2 ../x\n"),
            None
        );
    }
}
