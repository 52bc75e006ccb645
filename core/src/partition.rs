//! Partitioned channels: a keyed producer, consumer-group members, and exactly-once processing
//! through checkpoints.
//!
//! A channel created with `partitions: N` (N > 1) is N SPSC rings. [`KeyedProducer::send_keyed`]
//! puts a frame in partition [`partition_of`]`(key, N)`, so the frames of one key stay in one
//! ring, in the order they were sent. The channel has one producer (each ring has one), which
//! holds every partition: per-key order then needs nothing more.
//!
//! A [`GroupConsumer`] is a member of the channel's consumer group. The coordinator assigns each
//! partition to exactly one live member and rebalances when members join, leave or die; a
//! member receives from all its partitions through the usual receive calls, and each
//! [`Received`] says which partition a frame came from. A partition taken from a dead member
//! starts with the frames that member had not released, flagged redelivered, then continues in
//! order.
//!
//! For exactly-once processing, a member [`set_checkpointed`](GroupConsumer::set_checkpointed):
//! its receives then take frames without releasing them, and
//! [`commit`](GroupConsumer::commit) saves the member's state for a partition (its
//! checkpoint, in the partition's shared memory) and then releases the frames folded into it.
//! Whoever gets the partition next starts from [`checkpoint`](GroupConsumer::checkpoint) and
//! receives exactly the frames that state does not include. See `checkpoint.rs` and
//! ARCHITECTURE.md, "Exactly-once processing".

use crate::client::Client;
use crate::consumer::{Consumer, Received};
use crate::error::{Error, Result};
use crate::layout::Role;
use crate::producer::Producer;
use crate::protocol::{Assignment, Reply, Request};
use crate::wait::WaitStrategy;
use std::time::{Duration, Instant};

/// The name of partition `i` of channel `name`: a channel of its own, opened through `name`.
pub(crate) fn partition_name(name: &str, i: u32) -> String {
    format!("{name}.p{i}")
}

/// The partition of `key` among `partitions` (0 when `partitions` is 0 or 1): FNV-1a 64 of the
/// key's bytes (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`), modulo
/// `partitions`. Stable: the same in every version, and in C (`shmring_partition_of`) and
/// Python, so that any process (or language) can tell where a key goes.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u32
}

/// The producer of a partitioned channel: one producer per partition, and a keyed send that
/// picks the partition by key. Opened with [`Client::keyed_producer`].
#[derive(Debug)]
pub struct KeyedProducer {
    parts: Vec<Producer>,
}

impl KeyedProducer {
    pub(crate) fn new(parts: Vec<Producer>) -> KeyedProducer {
        KeyedProducer { parts }
    }

    /// How many partitions the channel has.
    pub fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }

    /// The partition frames of `key` go to.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        partition_of(key, self.partitions())
    }

    /// The producer of partition `p` (for claims, batches and the other sends of a
    /// [`Producer`]); `None` past the last partition.
    pub fn partition(&mut self, p: u32) -> Option<&mut Producer> {
        self.parts.get_mut(p as usize)
    }

    /// Sends `frame` to the partition of `key`, without waiting (`WouldBlock` if its ring is
    /// full).
    #[inline]
    pub fn try_send_keyed(&mut self, key: &[u8], frame: &[u8]) -> Result<()> {
        let p = self.partition_of(key) as usize;
        self.parts[p].try_send(frame)
    }

    /// Sends `frame` to the partition of `key`, waiting as long as its ring is full.
    #[inline]
    pub fn send_keyed(&mut self, key: &[u8], frame: &[u8]) -> Result<()> {
        let p = self.partition_of(key) as usize;
        self.parts[p].send(frame)
    }

    /// Sends `frame` to the partition of `key`, waiting at most `timeout`.
    pub fn send_keyed_timeout(
        &mut self,
        key: &[u8],
        frame: &[u8],
        timeout: Duration,
    ) -> Result<()> {
        let p = self.partition_of(key) as usize;
        self.parts[p].send_timeout(frame, timeout)
    }

    /// Sets how the sends wait (every partition's producer).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.parts
            .iter_mut()
            .for_each(|p| p.set_wait_strategy(wait));
    }

    /// The largest frame.
    pub fn max_frame_size(&self) -> usize {
        self.parts.first().map_or(0, Producer::max_frame_size)
    }

    /// Finishes the stream on every partition (see [`Producer::finish`]): once the members
    /// have received everything, their receives return `Closed`.
    pub fn finish(self) -> Result<()> {
        let mut first_err = None;
        for p in self.parts {
            if let Err(e) = p.finish() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// One partition a member holds.
#[derive(Debug)]
struct Part {
    index: u32,
    consumer: Consumer,
    /// Its stream ended (`Closed`).
    closed: bool,
    /// The checkpoint found when the member took the partition.
    checkpoint: Option<Vec<u8>>,
}

/// A member of a partitioned channel's consumer group. Opened with [`Client::group_consumer`];
/// leaves the group when dropped. Used by one thread at a time, like a [`Consumer`].
///
/// The partitions assigned to it change while it runs (a member joins, leaves or dies): each
/// receive first looks whether the group's assignment moved (one load from shared memory), and
/// only then asks the coordinator. A partition given to another member is closed, its
/// unreleased frames handed back; [`revoked`](GroupConsumer::revoked) lists such partitions,
/// so that a processor drops the state it kept for them.
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    channel: String,
    member: u64,
    partitions: u32,
    epoch: u64,
    owned: Vec<Part>,
    /// Assigned, not admitted yet (its previous holder has not let go, or is being repaired).
    pending: Vec<u32>,
    revoked: Vec<u32>,
    /// The partition to read next, and how many frames were taken from it in a row.
    next: usize,
    run: u32,
    checkpointed: bool,
    /// Whether a frame was received (the mode is fixed from then on).
    received: bool,
    /// Partitions whose admission failed with an error a quick retry does not cure (a
    /// damaged partition), and when: tried again after `FAILED_RETRY`.
    failed: Vec<(u32, Instant)>,
    wait: WaitStrategy,
    last_sync: Instant,
    max_frame_size: usize,
}

/// Frames taken from one partition before the next is looked at.
const RUN: u32 = 64;
/// How often a member with partitions still to take asks the coordinator.
const RETRY: Duration = Duration::from_millis(2);
/// How long a partition that could not be taken (damaged) waits before it is tried again.
const FAILED_RETRY: Duration = Duration::from_secs(1);
/// How often a member with no partitions at all asks.
const IDLE_RETRY: Duration = Duration::from_millis(10);
/// Longest sleep of a blocked receive between two looks at the assignment.
const IDLE_SLICE: Duration = Duration::from_millis(10);

impl GroupConsumer {
    pub(crate) fn join(client: &Client, channel: &str, group: &str) -> Result<GroupConsumer> {
        let max_frame_size = client.stats(channel)?.info.max_frame_size as usize;
        let reply = client.request(&Request::JoinGroup {
            channel: channel.to_string(),
            group: group.to_string(),
        })?;
        let Reply::Joined {
            member,
            partitions,
            assignment,
        } = reply
        else {
            return Err(Error::Incompatible(format!(
                "unexpected reply from the coordinator: {reply:?}"
            )));
        };
        let mut g = GroupConsumer {
            client: client.clone(),
            channel: channel.to_string(),
            member,
            partitions,
            epoch: 0,
            owned: Vec::new(),
            pending: Vec::new(),
            revoked: Vec::new(),
            next: 0,
            run: 0,
            checkpointed: false,
            received: false,
            failed: Vec::new(),
            wait: WaitStrategy::default(),
            last_sync: Instant::now(),
            max_frame_size,
        };
        g.apply(assignment)?;
        Ok(g)
    }

    /// The member's number in its group (unique for the coordinator's life).
    pub fn member(&self) -> u64 {
        self.member
    }

    /// How many partitions the channel has.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// The partitions this member holds now.
    pub fn partitions(&self) -> Vec<u32> {
        self.owned.iter().map(|p| p.index).collect()
    }

    /// Partitions assigned to this member that it could not take yet: their previous holder
    /// has not let go (it will on its next receive) or is being repaired after its death.
    pub fn pending(&self) -> &[u32] {
        &self.pending
    }

    /// The partitions this member gave up since the last call (taken by another member):
    /// state kept for them is stale, as is the frames received from them and not committed.
    pub fn revoked(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.revoked)
    }

    /// Puts partitions taken by `revoked` back, to be reported by its next call.
    #[doc(hidden)]
    pub fn unrevoke(&mut self, mut rest: Vec<u32>) {
        rest.append(&mut self.revoked);
        self.revoked = rest;
    }

    /// The largest frame the channel carries.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Sets how a blocking receive waits between looks at the partitions: `Spin` spins; the
    /// others poll the partitions' descriptors (sleeping in the kernel until a frame comes,
    /// and at most 10 ms, to look at the assignment).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
        for p in &mut self.owned {
            p.consumer.set_wait_strategy(wait);
        }
    }

    /// Exactly-once mode: receives take frames without releasing them; [`commit`] releases
    /// them with a checkpoint of the state that includes them. Set before the first receive
    /// (`InvalidArgument` after it: frames taken in one mode would be released by the other).
    /// Commit often enough: frames not released keep their room in the ring, and a producer
    /// waits for it.
    ///
    /// [`commit`]: GroupConsumer::commit
    pub fn set_checkpointed(&mut self, on: bool) -> Result<()> {
        if self.received && on != self.checkpointed {
            return Err(Error::InvalidArgument(
                "set_checkpointed after the first receive: set it once, before receiving".into(),
            ));
        }
        self.checkpointed = on;
        Ok(())
    }

    /// Whether receives leave frames for [`commit`](GroupConsumer::commit) to release.
    pub fn is_checkpointed(&self) -> bool {
        self.checkpointed
    }

    /// The state of partition `p`'s last checkpoint, as found when this member took the
    /// partition (`None`: none was committed, or `p` is not this member's). What the member
    /// committed since is its own state.
    pub fn checkpoint(&self, p: u32) -> Option<&[u8]> {
        self.part(p)?.checkpoint.as_deref()
    }

    /// The most bytes of state a checkpoint holds (the channel's `checkpoint_size`).
    pub fn checkpoint_capacity(&self) -> usize {
        self.owned
            .first()
            .map_or(0, |p| crate::checkpoint::capacity(p.consumer.memory()))
    }

    fn part(&self, p: u32) -> Option<&Part> {
        self.owned.iter().find(|x| x.index == p)
    }

    /// Saves `state` as partition `p`'s checkpoint, covering every frame received from `p`
    /// so far, then releases those frames. `NotFound` if `p` is no longer this member's (its
    /// frames since the last commit go to the next holder, which starts from that commit).
    ///
    /// Also `NotFound` while `p` is listed by [`revoked`](GroupConsumer::revoked) (given up
    /// and taken again since): the state kept for it may include frames handed back; drain
    /// `revoked()` and start again from [`checkpoint`](GroupConsumer::checkpoint).
    pub fn commit(&mut self, p: u32, state: &[u8]) -> Result<()> {
        if self.revoked.contains(&p) {
            return Err(Error::NotFound(format!(
                "partition {p} of {:?} was given up since the state was built (see revoked())",
                self.channel
            )));
        }
        self.release_partition(p, Some(state))
    }

    /// Releases the frames taken from partition `p` (with a checkpoint of `state`, if any).
    #[doc(hidden)]
    pub fn release_partition(&mut self, p: u32, state: Option<&[u8]>) -> Result<()> {
        let part = self
            .owned
            .iter_mut()
            .find(|x| x.index == p)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "partition {p} of {:?} is not this member's (it was given to another member)",
                    self.channel
                ))
            })?;
        part.consumer.commit_held(state)
    }

    /// Receives the next frame from any of this member's partitions, without waiting:
    /// `WouldBlock` when they are all empty (or the member has none), `Closed` once the
    /// stream of every partition it holds ended and it waits for none.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<Received> {
        let held = self.checkpointed;
        self.try_recv_as(buf, held)
    }

    /// `try_recv`, the frame taken without releasing it if `held` (then `release_partition`
    /// or `commit` releases it).
    #[doc(hidden)]
    pub fn try_recv_as(&mut self, buf: &mut [u8], held: bool) -> Result<Received> {
        self.maintain()?;
        let n = self.owned.len();
        // First every partition as it is (an empty one costs a load); only when all were
        // empty, what an empty ring means (a finished stream, the pollable descriptor armed).
        for k in 0..n {
            let i = (self.next + k) % n;
            let part = &mut self.owned[i];
            let r = if held {
                part.consumer.try_take_held(buf)
            } else {
                part.consumer.try_recv_unsettled(buf)
            };
            match r {
                Ok(mut r) => {
                    r.partition = part.index;
                    part.closed = false;
                    self.received = true;
                    self.run = if k == 0 { self.run + 1 } else { 1 };
                    // A partition that keeps delivering is left after `RUN` frames, so that
                    // the others are not starved.
                    if self.run >= RUN {
                        self.next = (i + 1) % n;
                        self.run = 0;
                    } else {
                        self.next = i;
                    }
                    return Ok(r);
                }
                Err(Error::WouldBlock(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Looked at again each time: a producer that attaches after a finish continues the
        // stream.
        let mut closed = 0;
        for part in &mut self.owned {
            part.closed = match part.consumer.settle_empty_now() {
                Error::WouldBlock(_) => false,
                Error::Closed(_) => true,
                e => return Err(e),
            };
            closed += usize::from(part.closed);
        }
        self.run = 0;
        if n > 0 && closed == n && self.pending.is_empty() {
            return Err(Error::Closed(
                "the stream of every partition this member holds is finished and received".into(),
            ));
        }
        Err(Error::WouldBlock("no frame in this member's partitions"))
    }

    /// Receives the next frame, waiting as long as it takes.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Received> {
        self.recv_until(buf, None, None)
    }

    /// Receives the next frame, waiting at most `timeout` (`TimedOut` then).
    pub fn recv_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> Result<Received> {
        self.recv_until(buf, Some(Instant::now() + timeout), Some(timeout))
    }

    fn recv_until(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Received> {
        let mut spins = 0u32;
        loop {
            match self.try_recv(buf) {
                Err(Error::WouldBlock(_)) => {}
                other => return other,
            }
            let now = Instant::now();
            let left = match deadline {
                Some(d) if now >= d => {
                    return Err(Error::TimedOut(timeout.unwrap_or_default()));
                }
                Some(d) => d - now,
                None => IDLE_SLICE,
            };
            let slice = left.min(IDLE_SLICE);
            if self.wait == WaitStrategy::Spin || spins < 64 {
                spins += 1;
                std::hint::spin_loop();
                if spins.is_multiple_of(16) {
                    std::thread::yield_now();
                }
                continue;
            }
            self.idle(slice)?;
        }
    }

    /// Waits up to `slice` for a frame in one of the partitions (after a receive found none),
    /// as a blocking receive does between its attempts.
    #[doc(hidden)]
    pub fn wait_for_frames(&mut self, slice: Duration) -> Result<()> {
        if self.wait == WaitStrategy::Spin {
            std::hint::spin_loop();
            return Ok(());
        }
        self.idle(slice)
    }

    /// Sleeps until a partition may have a frame, or `slice` passed.
    fn idle(&mut self, slice: Duration) -> Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::BorrowedFd;
        let mut fds = Vec::with_capacity(self.owned.len());
        for p in &mut self.owned {
            if p.closed {
                continue;
            }
            match p.consumer.fd() {
                Ok(fd) => fds.push(fd),
                Err(_) => {
                    // No pollable descriptor (an old kernel): sleep a little instead.
                    std::thread::sleep(slice.min(Duration::from_millis(1)));
                    return Ok(());
                }
            }
        }
        // A descriptor made just now is armed only by the receive after it: look once more.
        let mut polled: Vec<PollFd> = fds
            .iter()
            // SAFETY: each descriptor belongs to a consumer of `self.owned`, which outlives
            // this call.
            .map(|&fd| PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::POLLIN))
            .collect();
        let ms = u16::try_from(slice.as_millis().max(1)).unwrap_or(u16::MAX);
        match poll(&mut polled, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(Error::os(
                "waiting on a group member's partitions",
                std::io::Error::from(e),
            )),
        }
    }

    /// Looks whether the assignment moved (one load), and asks the coordinator when it did, or
    /// when partitions assigned to this member are still to be taken.
    #[inline]
    fn maintain(&mut self) -> Result<()> {
        let moved = match self.owned.first() {
            Some(p) => p.consumer.group_epoch() != self.epoch,
            None => true,
        };
        let due = (!self.pending.is_empty() && self.last_sync.elapsed() >= RETRY)
            || (self.owned.is_empty() && self.last_sync.elapsed() >= IDLE_RETRY);
        if (moved && !self.owned.is_empty()) || due {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.last_sync = Instant::now();
        let reply = self.client.request(&Request::GroupSync {
            channel: self.channel.clone(),
            member: self.member,
        })?;
        let Reply::Assignment(a) = reply else {
            return Err(Error::Incompatible(format!(
                "unexpected reply from the coordinator: {reply:?}"
            )));
        };
        self.apply(a)
    }

    /// Gives up the partitions no longer assigned to this member and takes the new ones.
    fn apply(&mut self, a: Assignment) -> Result<()> {
        self.last_sync = Instant::now();
        self.epoch = a.epoch;
        self.failed
            .retain(|(p, at)| a.partitions.contains(p) && at.elapsed() < FAILED_RETRY);
        let mut i = 0;
        while i < self.owned.len() {
            if a.partitions.contains(&self.owned[i].index) {
                i += 1;
                continue;
            }
            let mut part = self.owned.remove(i);
            // Frames taken and not committed go back to the ring for the next holder (who
            // starts from the last checkpoint); dropping the consumer then frees its entry.
            part.consumer.abandon_held();
            tracing::debug!(channel = %self.channel, member = self.member, partition = part.index, "partition given up");
            self.revoked.push(part.index);
        }
        self.pending.retain(|p| a.partitions.contains(p));
        for &p in &a.partitions {
            if self.part(p).is_none() && !self.pending.contains(&p) {
                self.pending.push(p);
            }
        }
        let pending = std::mem::take(&mut self.pending);
        let mut first_err = None;
        for p in pending {
            if self.failed.iter().any(|&(f, _)| f == p) {
                self.pending.push(p);
                continue;
            }
            match self.take(p) {
                Ok(part) => self.owned.push(part),
                // The previous holder has not let go yet, or is being repaired.
                Err(Error::Busy(_)) => self.pending.push(p),
                // This member is not in the group any more (it left, or the coordinator
                // restarted): nothing else will work either.
                Err(e @ Error::NotFound(_)) => {
                    self.pending.push(p);
                    return Err(e);
                }
                // A damaged partition: the others are received all the same, and this one is
                // tried again after a while (reported each time it fails).
                Err(e @ (Error::Corrupted(_) | Error::Incompatible(_))) => {
                    tracing::warn!(channel = %self.channel, member = self.member, partition = p, error = %e, "cannot take a partition");
                    self.failed.push((p, Instant::now()));
                    first_err.get_or_insert(e);
                    self.pending.push(p);
                }
                // Anything else (the coordinator slow to answer, a connection lost): tried again
                // with the other pending partitions.
                Err(e) => {
                    tracing::debug!(channel = %self.channel, member = self.member, partition = p, error = %e, "partition not taken yet");
                    self.pending.push(p);
                }
            }
        }
        self.owned.sort_by_key(|p| p.index);
        if self.next >= self.owned.len() {
            self.next = 0;
        }
        // Reported once; the partitions this member could take are received meanwhile.
        first_err.map_or(Ok(()), Err)
    }

    fn take(&mut self, p: u32) -> Result<Part> {
        let mut consumer = self
            .client
            .open_partition(&self.channel, p, Role::Consumer, Some(self.member))
            .and_then(|(seg, index, owner)| seg.adopt_consumer(index, owner))?;
        consumer.set_wait_strategy(self.wait);
        let checkpoint = consumer.resume_from_checkpoint()?;
        tracing::debug!(channel = %self.channel, member = self.member, partition = p, "partition taken");
        Ok(Part {
            index: p,
            consumer,
            closed: false,
            checkpoint,
        })
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        for part in &mut self.owned {
            part.consumer.abandon_held();
        }
        self.owned.clear();
        // Queued if the connection is busy, sent with the client's next request; a process that
        // exits leaves the group anyway (the coordinator watches it).
        self.client.tell(Request::LeaveGroup {
            channel: self.channel.clone(),
            member: self.member,
        });
    }
}
