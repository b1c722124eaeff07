//! Host-local IPAM, the CNI `host-local` plugin's scheme (what k3s's flannel uses): the
//! node's pod CIDR minus its network, gateway (the bridge, first address) and broadcast
//! addresses, one file per allocated address under `<agent>/net/ipam/`, named by the
//! address and holding its owner.
//!
//! A file appears complete or not at all, and only once: it is written to a temporary name,
//! synced, then hard-linked to the address (which fails if another allocator got there
//! first). Allocations therefore survive agent crashes and restarts, and are released only
//! by [`Ipam::release`] (pod teardown, or the crash reclaim of pods that are gone).
//! Addresses are handed out round-robin after the last one reserved, as host-local does,
//! so a just-released address is not reused at once (stale ARP and conntrack entries).
//!
//! Blocking file I/O: call from a blocking thread.

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Where the last reserved address is remembered (host-local's `last_reserved_ip.0`).
const LAST_RESERVED: &str = "last_reserved_ip";

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// The pod's uid.
    pub pod_uid: String,
    /// The host end of the pod's veth pair (on the bridge).
    pub host_veth: String,
}

/// Why an address could not be allocated or released.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("no free address left in the pod range {range}: every address is allocated to a pod on this node")]
    Exhausted { range: Ipv4Net },
    #[error("the pod range {range} has no address for pods (a /30 or larger range is needed)")]
    TooSmall { range: Ipv4Net },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IpamError {
    let path = path.display().to_string();
    move |source| IpamError::Io {
        action,
        path,
        source,
    }
}

/// The gateway of `range`: its first address, held by the bridge.
pub fn gateway(range: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(range.network()).saturating_add(1))
}

/// The addresses pods may get, in order: after the gateway, before the broadcast address.
fn pod_addresses(range: Ipv4Net) -> std::ops::RangeInclusive<u32> {
    let first = u32::from(range.network()).saturating_add(2);
    let last = u32::from(range.broadcast()).saturating_sub(1);
    first..=last
}

/// The allocations of one node, in one folder.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    /// Allocations of this process in turn (the files stay exclusive without it; this
    /// only spares concurrent pod setups from racing for the same next address).
    lock: Mutex<()>,
}

impl Ipam {
    /// The allocations in `dir`, created (mode 0700) with the first one.
    pub fn new(dir: &Path) -> Ipam {
        Ipam {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        }
    }

    /// The address of `owner.pod_uid` in `range`: the one it already holds, or a free one,
    /// persisted before it is returned. Addresses the pod holds outside `range` (the node's
    /// range changed) are released.
    pub fn allocate(&self, range: Ipv4Net, owner: &Allocation) -> Result<Ipv4Addr, IpamError> {
        let _turn = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let candidates = pod_addresses(range);
        if candidates.is_empty() {
            return Err(IpamError::TooSmall { range });
        }
        let mut held = None;
        for (ip, allocation) in self.allocations()? {
            if allocation.pod_uid != owner.pod_uid {
                continue;
            }
            if range.contains(&ip) && held.is_none() && allocation == *owner {
                held = Some(ip);
            } else {
                self.remove(ip)?;
            }
        }
        if let Some(ip) = held {
            return Ok(ip);
        }
        // Round-robin: start after the last address reserved, wrap around once.
        let (first, last) = (*candidates.start(), *candidates.end());
        let start = self
            .last_reserved()
            .map(u32::from)
            .filter(|ip| candidates.contains(ip))
            .map(|ip| if ip == last { first } else { ip + 1 })
            .unwrap_or(first);
        let content = serde_json::to_vec(owner).map_err(|e| IpamError::Io {
            action: "encoding the allocation for",
            path: owner.pod_uid.clone(),
            source: io::Error::other(e),
        })?;
        for ip in (start..=last).chain(first..start).map(Ipv4Addr::from) {
            if self.try_reserve(ip, &content)? {
                self.set_last_reserved(ip);
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted { range })
    }

    /// Every allocation on disk. A file whose owner cannot be read (it never should: files
    /// appear complete) is reported with an empty pod uid, so that reclaim frees it.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, Allocation)>, IpamError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            entries => entries.map_err(io_error("reading", &self.dir))?,
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("reading", &self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let allocation = std::fs::read(entry.path())
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Allocation>(&bytes).ok())
                .unwrap_or(Allocation {
                    pod_uid: String::new(),
                    host_veth: String::new(),
                });
            found.push((ip, allocation));
        }
        found.sort_by_key(|(ip, _)| *ip);
        Ok(found)
    }

    /// Releases every address `pod_uid` holds; returns them. Releasing a pod that holds
    /// none is not an error (teardown is idempotent).
    pub fn release(&self, pod_uid: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let _turn = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut released = Vec::new();
        for (ip, allocation) in self.allocations()? {
            if allocation.pod_uid == pod_uid {
                self.remove(ip)?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Releases the allocations whose pod is not `alive` (crash reclaim: the pod's sandbox
    /// is gone, or the file's owner is unreadable); returns them, for their veths to go too.
    pub fn release_unless(
        &self,
        alive: impl Fn(&str) -> bool,
    ) -> Result<Vec<(Ipv4Addr, Allocation)>, IpamError> {
        let _turn = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut released = Vec::new();
        for (ip, allocation) in self.allocations()? {
            if allocation.pod_uid.is_empty() || !alive(&allocation.pod_uid) {
                self.remove(ip)?;
                released.push((ip, allocation));
            }
        }
        Ok(released)
    }

    /// Creates `<dir>/<ip>` with `content` unless it exists; false if it does.
    fn try_reserve(&self, ip: Ipv4Addr, content: &[u8]) -> Result<bool, IpamError> {
        let path = self.dir.join(ip.to_string());
        if path.exists() {
            return Ok(false);
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(io_error("creating", &self.dir))?;
        }
        let temp = self
            .dir
            .join(format!(".{ip}.{}", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(content)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io_error("writing", &temp)(e));
        }
        let linked = std::fs::hard_link(&temp, &path);
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                self.sync_dir()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_error("reserving", &path)(e)),
        }
    }

    fn remove(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("releasing", &path)(e)),
            _ => self.sync_dir(),
        }
    }

    /// Makes creations and removals in the folder durable.
    fn sync_dir(&self) -> Result<(), IpamError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("syncing", &self.dir))
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        std::fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Best effort: losing it only restarts the round-robin at the range's start.
    fn set_last_reserved(&self, ip: Ipv4Addr) {
        let path = self.dir.join(LAST_RESERVED);
        let temp = self.dir.join(format!(".{LAST_RESERVED}.tmp"));
        if std::fs::write(&temp, ip.to_string()).is_ok() {
            let _ = std::fs::rename(&temp, &path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str) -> Allocation {
        Allocation {
            pod_uid: uid.to_string(),
            host_veth: format!("veth{uid}"),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_bridge_gets_the_first_address_and_pods_the_rest() {
        let range: Ipv4Net = "10.42.3.0/24".parse().unwrap();
        assert_eq!(gateway(range), Ipv4Addr::new(10, 42, 3, 1));
        let addresses = pod_addresses(range);
        assert_eq!(
            Ipv4Addr::from(*addresses.start()),
            Ipv4Addr::new(10, 42, 3, 2)
        );
        assert_eq!(
            Ipv4Addr::from(*addresses.end()),
            Ipv4Addr::new(10, 42, 3, 254)
        );
    }

    #[test]
    fn allocations_are_persisted_one_file_per_address_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let range: Ipv4Net = "10.42.0.0/24".parse().unwrap();
        let ipam = Ipam::new(&dir.path().join("ipam"));
        let a = ipam.allocate(range, &owner("a")).unwrap();
        let b = ipam.allocate(range, &owner("b")).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 42, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 42, 0, 3));
        // The same pod asking again (agent restart) keeps its address.
        assert_eq!(ipam.allocate(range, &owner("a")).unwrap(), a);
        assert_eq!(files(&dir.path().join("ipam")), ["10.42.0.2", "10.42.0.3"]);
        let content = std::fs::read_to_string(dir.path().join("ipam/10.42.0.2")).unwrap();
        assert_eq!(content, r#"{"podUid":"a","hostVeth":"vetha"}"#);

        let reopened = Ipam::new(&dir.path().join("ipam"));
        assert_eq!(
            reopened.allocations().unwrap(),
            vec![(a, owner("a")), (b, owner("b"))]
        );
        assert_eq!(reopened.allocate(range, &owner("b")).unwrap(), b);
    }

    #[test]
    fn released_addresses_are_reused_only_after_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let range: Ipv4Net = "10.42.0.0/29".parse().unwrap(); // pods: .2 to .6
        let ipam = Ipam::new(dir.path());
        let a = ipam.allocate(range, &owner("a")).unwrap();
        assert_eq!(ipam.release("a").unwrap(), vec![a]);
        assert!(
            ipam.release("a").unwrap().is_empty(),
            "release is idempotent"
        );
        assert!(files(dir.path()).is_empty());
        // Round-robin: the next pod gets .3, not the just-released .2.
        assert_eq!(
            ipam.allocate(range, &owner("b")).unwrap(),
            Ipv4Addr::new(10, 42, 0, 3)
        );
    }

    #[test]
    fn a_full_range_is_an_error_until_an_address_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let range: Ipv4Net = "10.42.0.0/29".parse().unwrap();
        let ipam = Ipam::new(dir.path());
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(ipam.allocate(range, &owner(&i.to_string())).unwrap());
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 5);
        let error = ipam.allocate(range, &owner("late")).unwrap_err();
        assert!(matches!(error, IpamError::Exhausted { .. }), "{error}");
        assert!(error.to_string().contains("10.42.0.0/29"), "{error}");
        let freed = ipam.release("3").unwrap();
        assert_eq!(ipam.allocate(range, &owner("late")).unwrap(), freed[0]);

        let tiny: Ipv4Net = "10.42.0.0/31".parse().unwrap();
        assert!(matches!(
            ipam.allocate(tiny, &owner("x")),
            Err(IpamError::TooSmall { .. })
        ));
    }

    #[test]
    fn an_address_outside_a_new_range_is_given_up_for_one_inside() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path());
        let old = ipam
            .allocate("10.42.0.0/24".parse().unwrap(), &owner("a"))
            .unwrap();
        let new = ipam
            .allocate("10.42.7.0/24".parse().unwrap(), &owner("a"))
            .unwrap();
        assert_ne!(old, new);
        assert_eq!(ipam.allocations().unwrap(), vec![(new, owner("a"))]);
    }

    #[test]
    fn reclaim_releases_the_addresses_of_pods_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let range: Ipv4Net = "10.42.0.0/24".parse().unwrap();
        let ipam = Ipam::new(dir.path());
        let kept = ipam.allocate(range, &owner("running")).unwrap();
        let gone = ipam.allocate(range, &owner("gone")).unwrap();
        // A file whose owner cannot be read belongs to nobody.
        std::fs::write(dir.path().join("10.42.0.99"), "garbage").unwrap();
        let released = ipam.release_unless(|uid| uid == "running").unwrap();
        assert_eq!(
            released,
            vec![
                (gone, owner("gone")),
                (
                    Ipv4Addr::new(10, 42, 0, 99),
                    Allocation {
                        pod_uid: String::new(),
                        host_veth: String::new()
                    }
                )
            ]
        );
        assert_eq!(ipam.allocations().unwrap(), vec![(kept, owner("running"))]);
    }

    #[test]
    fn concurrent_allocators_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let range: Ipv4Net = "10.42.0.0/26".parse().unwrap(); // 61 pod addresses
                                                              // Two Ipam values on one folder stand for two processes (a restarted agent racing
                                                              // a dying one): only the files keep them apart.
        let first = std::sync::Arc::new(Ipam::new(dir.path()));
        let second = std::sync::Arc::new(Ipam::new(dir.path()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ipam = if t % 2 == 0 { &first } else { &second }.clone();
                std::thread::spawn(move || {
                    (0..15)
                        .map(|i| ipam.allocate(range, &owner(&format!("{t}-{i}"))).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 60);
        assert_eq!(files(dir.path()).len(), 60);
        assert!(
            !std::fs::read_dir(dir.path()).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".10.")),
            "no temporary file is left behind"
        );
    }
}
