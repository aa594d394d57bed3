//! Loading, attaching and pinning the eBPF programs, writing the rule tables
//! they read, and looking up where a redirected connection was going.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/interceptor`):
//!
//! ```text
//! maps/IC_CONFIG, maps/IC_INTERCEPT, ...   the maps (shared by every program instance)
//! links/<cgroup id>/connect4|connect6|sock_ops   one bpf_link per program and cgroup
//! links/uids/connect4|connect6|sock_ops    the uid variants on the cgroup2 root (`attach --uid`)
//! ```
//!
//! Attached uids live in the pinned `IC_UIDS` map and, so that they survive
//! a reboot (bpffs does not), in `<state_dir>/attached-uids.json`; a
//! starting daemon restores the union of both.
//!
//! Origins are only served when they are fresh: written by this daemon run
//! (`Config::generation`, bumped at every start, and both origin maps are
//! emptied at start), at most [`MAX_ORIGIN_AGE`] before the accept, and in
//! the daemon's own network namespace (part of the key).
//!
//! Links are pinned, so an attachment outlives the daemon: while the daemon
//! is down the programs keep rewriting intercepted connects to the proxy
//! port, where nothing listens, and those connects fail (fail closed). A
//! restarted daemon re-attaches fresh program instances and atomically
//! renames their pins over the old ones, so upgrades take effect without a
//! window in which the cgroup is unattached.

pub mod bpffs;
pub mod cgroup;
pub mod uids;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{Array, HashMap, LpmTrie, MapData, MapInfo, PerCpuArray, lpm_trie::Key};
use aya::programs::links::{CgroupAttachMode, FdLink};
use aya::programs::{CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use interceptor_common::{
    Config as BpfConfig, Origin, RuleKey, RuleValue, TupleKey, counters, maps, programs,
};
use policy::{EgressAllow, InterceptRule};
use thiserror::Error;

pub use cgroup::{Cgroup2, CgroupError};
pub use uids::UidAttachment;

/// Longest time between a redirected `connect()` and the proxy's `accept()`
/// for which the recorded origin is still served. A connection that waited
/// longer in the accept queue is closed instead (the client sees a reset).
pub const MAX_ORIGIN_AGE: Duration = Duration::from_secs(30);

/// The eBPF object built from `interceptor-ebpf` by build.rs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

const LINK_NAMES: [&str; 3] = ["connect4", "connect6", "sock_ops"];
/// Directory (under `links/`) of the uid programs' links on the cgroup2 root.
const UID_LINKS: &str = "uids";

#[derive(Debug, Error)]
pub enum RedirectError {
    #[error(
        "permission denied loading eBPF programs: run the daemon as root (it needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_PERFMON), e.g. through systemd/interceptor.service"
    )]
    NotPermitted,
    #[error(
        "this kernel cannot attach cgroup socket programs ({0}); it needs CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF and kernel >= 5.7"
    )]
    Unsupported(String),
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("updating eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("attaching to cgroup {cgroup}: {message}")]
    Attach { cgroup: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error(transparent)]
    Uids(#[from] uids::UidStoreError),
    #[error(
        "cannot learn the daemon's network namespace cookie (SO_NETNS_COOKIE needs kernel >= 5.14): {0}"
    )]
    NetnsCookie(std::io::Error),
}

/// Where the daemon listens and how its own sockets are marked.
#[derive(Debug, Clone)]
pub struct RedirectOptions {
    pub pin_dir: PathBuf,
    pub proxy_port: u16,
    pub socket_mark: u32,
    /// File that keeps the attached uids across reboots.
    pub uid_state: PathBuf,
}

/// A cgroup with the programs attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub id: u64,
    pub path: String,
}

/// Counters kept by the kernel programs (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KernelCounters {
    pub redirected: u64,
    pub egress_denied: u64,
    pub passed: u64,
    pub origin_store_failed: u64,
    pub rekeyed: u64,
    pub direct_refused: u64,
    pub netns_refused: u64,
}

/// Shared handle for looking up (and consuming) the origin of an accepted
/// connection.
#[derive(Clone)]
pub struct OriginTable {
    map: Arc<Mutex<HashMap<MapData, TupleKey, Origin>>>,
    /// The daemon's network namespace: only origins recorded there match.
    netns: u64,
    /// This daemon run's generation.
    generation: u32,
}

/// Why a recorded origin is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Written for an earlier daemon run.
    OtherGeneration,
    /// Older than [`MAX_ORIGIN_AGE`] (or stamped in the future).
    TooOld,
}

/// Whether an origin may be served now (`now_ns` on CLOCK_MONOTONIC, the
/// clock of `bpf_ktime_get_ns`).
pub fn freshness(origin: &Origin, generation: u32, now_ns: u64) -> Result<(), Stale> {
    if origin.generation != generation {
        return Err(Stale::OtherGeneration);
    }
    let max = MAX_ORIGIN_AGE.as_nanos() as u64;
    match now_ns.checked_sub(origin.created_ns) {
        Some(age) if age <= max => Ok(()),
        _ => Err(Stale::TooOld),
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        // Cannot happen on Linux; u64::MAX makes every origin too old.
        Err(_) => u64::MAX,
    }
}

impl OriginTable {
    /// The origin of a connection the proxy accepted from `peer` on `local`,
    /// removed from the table so it cannot be used twice. None when there is
    /// none for this daemon's network namespace, or it is stale.
    pub fn take(&self, peer: SocketAddr, local: SocketAddr) -> Option<Origin> {
        let key = TupleKey {
            src_addr: mapped(peer.ip()),
            src_port: peer.port(),
            dst_port: local.port(),
            _pad: 0,
            netns: self.netns,
        };
        let mut map = self.map.lock().ok()?;
        let origin = map.get(&key, 0).ok()?;
        // Best effort: the entry is LRU anyway.
        let _ = map.remove(&key);
        drop(map);
        match freshness(&origin, self.generation, monotonic_ns()) {
            Ok(()) => Some(origin),
            Err(why) => {
                tracing::warn!(%peer, ?why, generation = origin.generation, "stale origin for an accepted connection; not serving it");
                None
            }
        }
    }
}

/// An address in the 16-byte form the kernel side uses (v4 → v4-mapped).
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => interceptor_common::v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address an origin refers to, unmapped back to IPv4 when it is one.
pub fn origin_addr(origin: &Origin) -> SocketAddr {
    let v6 = std::net::Ipv6Addr::from(origin.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, origin.port)
}

pub struct Redirector {
    ebpf: Ebpf,
    opts: RedirectOptions,
    cgroup: Cgroup2,
    attached: BTreeMap<u64, Attached>,
    origins: OriginTable,
    /// Values written into the config entry besides the rules.
    generation: u32,
    netns_cookie: u64,
    uids: BTreeMap<u32, UidAttachment>,
}

/// (name, map type, key size, value size) of every pinned map, as the object
/// declares them. A pinned map from another build with a different shape
/// is unpinned before loading (its old programs keep their own reference
/// until their links are replaced).
fn expected_maps() -> [(&'static str, u32, usize, usize); 7] {
    use aya::maps::MapType;
    use std::mem::size_of;
    let lpm_key = size_of::<u32>() + size_of::<RuleKey>();
    [
        (
            maps::CONFIG,
            MapType::Array as u32,
            4,
            size_of::<BpfConfig>(),
        ),
        (
            maps::INTERCEPT,
            MapType::LpmTrie as u32,
            lpm_key,
            size_of::<RuleValue>(),
        ),
        (
            maps::EGRESS_ALLOW,
            MapType::LpmTrie as u32,
            lpm_key,
            size_of::<RuleValue>(),
        ),
        (
            maps::ORIGIN_BY_COOKIE,
            MapType::LruHash as u32,
            8,
            size_of::<Origin>(),
        ),
        (
            maps::ORIGIN_BY_TUPLE,
            MapType::LruHash as u32,
            size_of::<TupleKey>(),
            size_of::<Origin>(),
        ),
        (maps::COUNTERS, MapType::PerCpuArray as u32, 4, 8),
        (maps::UIDS, MapType::Hash as u32, 4, 4),
    ]
}

fn unpin_incompatible_maps(maps_dir: &Path) -> Result<(), RedirectError> {
    for (name, ty, key, value) in expected_maps() {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let same = MapInfo::from_pin(&path)
            .map(|i| {
                i.map_type().map(|t| t as u32).ok() == Some(ty)
                    && i.key_size() as usize == key
                    && i.value_size() as usize == value
            })
            .unwrap_or(false);
        if !same {
            tracing::warn!(
                map = name,
                "pinned map has another layout (older build); replacing it"
            );
            std::fs::remove_file(&path).map_err(|source| RedirectError::Io {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// The cookie of the calling process's network namespace.
fn own_netns_cookie() -> Result<u64, RedirectError> {
    use std::os::fd::AsRawFd;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(RedirectError::NetnsCookie)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a u64 that
    // outlives the call; the fd is open for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(RedirectError::NetnsCookie(std::io::Error::last_os_error()));
    }
    if len as usize != std::mem::size_of::<u64>() || cookie == 0 {
        return Err(RedirectError::NetnsCookie(std::io::Error::other(
            "unexpected SO_NETNS_COOKIE answer",
        )));
    }
    Ok(cookie)
}

impl Redirector {
    /// Loads the programs (reusing maps pinned by an earlier run) without
    /// attaching them anywhere yet. Starts a new generation: the config
    /// entry is rewritten (intercepted connects refused until
    /// `apply_rules(.., ready = true)`) and both origin maps are emptied, so
    /// nothing recorded before this start can be served.
    pub fn load(opts: RedirectOptions, cgroup: Cgroup2) -> Result<Redirector, RedirectError> {
        bpffs::ensure(&opts.pin_dir)?;
        let maps_dir = opts.pin_dir.join("maps");
        let links_dir = opts.pin_dir.join("links");
        for d in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(d).map_err(|source| RedirectError::Io {
                path: d.clone(),
                source,
            })?;
        }
        unpin_incompatible_maps(&maps_dir)?;
        let netns_cookie = own_netns_cookie()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)
            .map_err(classify_load_error)?;
        for name in [
            programs::CONNECT4,
            programs::CONNECT6,
            programs::CONNECT4_UID,
            programs::CONNECT6_UID,
        ] {
            let p: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            p.load().map_err(|e| classify_load_error(e.into()))?;
        }
        {
            let p: &mut SockOps = program_mut(&mut ebpf, programs::SOCK_OPS)?;
            p.load().map_err(|e| classify_load_error(e.into()))?;
        }
        // A new generation, and the old config's egress setting kept until
        // the policy is applied (links of the previous run are live).
        let previous = read_config(&mut ebpf)?;
        let generation = match previous.generation.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        let cfg = BpfConfig {
            proxy_port: opts.proxy_port,
            egress_deny: previous.egress_deny,
            ready: 0,
            mark: opts.socket_mark,
            daemon_tgid: std::process::id(),
            generation,
            netns_cookie,
        };
        write_config(&mut ebpf, cfg)?;
        purge::<u64>(&mut ebpf, maps::ORIGIN_BY_COOKIE)?;
        purge::<TupleKey>(&mut ebpf, maps::ORIGIN_BY_TUPLE)?;
        let tuple_map = ebpf
            .take_map(maps::ORIGIN_BY_TUPLE)
            .ok_or(RedirectError::MissingMap(maps::ORIGIN_BY_TUPLE))?;
        let tuple_map: HashMap<MapData, TupleKey, Origin> =
            HashMap::try_from(tuple_map).map_err(|source| RedirectError::Map {
                map: maps::ORIGIN_BY_TUPLE,
                source,
            })?;
        Ok(Redirector {
            ebpf,
            opts,
            cgroup,
            attached: BTreeMap::new(),
            origins: OriginTable {
                map: Arc::new(Mutex::new(tuple_map)),
                netns: netns_cookie,
                generation,
            },
            generation,
            netns_cookie,
            uids: BTreeMap::new(),
        })
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Takes the aya-log ring buffer so the daemon can forward kernel log
    /// lines to tracing.
    pub fn take_logger(
        &mut self,
    ) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, aya_log::Error> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
    }

    pub fn cgroup(&self) -> &Cgroup2 {
        &self.cgroup
    }

    pub fn origins(&self) -> OriginTable {
        self.origins.clone()
    }

    pub fn attached(&self) -> impl Iterator<Item = &Attached> {
        self.attached.values()
    }

    /// Writes the config entry and the rule tables from the policy.
    /// `ready` false makes every intercepted connect fail (used until the
    /// listener is bound).
    pub fn apply_rules(
        &mut self,
        intercepts: &[InterceptRule],
        egress_allow: &[EgressAllow],
        egress_deny: bool,
        ready: bool,
    ) -> Result<(), RedirectError> {
        let mut want_intercept = BTreeMap::new();
        for (i, r) in intercepts.iter().enumerate() {
            let (prefix, addr) = net_prefix(r.net.as_ref());
            let key = (
                16 + prefix,
                RuleKey {
                    port: r.port.to_be_bytes(),
                    addr,
                },
            );
            // The first rule for a destination wins, as in the file.
            want_intercept.entry(key_bytes(&key)).or_insert((
                key,
                RuleValue {
                    protocol: r.protocol.id(),
                    _pad: 0,
                    rule_index: i as u16,
                },
            ));
        }
        let mut want_allow = BTreeMap::new();
        for (i, r) in egress_allow.iter().enumerate() {
            let (prefix, addr) = net_prefix(r.net.as_ref());
            let port = r.port.unwrap_or(0);
            let key = (
                16 + prefix,
                RuleKey {
                    port: port.to_be_bytes(),
                    addr,
                },
            );
            want_allow.entry(key_bytes(&key)).or_insert((
                key,
                RuleValue {
                    protocol: 0,
                    _pad: 0,
                    rule_index: i as u16,
                },
            ));
        }
        sync_trie(&mut self.ebpf, maps::INTERCEPT, &want_intercept)?;
        sync_trie(&mut self.ebpf, maps::EGRESS_ALLOW, &want_allow)?;
        let cfg = BpfConfig {
            proxy_port: self.opts.proxy_port,
            egress_deny: u8::from(egress_deny),
            ready: u8::from(ready),
            mark: self.opts.socket_mark,
            daemon_tgid: std::process::id(),
            generation: self.generation,
            netns_cookie: self.netns_cookie,
        };
        write_config(&mut self.ebpf, cfg)
    }

    /// Attaches the three programs to a cgroup (a path relative to the
    /// cgroup2 root) and pins the links. Attaching an already attached
    /// cgroup replaces its links atomically.
    pub fn attach(&mut self, path: &str) -> Result<Attached, RedirectError> {
        let id = self.cgroup.id_of(path)?;
        let link_dir = self.link_dir(id);
        self.attach_programs(
            path,
            &link_dir,
            [
                ("connect4", programs::CONNECT4),
                ("connect6", programs::CONNECT6),
            ],
        )?;
        let a = Attached {
            id,
            path: path.to_string(),
        };
        self.attached.insert(id, a.clone());
        Ok(a)
    }

    /// Attaches the connect programs `connect` and `ic_sock_ops` to the
    /// cgroup `path` and pins the links in `link_dir`, under a temporary
    /// name first and then renamed over any previous pin: the cgroup is
    /// never without a redirecting program.
    fn attach_programs(
        &mut self,
        path: &str,
        link_dir: &Path,
        connect: [(&'static str, &'static str); 2],
    ) -> Result<(), RedirectError> {
        let dir = self.cgroup.dir(path);
        let fd = File::open(&dir).map_err(|source| RedirectError::Io {
            path: dir.clone(),
            source,
        })?;
        std::fs::create_dir_all(link_dir).map_err(|source| RedirectError::Io {
            path: link_dir.to_path_buf(),
            source,
        })?;
        let attach_err = |e: &dyn std::error::Error| RedirectError::Attach {
            cgroup: path.to_string(),
            message: error_chain(e),
        };
        let mut fresh: Vec<(&str, FdLink)> = Vec::with_capacity(3);
        for (name, prog) in connect {
            let p: &mut CgroupSockAddr = program_mut(&mut self.ebpf, prog)?;
            let link_id = p
                .attach(&fd, CgroupAttachMode::Single)
                .map_err(|e| classify_attach_error(path, e))?;
            let link = p.take_link(link_id).map_err(|e| attach_err(&e))?;
            fresh.push((name, FdLink::try_from(link).map_err(|e| attach_err(&e))?));
        }
        let p: &mut SockOps = program_mut(&mut self.ebpf, programs::SOCK_OPS)?;
        let link_id = p
            .attach(&fd, CgroupAttachMode::Single)
            .map_err(|e| classify_attach_error(path, e))?;
        let link = p.take_link(link_id).map_err(|e| attach_err(&e))?;
        fresh.push((
            "sock_ops",
            FdLink::try_from(link).map_err(|e| attach_err(&e))?,
        ));
        for (name, link) in fresh {
            let tmp = link_dir.join(format!("{name}_new")); // bpffs names cannot contain dots
            let _ = std::fs::remove_file(&tmp);
            let pinned = link.pin(&tmp).map_err(|e| attach_err(&e))?;
            let dst = link_dir.join(name);
            std::fs::rename(&tmp, &dst).map_err(|source| RedirectError::Io {
                path: dst.clone(),
                source,
            })?;
            // The pin keeps the link alive; our fd is no longer needed.
            drop(pinned);
        }
        Ok(())
    }

    /// Uids attached with `attach --uid`.
    pub fn attached_uids(&self) -> impl Iterator<Item = &UidAttachment> {
        self.uids.values()
    }

    pub fn uid_attached(&self, uid: u32) -> bool {
        self.uids.contains_key(&uid)
    }

    /// Adds a uid to the table (and puts the uid programs on the cgroup2
    /// root when it is the first). Returns false when it was attached
    /// already. Uid 0 is refused here too, whatever the caller checked.
    pub fn attach_uid(&mut self, att: UidAttachment) -> Result<bool, RedirectError> {
        if att.uid == 0 {
            return Err(RedirectError::Uids(uids::UidStoreError::Root));
        }
        if self.uids.contains_key(&att.uid) {
            return Ok(false);
        }
        let uid = att.uid;
        self.uid_map()?
            .insert(uid, 1, 0)
            .map_err(|source| RedirectError::Map {
                map: maps::UIDS,
                source,
            })?;
        self.uids.insert(uid, att);
        let done = self
            .ensure_uid_links(false)
            .and_then(|()| Ok(uids::save(&self.opts.uid_state, self.uids.values())?));
        if let Err(e) = done {
            self.uids.remove(&uid);
            let _ = self.uid_map().map(|mut m| m.remove(&uid));
            return Err(e);
        }
        Ok(true)
    }

    /// Removes a uid from the table (and the uid programs from the root when
    /// it was the last). Returns false when it was not attached.
    pub fn detach_uid(&mut self, uid: u32) -> Result<bool, RedirectError> {
        let known = self.uids.remove(&uid).is_some();
        let in_map = {
            let mut map = self.uid_map()?;
            let present = map.get(&uid, 0).is_ok();
            if present {
                map.remove(&uid).map_err(|source| RedirectError::Map {
                    map: maps::UIDS,
                    source,
                })?;
            }
            present
        };
        uids::save(&self.opts.uid_state, self.uids.values())?;
        if self.uids.is_empty() {
            self.remove_links(&self.opts.pin_dir.join("links").join(UID_LINKS))?;
        }
        Ok(known || in_map)
    }

    /// At start: the uids of the state file and of the pinned table (left by
    /// an earlier run) are all attached again, with fresh programs on the
    /// root; with none, stale root links are removed. Uid 0 is dropped with
    /// a warning wherever it came from.
    pub fn restore_uids(&mut self) -> Result<Vec<UidAttachment>, RedirectError> {
        let mut all: BTreeMap<u32, UidAttachment> = uids::load(&self.opts.uid_state)?
            .into_iter()
            .map(|a| (a.uid, a))
            .collect();
        let pinned: Vec<u32> = self.uid_map()?.keys().filter_map(Result::ok).collect();
        for uid in pinned {
            all.entry(uid).or_insert_with(|| UidAttachment {
                uid,
                user: uids::user_name(uid),
                attached_at: None,
                by_uid: None,
            });
        }
        if all.remove(&0).is_some() {
            tracing::warn!("uid 0 was listed as attached; root can never be attached, dropping it");
            let _ = self.uid_map()?.remove(&0);
        }
        {
            let mut map = self.uid_map()?;
            for uid in all.keys() {
                map.insert(*uid, 1, 0)
                    .map_err(|source| RedirectError::Map {
                        map: maps::UIDS,
                        source,
                    })?;
            }
        }
        self.uids = all;
        if self.uids.is_empty() {
            self.remove_links(&self.opts.pin_dir.join("links").join(UID_LINKS))?;
        } else {
            self.ensure_uid_links(true)?;
        }
        uids::save(&self.opts.uid_state, self.uids.values())?;
        Ok(self.uids.values().cloned().collect())
    }

    /// Puts the uid programs on the cgroup2 root unless they are there
    /// (`fresh`: replace them, as a restart does for cgroups).
    fn ensure_uid_links(&mut self, fresh: bool) -> Result<(), RedirectError> {
        let dir = self.opts.pin_dir.join("links").join(UID_LINKS);
        if !fresh && LINK_NAMES.iter().all(|n| dir.join(n).exists()) {
            return Ok(());
        }
        self.attach_programs(
            "/",
            &dir,
            [
                ("connect4", programs::CONNECT4_UID),
                ("connect6", programs::CONNECT6_UID),
            ],
        )
    }

    fn uid_map(&mut self) -> Result<HashMap<&mut MapData, u32, u32>, RedirectError> {
        let map = self
            .ebpf
            .map_mut(maps::UIDS)
            .ok_or(RedirectError::MissingMap(maps::UIDS))?;
        HashMap::try_from(map).map_err(|source| RedirectError::Map {
            map: maps::UIDS,
            source,
        })
    }

    /// Unpins a link directory's links (which detaches them) and removes it.
    fn remove_links(&self, dir: &Path) -> Result<(), RedirectError> {
        if !dir.exists() {
            return Ok(());
        }
        for name in LINK_NAMES {
            for f in [dir.join(name), dir.join(format!("{name}_new"))] {
                match std::fs::remove_file(&f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(RedirectError::Io { path: f, source }),
                }
            }
        }
        std::fs::remove_dir(dir).map_err(|source| RedirectError::Io {
            path: dir.to_path_buf(),
            source,
        })
    }

    /// Removes a cgroup's links: its processes are no longer intercepted.
    pub fn detach(&mut self, id: u64) -> Result<Option<Attached>, RedirectError> {
        self.remove_links(&self.link_dir(id))?;
        Ok(self.attached.remove(&id))
    }

    /// Cgroup ids that have pinned links (from this or an earlier run).
    pub fn pinned_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.opts.pin_dir.join("links")) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    pub fn counters(&self) -> KernelCounters {
        let Some(map) = self.ebpf.map(maps::COUNTERS) else {
            return KernelCounters::default();
        };
        let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return KernelCounters::default();
        };
        let sum = |i: u32| -> u64 { arr.get(&i, 0).map(|v| v.iter().copied().sum()).unwrap_or(0) };
        KernelCounters {
            redirected: sum(counters::REDIRECTED),
            egress_denied: sum(counters::EGRESS_DENIED),
            passed: sum(counters::PASSED),
            origin_store_failed: sum(counters::ORIGIN_STORE_FAILED),
            rekeyed: sum(counters::REKEYED),
            direct_refused: sum(counters::DIRECT_REFUSED),
            netns_refused: sum(counters::NETNS_REFUSED),
        }
    }

    fn link_dir(&self, id: u64) -> PathBuf {
        self.opts.pin_dir.join("links").join(id.to_string())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.opts.pin_dir
    }
}

fn read_config(ebpf: &mut Ebpf) -> Result<BpfConfig, RedirectError> {
    let map = ebpf
        .map_mut(maps::CONFIG)
        .ok_or(RedirectError::MissingMap(maps::CONFIG))?;
    let arr: Array<&mut MapData, BpfConfig> =
        Array::try_from(map).map_err(|source| RedirectError::Map {
            map: maps::CONFIG,
            source,
        })?;
    arr.get(&0, 0).map_err(|source| RedirectError::Map {
        map: maps::CONFIG,
        source,
    })
}

fn write_config(ebpf: &mut Ebpf, cfg: BpfConfig) -> Result<(), RedirectError> {
    let map = ebpf
        .map_mut(maps::CONFIG)
        .ok_or(RedirectError::MissingMap(maps::CONFIG))?;
    let mut arr: Array<&mut MapData, BpfConfig> =
        Array::try_from(map).map_err(|source| RedirectError::Map {
            map: maps::CONFIG,
            source,
        })?;
    arr.set(0, cfg, 0).map_err(|source| RedirectError::Map {
        map: maps::CONFIG,
        source,
    })
}

/// Empties an origin map (keys collected first: deleting while iterating
/// restarts the kernel's walk).
fn purge<K: aya::Pod>(ebpf: &mut Ebpf, name: &'static str) -> Result<usize, RedirectError> {
    let map = ebpf.map_mut(name).ok_or(RedirectError::MissingMap(name))?;
    let mut m: HashMap<&mut MapData, K, Origin> =
        HashMap::try_from(map).map_err(|source| RedirectError::Map { map: name, source })?;
    let keys: Vec<K> = m.keys().filter_map(Result::ok).collect();
    let n = keys.len();
    for k in keys {
        let _ = m.remove(&k);
    }
    if n > 0 {
        tracing::info!(
            map = name,
            entries = n,
            "purged origins left by an earlier run"
        );
    }
    Ok(n)
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, RedirectError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or(RedirectError::MissingProgram(name))?;
    p.try_into()
        .map_err(|_| RedirectError::MissingProgram(name))
}

/// Prefix length (in bits of the 16-byte address) and address of a rule's
/// network; no network = any address.
fn net_prefix(net: Option<&policy::IpNet>) -> (u32, [u8; 16]) {
    match net {
        None => (0, [0; 16]),
        Some(n) => match n.addr() {
            IpAddr::V4(v4) => (
                96 + u32::from(n.prefix_len()),
                interceptor_common::v4_mapped(v4.octets()),
            ),
            IpAddr::V6(v6) => (u32::from(n.prefix_len()), v6.octets()),
        },
    }
}

fn key_bytes(k: &(u32, RuleKey)) -> (u32, [u8; 2], [u8; 16]) {
    (k.0, k.1.port, k.1.addr)
}

type WantedRules = BTreeMap<(u32, [u8; 2], [u8; 16]), ((u32, RuleKey), RuleValue)>;

/// Makes an LPM trie hold exactly `want`: inserts first, then removes stale
/// keys, so a rule present before and after never disappears in between.
fn sync_trie(ebpf: &mut Ebpf, name: &'static str, want: &WantedRules) -> Result<(), RedirectError> {
    let map = ebpf.map_mut(name).ok_or(RedirectError::MissingMap(name))?;
    let mut trie: LpmTrie<&mut MapData, RuleKey, RuleValue> =
        LpmTrie::try_from(map).map_err(|source| RedirectError::Map { map: name, source })?;
    for ((prefix, key), value) in want.values() {
        trie.insert(&Key::new(*prefix, *key), *value, 0)
            .map_err(|source| RedirectError::Map { map: name, source })?;
    }
    let existing: Vec<Key<RuleKey>> = trie.keys().filter_map(Result::ok).collect();
    for k in existing {
        let id = (k.prefix_len(), k.data().port, k.data().addr);
        if !want.contains_key(&id) {
            trie.remove(&k)
                .map_err(|source| RedirectError::Map { map: name, source })?;
        }
    }
    Ok(())
}

fn classify_load_error(e: aya::EbpfError) -> RedirectError {
    let text = error_chain(&e);
    if text.contains("Operation not permitted") || text.contains("os error 1)") {
        RedirectError::NotPermitted
    } else if text.contains("Function not implemented") || text.contains("os error 38") {
        RedirectError::Unsupported(text)
    } else {
        RedirectError::Load(text)
    }
}

fn classify_attach_error(cgroup: &str, e: aya::programs::ProgramError) -> RedirectError {
    let text = error_chain(&e);
    if text.contains("Operation not permitted") {
        RedirectError::NotPermitted
    } else if text.contains("Invalid argument") || text.contains("not supported") {
        RedirectError::Unsupported(text)
    } else {
        RedirectError::Attach {
            cgroup: cgroup.to_string(),
            message: text,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_round_trip() {
        let o = Origin {
            addr: mapped("10.1.2.3".parse().unwrap()),
            port: 5432,
            protocol: 1,
            family: 4,
            tgid: 1,
            uid: 0,
            rule_index: 0,
            _pad: 0,
            cgroup_id: 1,
            comm: [0; 16],
            created_ns: 0,
            netns: 0,
            generation: 0,
            _pad2: 0,
        };
        assert_eq!(origin_addr(&o), "10.1.2.3:5432".parse().unwrap());
        let o6 = Origin {
            addr: mapped("::1".parse().unwrap()),
            ..o
        };
        assert_eq!(origin_addr(&o6), "[::1]:5432".parse().unwrap());
    }

    #[test]
    fn only_fresh_origins_of_this_run_are_served() {
        let o = Origin {
            addr: mapped("10.1.2.3".parse().unwrap()),
            port: 5432,
            protocol: 1,
            family: 4,
            tgid: 1,
            uid: 0,
            rule_index: 0,
            _pad: 0,
            cgroup_id: 1,
            comm: [0; 16],
            created_ns: 1_000_000_000,
            netns: 1,
            generation: 7,
            _pad2: 0,
        };
        let max = MAX_ORIGIN_AGE.as_nanos() as u64;
        assert_eq!(freshness(&o, 7, 1_000_000_000), Ok(()));
        assert_eq!(freshness(&o, 7, 1_000_000_000 + max), Ok(()));
        assert_eq!(
            freshness(&o, 7, 1_000_000_001 + max),
            Err(Stale::TooOld),
            "older than the bound"
        );
        assert_eq!(
            freshness(&o, 7, 999_999_999),
            Err(Stale::TooOld),
            "stamped in the future"
        );
        assert_eq!(
            freshness(&o, 8, 1_000_000_000),
            Err(Stale::OtherGeneration),
            "written for an earlier daemon run"
        );
    }

    #[test]
    fn netns_cookie_of_this_process() {
        let a = own_netns_cookie().expect("SO_NETNS_COOKIE");
        assert_ne!(a, 0);
        assert_eq!(a, own_netns_cookie().unwrap(), "stable");
    }

    #[test]
    fn map_layouts_match_the_object() {
        // The sizes checked against pinned maps are the shared types' sizes.
        for (name, _, key, value) in expected_maps() {
            assert!(key > 0 && value > 0, "{name}");
        }
        assert_eq!(std::mem::size_of::<TupleKey>(), 32);
    }

    #[test]
    fn prefixes() {
        assert_eq!(net_prefix(None).0, 0);
        let n: policy::IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!(net_prefix(Some(&n)).0, 104);
        let n: policy::IpNet = "fd00::/8".parse().unwrap();
        assert_eq!(net_prefix(Some(&n)).0, 8);
    }
}
