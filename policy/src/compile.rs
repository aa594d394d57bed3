//! Validation: raw file → compiled policy, every error located.

use crate::config::{
    Ints, OneOrMany, RawEgressAllow, RawFile, RawIntercept, RawLimit, RawMask, RawMatch, RawRule,
    Strings,
};
use crate::error::Located;
use crate::glob::Glob;
use crate::limit::LimitRule;
use crate::mask::{Detector, DetectorSet, MaskRule, Masker};
use crate::matcher::{GlobList, HttpMatcher, Matcher, SqlMatcher, SshMatcher};
use crate::model::{Defaults, EgressAllow, InterceptRule, Protocol};
use crate::policy::{Inner, Rule};
use crate::sql::{Action, ObjectKind, StatementKind};
use ipnet::IpNet;
use regex::{Regex, RegexSet};
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

type R<T> = Result<T, Located>;

/// Line number (1-based) of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    crate::error::line_col(text, at).0
}

/// Compiles a parsed file. `judged` lists the operation families (`sql`,
/// `ssh`, `http`) whose keys are accepted in rules: normally
/// [`crate::JUDGED_FAMILIES`].
pub(crate) fn compile(raw: RawFile, text: &str, judged: &[&str]) -> R<Inner> {
    let defaults = defaults(&raw)?;
    let intercepts = intercepts(&raw.intercept, text)?;
    let egress_allow = raw
        .egress_allow
        .iter()
        .map(egress_allow)
        .collect::<R<Vec<_>>>()?;
    let rules = rules(raw.rule, text, judged)?;
    let masker = Masker {
        rules: raw
            .mask
            .iter()
            .map(|m| mask(m, text))
            .collect::<R<Vec<_>>>()?,
    };
    let limits = limits(&raw.limit, text)?;
    Ok(Inner {
        defaults,
        intercepts,
        egress_allow,
        rules,
        masker,
        limits,
    })
}

fn defaults(raw: &RawFile) -> R<Defaults> {
    let mut d = Defaults::default();
    if let Some(rd) = &raw.defaults {
        if let Some(v) = rd.decision {
            d.decision = v;
        }
        if let Some(v) = rd.unparsed {
            d.unparsed = v;
        }
        if let Some(v) = &rd.approval_timeout {
            d.approval_timeout = duration(v.get_ref()).map_err(|m| Located::new(v.span(), m))?;
        }
        if let Some(v) = rd.egress {
            d.egress = v;
        }
        if let Some(v) = rd.require_identity {
            d.require_identity = v;
        }
    }
    Ok(d)
}

/// `"500ms"`, `"30s"`, `"5m"`, `"1h"`; must be more than zero.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?} (expected a whole number with a unit: \"500ms\", \"30s\", \"5m\", \"1h\")"
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Ok(d)
}

fn port(v: &Spanned<i64>) -> R<u16> {
    let n = *v.get_ref();
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Located::new(
            v.span(),
            format!("port must be between 1 and 65535, got {n}"),
        )),
    }
}

/// An address (`10.1.2.3`, `::1`) or a CIDR (`10.0.0.0/8`); host bits are
/// cleared.
pub(crate) fn net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    Err(format!(
        "invalid CIDR {s:?} (expected an IPv4/IPv6 address or address/prefix, e.g. \"10.0.0.0/8\")"
    ))
}

fn net_at(v: &Spanned<String>) -> R<IpNet> {
    net(v.get_ref()).map_err(|m| Located::new(v.span(), m))
}

fn protocol(s: &str, span: Range<usize>) -> R<Protocol> {
    s.parse().map_err(|m| Located::new(span, m))
}

fn intercepts(raw: &[Spanned<RawIntercept>], text: &str) -> R<Vec<InterceptRule>> {
    let mut out: Vec<InterceptRule> = Vec::new();
    let mut seen: HashMap<(u16, Option<IpNet>), usize> = HashMap::new();
    for entry in raw {
        let ri = entry.get_ref();
        let rule = InterceptRule {
            port: port(&ri.port)?,
            net: ri.cidr.as_ref().map(net_at).transpose()?,
            protocol: protocol(ri.protocol.get_ref(), ri.protocol.span())?,
        };
        if let Some(first) = seen.insert((rule.port, rule.net), entry.span().start) {
            let target = match rule.net {
                Some(n) => format!("port {} and cidr {n}", rule.port),
                None => format!("port {} (any address)", rule.port),
            };
            return Err(Located::new(
                entry.span(),
                format!(
                    "duplicate [[intercept]] for {target} (first at line {})",
                    line_of(text, first)
                ),
            ));
        }
        out.push(rule);
    }
    Ok(out)
}

fn egress_allow(entry: &Spanned<RawEgressAllow>) -> R<EgressAllow> {
    let re = entry.get_ref();
    if re.port.is_none() && re.cidr.is_none() {
        return Err(Located::new(
            entry.span(),
            "an [[egress_allow]] entry needs `port`, `cidr` or both",
        ));
    }
    Ok(EgressAllow {
        port: re.port.as_ref().map(port).transpose()?,
        net: re.cidr.as_ref().map(net_at).transpose()?,
    })
}

fn rules(raw: Vec<RawRule>, text: &str, judged: &[&str]) -> R<Vec<Rule>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    for rr in raw {
        let name = rr.name.get_ref().clone();
        let span = rr.name.span();
        if name.trim().is_empty() {
            return Err(Located::new(span, "rule name must not be empty"));
        }
        if let Some(first) = names.insert(name.clone(), span.start) {
            return Err(Located::new(
                span,
                format!(
                    "duplicate rule name {name:?} (first defined at line {})",
                    line_of(text, first)
                ),
            ));
        }
        let (mut matcher, summary) = match &rr.matcher {
            Some(m) => (matcher(m, Scope::Rule { judged })?, summary(m)),
            None => (Matcher::default(), String::new()),
        };
        if let Some(sql) = &mut matcher.sql {
            sql.columns_unnamed = rr.decision != crate::model::Verdict::Allow;
        }
        out.push(Rule {
            name,
            line: line_of(text, span.start),
            decision: rr.decision,
            is_final: rr.is_final,
            require_identity: rr.require_identity,
            message: rr.message,
            matcher,
            summary,
        });
    }
    Ok(out)
}

fn non_empty<T: Clone>(v: &Spanned<OneOrMany<T>>) -> R<Vec<(T, Range<usize>)>> {
    let items = OneOrMany::items(v);
    if items.is_empty() {
        return Err(Located::new(
            v.span(),
            "empty list (give at least one value, or remove the key)",
        ));
    }
    Ok(items)
}

fn globs(v: &Strings, case_insensitive: bool) -> R<GlobList> {
    non_empty(v)?
        .into_iter()
        .map(|(p, span)| {
            Glob::new(&p, case_insensitive)
                .map_err(|e| Located::new(span, format!("invalid glob {p:?}: {e}")))
        })
        .collect::<R<Vec<_>>>()
        .map(GlobList)
}

fn opt_globs(v: &Option<Strings>, case_insensitive: bool) -> R<Option<GlobList>> {
    v.as_ref().map(|v| globs(v, case_insensitive)).transpose()
}

fn ints<T: TryFrom<i64>>(v: &Ints, what: &str, valid: impl Fn(&T) -> bool) -> R<Vec<T>> {
    non_empty(v)?
        .into_iter()
        .map(|(n, span)| match T::try_from(n) {
            Ok(x) if valid(&x) => Ok(x),
            _ => Err(Located::new(span, format!("{what}, got {n}"))),
        })
        .collect()
}

fn regex_error(e: &regex::Error) -> String {
    // regex errors are multi-line diagrams; keep the final "error: ..." line.
    let s = e.to_string();
    s.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_owned)
        .unwrap_or_else(|| s.lines().last().unwrap_or("").trim().to_owned())
}

/// Where a `match` table is.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// A `[[rule]]`: operation keys of the `judged` families are allowed.
    Rule { judged: &'a [&'a str] },
    /// A `[[mask]]` or `[[limit]]` (the table name, the plural): context
    /// keys only.
    Connection(&'static str, &'static str),
}

/// Why operation keys of a family no protocol module judges yet are refused.
fn unjudged_family(key: &str) -> String {
    let proto = match key {
        "ssh" => "SSH",
        "http" => "HTTP",
        _ => "such",
    };
    format!(
        "{key}.* rules are not supported yet: {proto} connections are relayed as opaque TCP and judged only at connect; remove the key or use a connection rule"
    )
}

/// Compiles a `match` table.
fn matcher(m: &RawMatch, scope: Scope<'_>) -> R<Matcher> {
    let families = [
        ("sql", m.sql.as_ref().map(Spanned::span)),
        ("ssh", m.ssh.as_ref().map(Spanned::span)),
        ("http", m.http.as_ref().map(Spanned::span)),
    ];
    for (key, span) in families {
        let Some(span) = span else { continue };
        match scope {
            Scope::Connection(table, plural) => {
                return Err(Located::new(
                    span,
                    format!(
                        "{key}.* cannot be used in a {table} match ({plural} apply to whole connections; allowed keys: protocol, cgroup, unit, exe, comm, uid, identity.*, target.*)"
                    ),
                ));
            }
            Scope::Rule { judged } if !judged.contains(&key) => {
                return Err(Located::new(span, unjudged_family(key)));
            }
            Scope::Rule { .. } => {}
        }
    }
    let mut out = Matcher::default();
    if let Some(p) = &m.protocol {
        let mut ps = Vec::new();
        for (s, span) in non_empty(p)? {
            ps.push(protocol(&s, span)?);
        }
        out.protocol = Some(ps);
    }
    out.cgroup = opt_globs(&m.cgroup, false)?;
    out.unit = opt_globs(&m.unit, false)?;
    out.exe = opt_globs(&m.exe, false)?;
    out.comm = opt_globs(&m.comm, false)?;
    if let Some(u) = &m.uid {
        out.uid = Some(ints::<u32>(
            u,
            "uid must be between 0 and 4294967295",
            |_| true,
        )?);
    }
    if let Some(id) = &m.identity {
        if id.get_ref().is_empty() {
            return Err(Located::new(id.span(), "empty identity matcher"));
        }
        for (claim, v) in id.get_ref() {
            if claim.get_ref().trim().is_empty() {
                return Err(Located::new(
                    claim.span(),
                    "identity claim name must not be empty",
                ));
            }
            out.identity
                .push((claim.get_ref().clone(), globs(v, false)?));
        }
    }
    if let Some(t) = &m.target {
        let rt = t.get_ref();
        if rt.cidr.is_none()
            && rt.port.is_none()
            && rt.host.is_none()
            && rt.database.is_none()
            && rt.user.is_none()
        {
            return Err(Located::new(t.span(), "empty target matcher"));
        }
        if let Some(c) = &rt.cidr {
            let mut nets = Vec::new();
            for (s, span) in non_empty(c)? {
                nets.push(net(&s).map_err(|m| Located::new(span, m))?);
            }
            out.target_cidr = Some(nets);
        }
        if let Some(p) = &rt.port {
            out.target_port = Some(ints::<u16>(p, "port must be between 1 and 65535", |p| {
                *p != 0
            })?);
        }
        out.target_host = opt_globs(&rt.host, true)?;
        out.target_database = opt_globs(&rt.database, false)?;
        out.target_user = opt_globs(&rt.user, false)?;
    }
    let mut family: Option<(&str, Range<usize>)> = None;
    let mut one_family = |key: &'static str, span: Range<usize>| -> R<()> {
        if let Some((first, _)) = &family {
            return Err(Located::new(
                span,
                format!(
                    "a rule can use only one of sql.*, ssh.* and http.* (it already uses {first}.*; they match different operations)"
                ),
            ));
        }
        family = Some((key, span));
        Ok(())
    };
    if let Some(s) = &m.sql {
        one_family("sql", s.span())?;
        let rs = s.get_ref();
        let mut sm = SqlMatcher::default();
        if let Some(st) = &rs.statement {
            let mut kinds = Vec::new();
            for (k, span) in non_empty(st)? {
                kinds.push(
                    k.parse::<StatementKind>()
                        .map_err(|m| Located::new(span, m))?,
                );
            }
            sm.statement = Some(kinds);
        }
        if let Some(os) = &rs.object {
            let mut objects = Vec::new();
            for (o, span) in non_empty(os)? {
                objects.push(o.parse::<ObjectKind>().map_err(|m| Located::new(span, m))?);
            }
            sm.object = Some(objects);
        }
        if let Some(acts) = &rs.action {
            let mut actions = Vec::new();
            for (a, span) in non_empty(acts)? {
                actions.push(a.parse::<Action>().map_err(|m| Located::new(span, m))?);
            }
            sm.action = Some(actions);
        }
        sm.tables = opt_globs(&rs.tables, true)?;
        sm.functions = opt_globs(&rs.functions, true)?;
        sm.columns = opt_globs(&rs.columns, true)?;
        sm.has_where = rs.has_where;
        if sm.statement.is_none()
            && sm.object.is_none()
            && sm.action.is_none()
            && sm.tables.is_none()
            && sm.functions.is_none()
            && sm.columns.is_none()
            && sm.has_where.is_none()
        {
            return Err(Located::new(s.span(), "empty sql matcher"));
        }
        out.sql = Some(sm);
    }
    if let Some(s) = &m.ssh {
        one_family("ssh", s.span())?;
        let rs = s.get_ref();
        let mut sm = SshMatcher {
            command: opt_globs(&rs.command, false)?,
            command_regex: None,
        };
        if let Some(r) = &rs.command_regex {
            let mut res = Vec::new();
            for (p, span) in non_empty(r)? {
                res.push(Regex::new(&p).map_err(|e| {
                    Located::new(span, format!("invalid regex {p:?}: {}", regex_error(&e)))
                })?);
            }
            sm.command_regex = Some(res);
        }
        if sm.command.is_none() && sm.command_regex.is_none() {
            return Err(Located::new(s.span(), "empty ssh matcher"));
        }
        out.ssh = Some(sm);
    }
    if let Some(h) = &m.http {
        one_family("http", h.span())?;
        let rh = h.get_ref();
        let mut hm = HttpMatcher::default();
        if let Some(ms) = &rh.method {
            let mut methods = Vec::new();
            for (s, span) in non_empty(ms)? {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(Located::new(span, format!("invalid HTTP method {s:?}")));
                }
                methods.push(s.to_ascii_uppercase());
            }
            hm.method = Some(methods);
        }
        hm.host = opt_globs(&rh.host, true)?;
        hm.path = opt_globs(&rh.path, false)?;
        if hm.method.is_none() && hm.host.is_none() && hm.path.is_none() {
            return Err(Located::new(h.span(), "empty http matcher"));
        }
        out.http = Some(hm);
    }
    // sql/ssh/http keys with a protocol list that excludes their protocol
    // could never match: almost certainly a mistake.
    if let (Some((key, span)), Some(ps)) = (&family, &out.protocol) {
        let fits = |p: &Protocol| match *key {
            "sql" => p.is_sql(),
            "ssh" => *p == Protocol::Ssh,
            _ => *p == Protocol::Http,
        };
        if !ps.iter().any(fits) {
            let names: Vec<&str> = ps.iter().map(|p| p.as_str()).collect();
            return Err(Located::new(
                span.clone(),
                format!(
                    "{key}.* can never match: protocol is limited to {} ({key}.* applies to {})",
                    names.join(", "),
                    match *key {
                        "sql" => "postgres and mysql",
                        "ssh" => "ssh",
                        _ => "http",
                    }
                ),
            ));
        }
    }
    Ok(out)
}

/// The `match` keys as written, for listings: `protocol=postgres
/// sql.statement=[drop,truncate]`.
fn summary(m: &RawMatch) -> String {
    fn strs(v: &Strings) -> String {
        let items: Vec<String> = OneOrMany::items(v).into_iter().map(|(s, _)| s).collect();
        if items.len() == 1 {
            items.into_iter().next().unwrap_or_default()
        } else {
            format!("[{}]", items.join(","))
        }
    }
    fn nums(v: &Ints) -> String {
        let items: Vec<String> = OneOrMany::items(v)
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        if items.len() == 1 {
            items.into_iter().next().unwrap_or_default()
        } else {
            format!("[{}]", items.join(","))
        }
    }
    let mut parts = Vec::new();
    let mut s = |k: &str, v: &Option<Strings>| {
        if let Some(v) = v {
            parts.push(format!("{k}={}", strs(v)));
        }
    };
    s("protocol", &m.protocol);
    s("cgroup", &m.cgroup);
    s("unit", &m.unit);
    s("exe", &m.exe);
    s("comm", &m.comm);
    if let Some(u) = &m.uid {
        parts.push(format!("uid={}", nums(u)));
    }
    if let Some(id) = &m.identity {
        for (k, v) in id.get_ref() {
            parts.push(format!("identity.{}={}", k.get_ref(), strs(v)));
        }
    }
    if let Some(t) = &m.target {
        let t = t.get_ref();
        let mut s = |k: &str, v: &Option<Strings>| {
            if let Some(v) = v {
                parts.push(format!("target.{k}={}", strs(v)));
            }
        };
        s("cidr", &t.cidr);
        s("host", &t.host);
        s("database", &t.database);
        s("user", &t.user);
        if let Some(p) = &t.port {
            parts.push(format!("target.port={}", nums(p)));
        }
    }
    if let Some(q) = &m.sql {
        let q = q.get_ref();
        let mut s = |k: &str, v: &Option<Strings>| {
            if let Some(v) = v {
                parts.push(format!("sql.{k}={}", strs(v)));
            }
        };
        s("statement", &q.statement);
        s("object", &q.object);
        s("action", &q.action);
        s("tables", &q.tables);
        s("functions", &q.functions);
        s("columns", &q.columns);
        if let Some(w) = q.has_where {
            parts.push(format!("sql.has_where={w}"));
        }
    }
    if let Some(q) = &m.ssh {
        let q = q.get_ref();
        let mut s = |k: &str, v: &Option<Strings>| {
            if let Some(v) = v {
                parts.push(format!("ssh.{k}={}", strs(v)));
            }
        };
        s("command", &q.command);
        s("command_regex", &q.command_regex);
    }
    if let Some(q) = &m.http {
        let q = q.get_ref();
        let mut s = |k: &str, v: &Option<Strings>| {
            if let Some(v) = v {
                parts.push(format!("http.{k}={}", strs(v)));
            }
        };
        s("method", &q.method);
        s("host", &q.host);
        s("path", &q.path);
    }
    parts.join(" ")
}

fn mask(entry: &Spanned<RawMask>, text: &str) -> R<MaskRule> {
    let rm: &RawMask = entry.get_ref();
    if rm.detectors.is_none() && rm.columns.is_none() {
        return Err(Located::new(
            entry.span(),
            "a [[mask]] entry needs `detectors`, `columns` or both",
        ));
    }
    let mut detectors = DetectorSet::EMPTY;
    if let Some(ds) = &rm.detectors {
        for (d, span) in non_empty(ds)? {
            detectors.insert(d.parse::<Detector>().map_err(|m| Located::new(span, m))?);
        }
    }
    let mut columns = Vec::new();
    let mut column_set = None;
    if let Some(cs) = &rm.columns {
        let list = globs(cs, true)?;
        columns = list.0.iter().map(|g| g.as_str().to_owned()).collect();
        let set = RegexSet::new(list.0.iter().map(|g| g.regex_str())).map_err(|e| {
            Located::new(
                cs.span(),
                format!("invalid column globs: {}", regex_error(&e)),
            )
        })?;
        column_set = Some(Arc::new(set));
    }
    let matcher = rm
        .matcher
        .as_ref()
        .map(|m| matcher(m, Scope::Connection("[[mask]]", "masks")))
        .transpose()?;
    Ok(MaskRule {
        name: rm.name.clone(),
        line: line_of(text, entry.span().start),
        detectors,
        columns,
        column_set,
        matcher,
    })
}

fn limits(raw: &[Spanned<RawLimit>], text: &str) -> R<Vec<LimitRule>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    for entry in raw {
        let rl: &RawLimit = entry.get_ref();
        let name = rl.name.get_ref().clone();
        let span = rl.name.span();
        if name.trim().is_empty() {
            return Err(Located::new(span, "limit name must not be empty"));
        }
        if let Some(first) = names.insert(name.clone(), span.start) {
            return Err(Located::new(
                span,
                format!(
                    "duplicate limit name {name:?} (first defined at line {})",
                    line_of(text, first)
                ),
            ));
        }
        if rl.rows.is_none() && rl.bytes.is_none() {
            return Err(Located::new(
                entry.span(),
                "a [[limit]] entry needs `rows`, `bytes` or both",
            ));
        }
        let positive = |v: &Option<Spanned<i64>>, key: &str| -> R<Option<u64>> {
            v.as_ref()
                .map(|v| match u64::try_from(*v.get_ref()) {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(Located::new(
                        v.span(),
                        format!("{key} must be a positive integer, got {}", v.get_ref()),
                    )),
                })
                .transpose()
        };
        let rows = positive(&rl.rows, "rows")?;
        let bytes = positive(&rl.bytes, "bytes")?;
        let matcher = rl
            .matcher
            .as_ref()
            .map(|m| matcher(m, Scope::Connection("[[limit]]", "limits")))
            .transpose()?;
        out.push(LimitRule {
            name,
            line: line_of(text, entry.span().start),
            rows,
            bytes,
            matcher,
        });
    }
    Ok(out)
}
