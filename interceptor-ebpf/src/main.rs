//! Kernel side of the interceptor.
//!
//! Three small programs, attached to every cgroup the operator attaches:
//!
//! * `ic_connect4` / `ic_connect6` (`cgroup/connect4`, `cgroup/connect6`) run
//!   before a socket in the cgroup connects. When the destination matches an
//!   intercept rule they remember where the connection was going (and who
//!   asked) under the socket cookie and rewrite the destination to the local
//!   proxy. With `egress = "deny"`, a TCP/UDP connect that matches neither an
//!   intercept rule nor an allow rule is refused (`EPERM`).
//! * `ic_sock_ops` (`sock_ops`) runs when the redirected TCP socket sends its
//!   SYN: by then the source port is known, so the origin is re-keyed by the
//!   connection's 4-tuple, which is what the proxy sees from `accept()`.
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
        bpf_get_current_uid_gid,
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use interceptor_common::{
    Config, ORIGIN_MAP_SIZE, Origin, RULE_MAP_SIZE, RuleKey, RuleValue, TupleKey, counters,
    v4_mapped,
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
    addr: [u8; 16],
    port: u16,
    family: u8,
    rule: &RuleValue,
) -> bool {
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let origin = Origin {
        addr,
        port,
        protocol: rule.protocol,
        family,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        rule_index: rule.rule_index,
        _pad: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
    };
    IC_ORIGIN_COOKIE.insert(cookie, origin, 0).is_ok()
}

/// True when the socket carries the daemon's own SO_MARK.
#[inline(always)]
fn is_own_socket(sa: *mut bpf_sock_addr, cfg: &Config) -> bool {
    if cfg.mark == 0 {
        return false;
    }
    let sk = unsafe { read_volatile(&(*sa).__bindgen_anon_1.sk) };
    if sk.is_null() {
        return false;
    }
    unsafe { read_volatile(&(*sk).mark) == cfg.mark }
}

#[cgroup_sock_addr(connect4)]
pub fn ic_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(cfg) = IC_CONFIG.get(0) else {
        return ALLOW;
    };
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
    // Already going to the proxy (a redirected connect seen again, or a
    // direct connect the proxy will reject because it has no origin).
    if ip == [127, 0, 0, 1] && port == cfg.proxy_port {
        return ALLOW;
    }
    let addr = v4_mapped(ip);
    let stream = sock_type == SOCK_STREAM;
    match lookup(addr, port, cfg) {
        Verdict::Intercept(rule) if stream => {
            if cfg.proxy_port == 0 || !remember(&ctx, addr, port, 4, &rule) {
                count(counters::ORIGIN_STORE_FAILED);
                return REFUSE;
            }
            unsafe {
                (*sa).user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
                (*sa).user_port = u32::from(cfg.proxy_port.to_be());
            }
            count(counters::REDIRECTED);
            ALLOW
        }
        // A UDP connect to an intercepted destination is neither proxied nor
        // silently let through when egress is denied.
        Verdict::Intercept(_) | Verdict::Refuse if cfg.egress_deny != 0 => {
            count(counters::EGRESS_DENIED);
            warn!(
                &ctx,
                "egress denied: {}.{}.{}.{}:{}", ip[0], ip[1], ip[2], ip[3], port
            );
            REFUSE
        }
        _ => {
            count(counters::PASSED);
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn ic_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(cfg) = IC_CONFIG.get(0) else {
        return ALLOW;
    };
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
    let mapped = addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    let proxy: [u8; 16] = if mapped {
        v4_mapped([127, 0, 0, 1])
    } else {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    };
    if addr == proxy && port == cfg.proxy_port {
        return ALLOW;
    }
    let stream = sock_type == SOCK_STREAM;
    match lookup(addr, port, cfg) {
        Verdict::Intercept(rule) if stream => {
            if cfg.proxy_port == 0 || !remember(&ctx, addr, port, 6, &rule) {
                count(counters::ORIGIN_STORE_FAILED);
                return REFUSE;
            }
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
            count(counters::REDIRECTED);
            ALLOW
        }
        Verdict::Intercept(_) | Verdict::Refuse if cfg.egress_deny != 0 => {
            count(counters::EGRESS_DENIED);
            warn!(&ctx, "egress denied: [{:i}]:{}", addr, port);
            REFUSE
        }
        _ => {
            count(counters::PASSED);
            ALLOW
        }
    }
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

    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ops as *mut _) };
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
