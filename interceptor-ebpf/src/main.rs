//! Kernel side of the interceptor.
//!
//! Three small programs, attached to every cgroup the operator attaches:
//!
//! * `ic_connect4` / `ic_connect6` (`cgroup/connect4`, `cgroup/connect6`) run
//!   before a socket in the cgroup connects. When the destination matches an
//!   intercept rule they remember where the connection was going (and who
//!   asked, when, from which network namespace, for which daemon run) under
//!   the socket cookie and rewrite the destination to the local proxy. With
//!   `egress = "deny"`, a TCP/UDP connect that matches neither an intercept
//!   rule nor an allow rule is refused (`EPERM`).
//! * `ic_sock_ops` (`sock_ops`) runs when the redirected TCP socket sends its
//!   SYN: by then the source port is known, so the origin is re-keyed by the
//!   connection's 4-tuple and network namespace, which is what the proxy sees
//!   from `accept()`.
//!
//! `ic_connect4_uid` / `ic_connect6_uid` are the same connect programs for
//! `attach --uid`: attached once to the cgroup2 root (with `ic_sock_ops`),
//! they act only when the caller's real uid is in `IC_UIDS`, wherever the
//! process lives.
//!
//! Refused outright (`EPERM`), whatever the rules say:
//! * a connect to the proxy port on a loopback or unspecified address that
//!   these programs did not redirect (a workload must not reach the proxy
//!   with a 4-tuple of its choosing);
//! * an intercepted connect from a network namespace other than the
//!   daemon's (the proxy does not listen there, and a listener the workload
//!   controls must not receive it).
//!
//! A socket skips all of this only when it carries the daemon's SO_MARK and
//! is connected by the daemon's own process (`Config::daemon_tgid`).
//!
//! Everything here is deliberately boring: bounded, no loops, one map lookup
//! per decision. The daemon owns all policy; these programs only apply the
//! tables it writes.
// Built for the BPF target by interceptor/build.rs. On the host the crate
// compiles to an empty program so `cargo build/clippy --workspace` cover it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{bpf_sock_addr, bpf_sock_ops},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use interceptor_common::{
    Config, ORIGIN_MAP_SIZE, Origin, RULE_MAP_SIZE, RuleKey, RuleValue, TupleKey, UID_MAP_SIZE,
    counters, v4_mapped,
};

/// Return values of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0; // the connect() fails with EPERM

const SOCK_STREAM: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;

/// Prefix bits of the port part of a rule key.
const PORT_BITS: u32 = 16;

#[map(name = "IC_CONFIG")]
static IC_CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "IC_INTERCEPT")]
static IC_INTERCEPT: LpmTrie<RuleKey, RuleValue> = LpmTrie::pinned(RULE_MAP_SIZE, 0);

#[map(name = "IC_EGRESS_ALLOW")]
static IC_EGRESS_ALLOW: LpmTrie<RuleKey, RuleValue> = LpmTrie::pinned(RULE_MAP_SIZE, 0);

#[map(name = "IC_ORIGIN_COOKIE")]
static IC_ORIGIN_COOKIE: LruHashMap<u64, Origin> = LruHashMap::pinned(ORIGIN_MAP_SIZE, 0);

#[map(name = "IC_ORIGIN_TUPLE")]
static IC_ORIGIN_TUPLE: LruHashMap<TupleKey, Origin> = LruHashMap::pinned(ORIGIN_MAP_SIZE, 0);

#[map(name = "IC_COUNTERS")]
static IC_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::COUNT, 0);

/// Real uids attached with `attach --uid` (value unused).
#[map(name = "IC_UIDS")]
static IC_UIDS: HashMap<u32, u32> = HashMap::pinned(UID_MAP_SIZE, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = IC_COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, no atomics needed.
        unsafe { *slot += 1 };
    }
}

/// What the rule tables say about one destination.
enum Verdict {
    Intercept(RuleValue),
    Pass,
    Refuse,
}

#[inline(always)]
fn lookup(addr: [u8; 16], port: u16, cfg: &Config) -> Verdict {
    let port_be = port.to_be_bytes();
    let full = Key::new(
        PORT_BITS + 128,
        RuleKey {
            port: port_be,
            addr,
        },
    );
    if let Some(rule) = IC_INTERCEPT.get(&full) {
        return Verdict::Intercept(*rule);
    }
    if cfg.egress_deny == 0 {
        return Verdict::Pass;
    }
    if IC_EGRESS_ALLOW.get(&full).is_some() {
        return Verdict::Pass;
    }
    // Allow rules without a port are stored under port 0.
    let any_port = Key::new(PORT_BITS + 128, RuleKey { port: [0, 0], addr });
    if IC_EGRESS_ALLOW.get(&any_port).is_some() {
        return Verdict::Pass;
    }
    Verdict::Refuse
}

/// Records the origin of a connect about to be redirected, keyed by the
/// socket cookie. Returns false when it could not be stored; the caller then
/// refuses the connect rather than letting it reach the proxy anonymously.
#[inline(always)]
fn remember(
    ctx: &SockAddrContext,
    cfg: &Config,
    dst: Dst,
    family: u8,
    rule: &RuleValue,
    netns: u64,
) -> bool {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let origin = Origin {
        addr: dst.addr,
        port: dst.port,
        protocol: rule.protocol,
        family,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        rule_index: rule.rule_index,
        _pad: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
        created_ns: unsafe { bpf_ktime_get_ns() },
        netns,
        generation: cfg.generation,
        _pad2: 0,
    };
    IC_ORIGIN_COOKIE.insert(cookie, origin, 0).is_ok()
}

/// True when the caller's real uid is attached (`attach --uid`).
#[inline(always)]
fn caller_uid_attached() -> bool {
    let uid = bpf_get_current_uid_gid() as u32;
    unsafe { IC_UIDS.get(uid) }.is_some()
}

/// True when the socket is the daemon's own: it carries the daemon's SO_MARK
/// and the daemon's process is the one connecting. The mark alone is not
/// enough: any process with CAP_NET_ADMIN (or CAP_NET_RAW on newer kernels)
/// can set it.
#[inline(always)]
fn is_own_socket(sa: *mut bpf_sock_addr, cfg: &Config) -> bool {
    if cfg.mark == 0 || cfg.daemon_tgid == 0 {
        return false;
    }
    if (bpf_get_current_pid_tgid() >> 32) as u32 != cfg.daemon_tgid {
        return false;
    }
    let sk = unsafe { read_volatile(&(*sa).__bindgen_anon_1.sk) };
    if sk.is_null() {
        return false;
    }
    unsafe { read_volatile(&(*sk).mark) == cfg.mark }
}

/// A connect to the proxy port on an address that reaches the proxy
/// (loopback, or the unspecified address, which Linux connects to
/// loopback): allowed only when one of these programs redirected this very
/// socket in this connect (an earlier program in the cgroup hierarchy left
/// its origin under the socket cookie); anything else is a workload trying
/// to reach the proxy with a 4-tuple of its own choosing.
#[inline(always)]
fn to_proxy_port(ctx: &SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    if unsafe { IC_ORIGIN_COOKIE.get(cookie) }.is_some() {
        return ALLOW;
    }
    count(counters::DIRECT_REFUSED);
    REFUSE
}

#[inline(always)]
fn reaches_proxy4(ip: [u8; 4]) -> bool {
    ip[0] == 127 || ip == [0, 0, 0, 0]
}

#[inline(always)]
fn reaches_proxy6(addr: &[u8; 16]) -> bool {
    const LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const ANY: [u8; 16] = [0; 16];
    if *addr == LOOPBACK || *addr == ANY {
        return true;
    }
    let mapped = addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    mapped && reaches_proxy4([addr[12], addr[13], addr[14], addr[15]])
}

/// A destination in the 16-byte form (IPv4 mapped) with its port.
#[derive(Clone, Copy)]
struct Dst {
    addr: [u8; 16],
    port: u16,
}

/// What a connect program does with a destination that is not the proxy.
enum Action {
    /// Rewrite to the proxy (the origin is stored).
    Redirect,
    Allow,
    Refuse,
}

/// The common decision of connect4 and connect6.
#[inline(always)]
fn decide(ctx: &SockAddrContext, cfg: &Config, dst: Dst, family: u8, stream: bool) -> Action {
    match lookup(dst.addr, dst.port, cfg) {
        Verdict::Intercept(rule) if stream => {
            let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) };
            if cfg.netns_cookie == 0 || netns != cfg.netns_cookie {
                // The proxy does not listen in that namespace: refuse rather
                // than hand the connection to whatever listens there.
                count(counters::NETNS_REFUSED);
                return Action::Refuse;
            }
            if cfg.ready == 0
                || cfg.proxy_port == 0
                || !remember(ctx, cfg, dst, family, &rule, netns)
            {
                count(counters::ORIGIN_STORE_FAILED);
                return Action::Refuse;
            }
            count(counters::REDIRECTED);
            Action::Redirect
        }
        // A UDP connect to an intercepted destination is neither proxied nor
        // silently let through when egress is denied.
        Verdict::Intercept(_) | Verdict::Refuse if cfg.egress_deny != 0 => {
            count(counters::EGRESS_DENIED);
            Action::Refuse
        }
        _ => {
            count(counters::PASSED);
            Action::Allow
        }
    }
}

#[inline(always)]
fn connect4(ctx: &SockAddrContext, by_uid: bool) -> i32 {
    let sa = ctx.sock_addr;
    let Some(cfg) = IC_CONFIG.get(0) else {
        return ALLOW;
    };
    if by_uid && !caller_uid_attached() {
        return ALLOW;
    }
    if is_own_socket(sa, cfg) {
        return ALLOW;
    }
    // user_ip4 and user_port are in network byte order.
    let (user_ip4, user_port, sock_type) = unsafe {
        (
            read_volatile(&(*sa).user_ip4),
            read_volatile(&(*sa).user_port),
            read_volatile(&(*sa).type_),
        )
    };
    let ip = user_ip4.to_ne_bytes();
    let port = u16::from_be(user_port as u16);
    if port == cfg.proxy_port && reaches_proxy4(ip) {
        return to_proxy_port(ctx);
    }
    let dst = Dst {
        addr: v4_mapped(ip),
        port,
    };
    match decide(ctx, cfg, dst, 4, sock_type == SOCK_STREAM) {
        Action::Redirect => {
            unsafe {
                (*sa).user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
                (*sa).user_port = u32::from(cfg.proxy_port.to_be());
            }
            ALLOW
        }
        Action::Allow => ALLOW,
        Action::Refuse => {
            warn!(
                ctx,
                "connect refused: {}.{}.{}.{}:{}", ip[0], ip[1], ip[2], ip[3], port
            );
            REFUSE
        }
    }
}

#[inline(always)]
fn connect6(ctx: &SockAddrContext, by_uid: bool) -> i32 {
    let sa = ctx.sock_addr;
    let Some(cfg) = IC_CONFIG.get(0) else {
        return ALLOW;
    };
    if by_uid && !caller_uid_attached() {
        return ALLOW;
    }
    if is_own_socket(sa, cfg) {
        return ALLOW;
    }
    let (words, user_port, sock_type) = unsafe {
        (
            [
                read_volatile(&(*sa).user_ip6[0]),
                read_volatile(&(*sa).user_ip6[1]),
                read_volatile(&(*sa).user_ip6[2]),
                read_volatile(&(*sa).user_ip6[3]),
            ],
            read_volatile(&(*sa).user_port),
            read_volatile(&(*sa).type_),
        )
    };
    let addr = words_to_bytes(words);
    let port = u16::from_be(user_port as u16);
    if port == cfg.proxy_port && reaches_proxy6(&addr) {
        return to_proxy_port(ctx);
    }
    let mapped = addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    let dst = Dst { addr, port };
    match decide(ctx, cfg, dst, 6, sock_type == SOCK_STREAM) {
        Action::Redirect => {
            let proxy: [u8; 16] = if mapped {
                v4_mapped([127, 0, 0, 1])
            } else {
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
            };
            let mut i = 0;
            while i < 4 {
                let w = u32::from_ne_bytes([
                    proxy[i * 4],
                    proxy[i * 4 + 1],
                    proxy[i * 4 + 2],
                    proxy[i * 4 + 3],
                ]);
                unsafe { (*sa).user_ip6[i] = w };
                i += 1;
            }
            unsafe { (*sa).user_port = u32::from(cfg.proxy_port.to_be()) };
            ALLOW
        }
        Action::Allow => ALLOW,
        Action::Refuse => {
            warn!(ctx, "connect refused: [{:i}]:{}", addr, port);
            REFUSE
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn ic_connect4(ctx: SockAddrContext) -> i32 {
    connect4(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn ic_connect6(ctx: SockAddrContext) -> i32 {
    connect6(&ctx, false)
}

#[cgroup_sock_addr(connect4)]
pub fn ic_connect4_uid(ctx: SockAddrContext) -> i32 {
    connect4(&ctx, true)
}

#[cgroup_sock_addr(connect6)]
pub fn ic_connect6_uid(ctx: SockAddrContext) -> i32 {
    connect6(&ctx, true)
}

#[sock_ops]
pub fn ic_sock_ops(ctx: SockOpsContext) -> u32 {
    let ops: *mut bpf_sock_ops = ctx.ops;
    // Context fields are read once, up front, with volatile loads: the
    // verifier rejects loads through a ctx pointer the compiler has offset
    // and kept around.
    let op = unsafe { read_volatile(&(*ops).op) };
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    let family = unsafe { read_volatile(&(*ops).family) };
    let local_ip4 = unsafe { read_volatile(&(*ops).local_ip4) };
    let l6 = unsafe {
        [
            read_volatile(&(*ops).local_ip6[0]),
            read_volatile(&(*ops).local_ip6[1]),
            read_volatile(&(*ops).local_ip6[2]),
            read_volatile(&(*ops).local_ip6[3]),
        ]
    };
    let local_port = unsafe { read_volatile(&(*ops).local_port) };
    let remote_port = unsafe { read_volatile(&(*ops).remote_port) };

    let cookie = unsafe { bpf_get_socket_cookie(ops as *mut _) };
    let Some(origin) = (unsafe { IC_ORIGIN_COOKIE.get(cookie) }) else {
        return 1;
    };
    let origin = *origin;
    let src_addr = match family {
        AF_INET => v4_mapped(local_ip4.to_ne_bytes()),
        AF_INET6 => words_to_bytes(l6),
        _ => return 1,
    };
    // local_port is in host byte order; remote_port holds the network-order
    // port, shifted into the upper half on little-endian kernels.
    let dst_port = if remote_port > 0xffff {
        u16::from_be((remote_port >> 16) as u16)
    } else {
        u16::from_be(remote_port as u16)
    };
    let key = TupleKey {
        src_addr,
        src_port: local_port as u16,
        dst_port,
        _pad: 0,
        // Recorded at connect time, for this very socket.
        netns: origin.netns,
    };
    if IC_ORIGIN_TUPLE.insert(key, origin, 0).is_ok() {
        count(counters::REKEYED);
    }
    let _ = IC_ORIGIN_COOKIE.remove(cookie);
    1
}

/// Four network-order u32 words (as the kernel exposes IPv6 addresses) to
/// 16 address bytes.
#[inline(always)]
fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        a[i * 4] = b[0];
        a[i * 4 + 1] = b[1];
        a[i * 4 + 2] = b[2];
        a[i * 4 + 3] = b[3];
        i += 1;
    }
    a
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
