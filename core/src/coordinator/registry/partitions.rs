//! Partitioned channels and their consumer groups, as the coordinator keeps them.
//!
//! A partitioned channel `NAME` of N partitions is N SPSC channels, `NAME.p0` to
//! `NAME.p<N-1>`, each an ordinary channel of the registry (admission, crash repair and
//! statistics are theirs), created and deleted together and opened only through the parent:
//! its producer opens every partition ([`Request::OpenPartition`] without a member), a
//! consumer-group member the partitions the group's assignment gives it.
//!
//! One group reads a channel (a partition's ring has one reader position), the first to join
//! it. The assignment is sticky: when members join or leave, each keeps the partitions it has
//! up to its fair share (`N / members`, the first `N % members` members by number one more),
//! and the rest go to members below their share. Every change bumps the group's epoch, stored
//! in every partition's repair line, which members look at between receives: a member whose
//! partition was given to another closes it (handing its unreleased frames back; the close
//! bumps the epoch again), and the new owner's admission waits (`Busy`) until it has, or until
//! the coordinator repaired it after the old owner's death (the new owner asks again every
//! 2 ms meanwhile).

use super::*;
use crate::protocol::{Assignment, PartitionInfo};

/// Most members of one group: each costs the coordinator a rebalance on every change.
const MAX_MEMBERS: usize = 1024;

/// A partitioned channel.
pub(super) struct Partitioned {
    pub(super) partitions: u32,
    pub(super) group: Option<Group>,
}

/// The consumer group reading a partitioned channel.
pub(super) struct Group {
    name: String,
    /// Members by number, with their pids.
    members: BTreeMap<u64, u32>,
    /// The member each partition is assigned to.
    target: Vec<Option<u64>>,
    epoch: u64,
}

use crate::partition::partition_name;

impl Group {
    /// Reassigns the partitions over the members (sticky: see the module docs).
    fn rebalance(&mut self) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        let n = self.target.len();
        if ids.is_empty() {
            self.target.iter_mut().for_each(|t| *t = None);
            return;
        }
        let quota = |i: usize| n / ids.len() + usize::from(i < n % ids.len());
        let mut have: BTreeMap<u64, usize> = ids.iter().map(|&id| (id, 0)).collect();
        for t in &mut self.target {
            let keep = t.and_then(|id| {
                let i = ids.iter().position(|&m| m == id)?;
                let c = have.get_mut(&id)?;
                (*c < quota(i)).then(|| *c += 1)
            });
            if keep.is_none() {
                *t = None;
            }
        }
        for t in &mut self.target {
            if t.is_none() {
                let (i, id) = ids
                    .iter()
                    .enumerate()
                    .find(|(i, id)| have[id] < quota(*i))
                    .expect("the quotas add up to the partitions");
                *have.get_mut(id).expect("every member counted") += 1;
                let _ = i;
                *t = Some(*id);
            }
        }
        self.epoch += 1;
    }

    fn assignment(&self, member: u64) -> Assignment {
        Assignment {
            epoch: self.epoch,
            partitions: (0..self.target.len() as u32)
                .filter(|&p| self.target[p as usize] == Some(member))
                .collect(),
        }
    }
}

impl Registry {
    /// The partitioned channel `name`, if it is one.
    fn partitioned(&self, name: &str) -> Option<&Partitioned> {
        self.partitioned.get(name)
    }

    /// The partitioned channel that channel `name` is a partition of.
    pub(super) fn parent_of<'n>(&self, name: &'n str) -> Option<&'n str> {
        let (parent, p) = name.rsplit_once(".p")?;
        let i: u32 = p.parse().ok()?;
        let part = self.partitioned.get(parent)?;
        (i < part.partitions && partition_name(parent, i) == name).then_some(parent)
    }

    /// Creates partitioned channel `name`: its partitions, as channels of their own.
    pub(super) fn create_partitioned(
        &mut self,
        peer: &Peer,
        name: &str,
        config: &ChannelConfig,
    ) -> Result<ChannelInfo> {
        validate_channel_name(name)?;
        config.check_partitions()?;
        if self.channels.contains_key(name) || self.partitioned.contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "channel {name:?} exists; delete it first to change its shape"
            )));
        }
        let part = config.partition_config();
        let names: Vec<String> = (0..config.partitions)
            .map(|i| partition_name(name, i))
            .collect();
        for n in &names {
            validate_channel_name(n)?;
            if self.channels.contains_key(n) || self.pending.contains_key(n) {
                return Err(Error::AlreadyExists(format!(
                    "channel {n:?} exists, the name of partition {} of {name:?}: delete it or \
                     choose another name",
                    n.rsplit_once(".p").map_or("?", |(_, i)| i)
                )));
            }
        }
        let mut made = Vec::new();
        for n in &names {
            match self.create(peer, n, &part) {
                Ok(_) => made.push(n.clone()),
                Err(e) => {
                    for m in made {
                        let _ = self.delete(peer, &m);
                    }
                    return Err(e);
                }
            }
        }
        self.partitioned.insert(
            name.to_string(),
            Partitioned {
                partitions: config.partitions,
                group: None,
            },
        );
        self.persist_or_log("a partitioned channel's creation");
        let mut info = self.partitioned_info(name)?;
        info.name = name.to_string();
        Ok(info)
    }

    /// Deletes partitioned channel `name` and its partitions.
    pub(super) fn delete_partitioned(&mut self, peer: &Peer, name: &str) -> Result<()> {
        let n = self.partitioned[name].partitions;
        // The owner, from any partition still there, served or awaiting its users.
        let owner = (0..n).find_map(|i| {
            let p = partition_name(name, i);
            self.channels
                .get(&p)
                .map(|c| c.seg.origin().owner_uid)
                .or_else(|| self.pending.get(&p).map(|e| e.owner_uid))
        });
        if let Some(owner) = owner
            && peer.uid != 0
            && peer.uid != owner
        {
            return Err(Error::PermissionDenied(format!(
                "channel {name:?} belongs to uid {owner}; only its owner or root may delete it"
            )));
        }
        for i in 0..n {
            let p = partition_name(name, i);
            if self.channels.contains_key(&p) || self.pending.contains_key(&p) {
                self.delete(peer, &p)?;
            }
        }
        self.partitioned.remove(name);
        self.persist_or_log("a partitioned channel's delete");
        Ok(())
    }

    /// What `list` says of partitioned channel `name`: its first partition's shape, with the
    /// depths and participants of all summed.
    pub(super) fn partitioned_info(&self, name: &str) -> Result<ChannelInfo> {
        let part = self
            .partitioned(name)
            .ok_or_else(|| Error::NotFound(format!("no partitioned channel {name:?}")))?;
        let mut info: Option<ChannelInfo> = None;
        for i in 0..part.partitions {
            let p = self.channel(&partition_name(name, i))?;
            let pi = super::info(name, &p.seg);
            match &mut info {
                None => info = Some(pi),
                Some(t) => {
                    t.depth += pi.depth;
                    t.producers += pi.producers;
                    t.consumers += pi.consumers;
                }
            }
        }
        let mut info =
            info.ok_or_else(|| Error::NotFound(format!("{name:?} has no partitions")))?;
        info.partitions = part.partitions;
        Ok(info)
    }

    /// `stat` of partitioned channel `name`: the partitions' counters summed, each partition
    /// with its owner, and the group.
    pub(super) fn partitioned_stats(&self, peer: &Peer, name: &str) -> Result<ChannelStats> {
        let part = self.partitioned(name).expect("checked by the caller");
        let mut total: Option<ChannelStats> = None;
        let mut partitions = Vec::new();
        for i in 0..part.partitions {
            let pname = partition_name(name, i);
            let s = self.stats(peer, &pname)?;
            let owner = part.group.as_ref().and_then(|g| {
                let m = g.target[i as usize]?;
                Some((m, g.members[&m]))
            });
            let mem = &self.channels[&pname].seg.mem;
            partitions.push(PartitionInfo {
                index: i,
                depth: s.info.depth,
                frames_in: s.frames_in,
                frames_out: s.frames_out,
                owner,
                checkpoints: crate::checkpoint::count(mem),
            });
            match &mut total {
                None => total = Some(s),
                Some(t) => {
                    t.info.depth += s.info.depth;
                    t.info.producers += s.info.producers;
                    t.info.consumers += s.info.consumers;
                    t.frames_in += s.frames_in;
                    t.bytes_in += s.bytes_in;
                    t.frames_out += s.frames_out;
                    t.bytes_out += s.bytes_out;
                    t.rate_in += s.rate_in;
                    t.rate_out += s.rate_out;
                    t.participants.extend(s.participants);
                    t.repairs += s.repairs;
                    t.redelivered += s.redelivered;
                    t.skipped += s.skipped;
                }
            }
        }
        let mut s = total.ok_or_else(|| Error::NotFound(format!("{name:?} has no partitions")))?;
        s.info.name = name.to_string();
        s.info.partitions = part.partitions;
        s.partitions = partitions;
        s.group = part.group.as_ref().map(|g| {
            (
                g.name.clone(),
                g.members.iter().map(|(&m, &pid)| (m, pid)).collect(),
            )
        });
        Ok(s)
    }

    /// Admits the caller to a partition: as its producer, or as the consumer of the group
    /// member the partition is assigned to.
    pub(super) fn open_partition(
        &mut self,
        epoll: &Epoll,
        peer: &Peer,
        channel: &str,
        partition: u32,
        role: Role,
        member: Option<u64>,
    ) -> Result<Answer> {
        validate_channel_name(channel)?;
        let part = self
            .partitioned(channel)
            .ok_or_else(|| Error::NotFound(format!("no partitioned channel {channel:?}")))?;
        if partition >= part.partitions {
            return Err(Error::InvalidArgument(format!(
                "channel {channel:?} has {} partitions; there is no partition {partition}",
                part.partitions
            )));
        }
        match (role, member) {
            (Role::Producer, None) => {}
            (Role::Consumer, Some(m)) => {
                let g = part
                    .group
                    .as_ref()
                    .filter(|g| g.members.get(&m) == Some(&peer.pid));
                let Some(g) = g else {
                    return Err(Error::NotFound(format!(
                        "member {m} is not in the group of channel {channel:?} (it left, or \
                         the coordinator restarted): join the group again"
                    )));
                };
                if g.target[partition as usize] != Some(m) {
                    return Err(Error::Busy(format!(
                        "partition {partition} of {channel:?} is assigned to another member now"
                    )));
                }
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "a partition's consumer is opened for a group member, its producer for none"
                        .into(),
                ));
            }
        }
        self.open_entry(epoll, peer, &partition_name(channel, partition), role)
    }

    /// Adds the caller to group `group` of partitioned channel `channel`.
    pub(super) fn join_group(&mut self, peer: &Peer, channel: &str, group: &str) -> Result<Reply> {
        validate_channel_name(channel)?;
        crate::segment::validate_name(group).map_err(|_| {
            Error::InvalidArgument(format!(
                "group name {group:?}: {}",
                "must be 1 to 255 characters, each a letter, a digit, '.', '_' or '-'"
            ))
        })?;
        let first = self.channel(&partition_name(channel, 0)).map_err(|_| {
            Error::NotFound(format!(
                "no partitioned channel {channel:?} (create it with partitions, e.g. `shmring create {channel} --partitions 4`)"
            ))
        })?;
        if !permits(peer, &first.seg.origin(), 6) {
            return Err(Error::PermissionDenied(format!(
                "channel {channel:?} does not admit uid {} gid {}",
                peer.uid, peer.gid
            )));
        }
        if !self.procs.contains_key(&peer.pid) {
            return Err(Error::Unavailable(format!(
                "pid {} is not being watched",
                peer.pid
            )));
        }
        let Some(part) = self.partitioned.get_mut(channel) else {
            return Err(Error::NotFound(format!(
                "channel {channel:?} is not partitioned: open it with a plain consumer"
            )));
        };
        let n = part.partitions;
        // Above any epoch a group of an earlier coordinator stored in the partitions: a member
        // of that group must see the epoch move.
        let stored = (0..n)
            .filter_map(|i| self.channels.get(&partition_name(channel, i)))
            // Relaxed: only compared, and stored again below with Release.
            .map(|c| c.seg.mem.repair_line().group_epoch.load(Relaxed))
            .max()
            .unwrap_or(0);
        let part = self.partitioned.get_mut(channel).expect("looked up above");
        let g = part.group.get_or_insert_with(|| Group {
            name: group.to_string(),
            members: BTreeMap::new(),
            target: vec![None; n as usize],
            epoch: stored,
        });
        if g.name != group {
            return Err(Error::Busy(format!(
                "channel {channel:?} is read by consumer group {:?}: a partitioned channel serves \
                 one group (each partition is a ring with one reader position, and the \
                 checkpoints in it are that group's); join {:?}, or create another channel for \
                 another group",
                g.name, g.name
            )));
        }
        if g.members.len() >= MAX_MEMBERS {
            return Err(Error::Busy(format!(
                "the group of channel {channel:?} has {MAX_MEMBERS} members, the most one group takes"
            )));
        }
        let member = self.next_member;
        self.next_member += 1;
        g.members.insert(member, peer.pid);
        g.rebalance();
        let assignment = g.assignment(member);
        tracing::info!(channel = %channel, group = %group, member, pid = peer.pid, partitions = ?assignment.partitions, "group member joined");
        self.publish_epoch(channel);
        Ok(Reply::Joined {
            member,
            partitions: n,
            assignment,
        })
    }

    /// The partitions assigned to `member` now.
    pub(super) fn group_sync(&self, peer: &Peer, channel: &str, member: u64) -> Result<Reply> {
        let g = self
            .partitioned(channel)
            .and_then(|p| p.group.as_ref())
            .filter(|g| g.members.get(&member) == Some(&peer.pid))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "member {member} is not in the group of channel {channel:?} (it left, or the \
                     coordinator restarted): join the group again"
                ))
            })?;
        Ok(Reply::Assignment(g.assignment(member)))
    }

    /// Takes `member` out of its group.
    pub(super) fn leave_group(&mut self, peer: &Peer, channel: &str, member: u64) {
        let Some(g) = self
            .partitioned
            .get_mut(channel)
            .and_then(|p| p.group.as_mut())
        else {
            return;
        };
        if g.members.get(&member) == Some(&peer.pid) {
            g.members.remove(&member);
            g.rebalance();
            tracing::info!(channel = %channel, member, "group member left");
            self.publish_epoch(channel);
        }
    }

    /// Process `pid` is gone: its group memberships end.
    pub(super) fn members_exited(&mut self, pid: u32) {
        let mut changed = Vec::new();
        for (name, p) in &mut self.partitioned {
            if let Some(g) = &mut p.group
                && g.members.values().any(|&m| m == pid)
            {
                g.members.retain(|_, m| *m != pid);
                g.rebalance();
                tracing::info!(channel = %name, pid, "group member died: partitions rebalanced");
                changed.push(name.clone());
            }
        }
        for name in changed {
            self.publish_epoch(&name);
        }
    }

    /// A partition's consumer closed, or a repair finished: the group's members look again
    /// (a member waiting to be admitted to that partition is, now).
    pub(super) fn partition_freed(&mut self, name: &str) {
        if let Some(parent) = self.parent_of(name).map(str::to_string)
            && let Some(g) = self
                .partitioned
                .get_mut(&parent)
                .and_then(|p| p.group.as_mut())
        {
            g.epoch += 1;
            self.publish_epoch(&parent);
        }
    }

    /// Whether process `pid` is a member of a consumer group.
    pub(super) fn is_member(&self, pid: u32) -> bool {
        self.partitioned
            .values()
            .filter_map(|p| p.group.as_ref())
            .any(|g| g.members.values().any(|&m| m == pid))
    }

    /// Stores the group's epoch in every partition of `channel`.
    pub(super) fn publish_epoch(&self, channel: &str) {
        let Some(p) = self.partitioned(channel) else {
            return;
        };
        let Some(epoch) = p.group.as_ref().map(|g| g.epoch) else {
            // No group yet: whatever an earlier coordinator's group stored stays, and the
            // first group's epochs start above it.
            return;
        };
        for i in 0..p.partitions {
            if let Some(ch) = self.channels.get(&partition_name(channel, i)) {
                // Release: a member that sees the new epoch and asks finds the new assignment
                // (it asks over the socket, which orders it anyway); the store is what it polls.
                ch.seg.mem.repair_line().group_epoch.store(epoch, Release);
                // A member asleep on the partition (waiting for frames) looks at once.
                crate::wait::wake_consumers(&ch.seg.mem);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: usize) -> Group {
        Group {
            name: "g".into(),
            members: BTreeMap::new(),
            target: vec![None; n],
            epoch: 0,
        }
    }

    #[test]
    fn the_assignment_is_fair_and_sticky() {
        let mut g = group(4);
        g.members.insert(1, 10);
        g.rebalance();
        assert_eq!(g.assignment(1).partitions, [0, 1, 2, 3]);
        g.members.insert(2, 11);
        g.rebalance();
        assert_eq!(g.assignment(1).partitions, [0, 1]);
        assert_eq!(g.assignment(2).partitions, [2, 3]);
        g.members.insert(3, 12);
        g.rebalance();
        let sizes: Vec<usize> = [1, 2, 3]
            .iter()
            .map(|&m| g.assignment(m).partitions.len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 4);
        assert!(sizes.iter().all(|&s| (1..=2).contains(&s)));
        // Member 1 keeps what it had up to its share.
        let before2 = g.assignment(2).partitions;
        g.members.remove(&1);
        g.rebalance();
        let after2 = g.assignment(2).partitions;
        assert!(before2.iter().all(|p| after2.contains(p)));
        assert_eq!(
            g.assignment(2).partitions.len() + g.assignment(3).partitions.len(),
            4
        );
        g.members.clear();
        g.rebalance();
        assert!(g.target.iter().all(Option::is_none));
    }
}
