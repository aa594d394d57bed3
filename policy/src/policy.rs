//! The loaded policy and the decision procedure.

use crate::compile::compile;
use crate::config::RawFile;
use crate::error::PolicyError;
use crate::limit::{LimitRule, ResultLimit};
use crate::mask::Masker;
use crate::matcher::{Applies, Matcher};
use crate::model::{
    Decision, Defaults, EgressAllow, InterceptRule, Operation, Target, Verdict, Workload,
};
use std::sync::Arc;

/// A validated policy. Cloning is cheap (the contents are shared), and a
/// `Policy` can be used from many threads at once.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub defaults: Defaults,
    pub intercepts: Vec<InterceptRule>,
    pub egress_allow: Vec<EgressAllow>,
    pub rules: Vec<Rule>,
    pub masker: Masker,
    pub limits: Vec<LimitRule>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) name: String,
    pub(crate) line: usize,
    pub(crate) decision: Verdict,
    pub(crate) is_final: bool,
    pub(crate) require_identity: bool,
    pub(crate) message: Option<String>,
    pub(crate) matcher: Matcher,
    pub(crate) summary: String,
}

impl Rule {
    /// The rule's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// 1-based line of the rule's `name` in the policy file.
    pub fn line(&self) -> usize {
        self.line
    }
    /// The rule's `decision`.
    pub fn decision(&self) -> Verdict {
        self.decision
    }
    /// Whether the rule is `final`.
    pub fn is_final(&self) -> bool {
        self.is_final
    }
    /// Whether the rule has `require_identity = true`.
    pub fn require_identity(&self) -> bool {
        self.require_identity
    }
    /// The rule's `message`.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
    /// The `match` keys as written, e.g. `protocol=postgres
    /// sql.statement=[drop,truncate]`; empty when the rule matches
    /// everything.
    pub fn summary(&self) -> &str {
        &self.summary
    }
}

impl Policy {
    /// Parses and validates a policy file. `file_name` only labels errors
    /// (`FILE:LINE:COL: message`); nothing is read from disk.
    pub fn parse(text: &str, file_name: &str) -> Result<Policy, PolicyError> {
        Policy::parse_judging(text, file_name, crate::JUDGED_FAMILIES)
    }

    /// [`Policy::parse`] accepting the operation keys of the `judged`
    /// families (tests of matchers no module uses yet).
    pub(crate) fn parse_judging(
        text: &str,
        file_name: &str,
        judged: &[&str],
    ) -> Result<Policy, PolicyError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().replace('\n', "; ");
            PolicyError::at(file_name, text, e.span(), msg)
        })?;
        let inner = compile(raw, text, judged)
            .map_err(|l| PolicyError::at(file_name, text, Some(l.span), l.message))?;
        Ok(Policy {
            inner: Arc::new(inner),
        })
    }

    /// The `[defaults]` table (built-in values for keys not given).
    pub fn defaults(&self) -> &Defaults {
        &self.inner.defaults
    }

    /// The `[[intercept]]` entries, in file order.
    pub fn intercepts(&self) -> &[InterceptRule] {
        &self.inner.intercepts
    }

    /// The `[[egress_allow]]` entries, in file order.
    pub fn egress_allow(&self) -> &[EgressAllow] {
        &self.inner.egress_allow
    }

    /// The `[[rule]]` entries, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.inner.rules
    }

    /// The `[[mask]]` rules.
    pub fn masker(&self) -> &crate::mask::Masker {
        &self.inner.masker
    }

    /// The `[[limit]]` entries, in file order.
    pub fn limits(&self) -> &[LimitRule] {
        &self.inner.limits
    }

    /// The tightest result limit for connections of `workload` to `target`:
    /// the smallest `rows` and the smallest `bytes` of every `[[limit]]`
    /// that applies, each with the name of the limit that set it. `None`
    /// when no limit applies.
    pub fn result_limit(&self, workload: &Workload, target: &Target) -> Option<ResultLimit> {
        let mut out: Option<ResultLimit> = None;
        for l in self
            .inner
            .limits
            .iter()
            .filter(|l| l.applies(workload, target))
        {
            out.get_or_insert_with(ResultLimit::default).tighten(l);
        }
        out
    }

    /// Decides what happens to `op`, performed by `workload` on `target`.
    ///
    /// 1. `require_identity` (in `[defaults]`, or on any matching rule) with
    ///    no verified identity → deny.
    /// 2. The first matching rule with `final = true` decides.
    /// 3. Otherwise the strictest matching rule decides (deny > review >
    ///    allow; ties go to the rule first in the file).
    /// 4. No rule matched → `defaults.decision`.
    ///
    /// For [`Operation::SqlUnparsed`] rules with `sql.*` keys cannot match,
    /// and step 3/4 become: the stricter of `defaults.unparsed` and the
    /// strictest matching rule.
    ///
    /// A workload without a verified identity can neither be shown to match
    /// `identity.*` keys nor shown not to. Such a rule (every other key
    /// matching) is then taken as matching when it is a `deny` or `review`
    /// rule and as not matching when it is an `allow` rule, and the verdict
    /// is the strictest any identity could get: a final rule decided this way
    /// does not pre-empt the rules after it (the strictest of it and the
    /// first certainly matching final rule decides), and when no rule
    /// matches for certain `defaults.decision` still counts. So losing an
    /// identity (never enrolling, revoking, letting it expire) never makes a
    /// verdict less strict than it is for any enrolled identity.
    pub fn decide(&self, workload: &Workload, target: &Target, op: &Operation<'_>) -> Decision {
        let inner = &*self.inner;
        let verified = workload.identity.is_some();
        if inner.defaults.require_identity && !verified {
            return Decision {
                verdict: Verdict::Deny,
                rule: Some("defaults.require_identity".to_owned()),
                message: None,
                reason: "identity enrollment required: defaults.require_identity = true and the workload has no verified identity".to_owned(),
            };
        }

        // The first final rule that matches for certain.
        let mut first_final: Option<&Rule> = None;
        // The strictest final rule before it that matches only because the
        // identity is unverified.
        let mut unverified_final: Option<&Rule> = None;
        // The strictest matching rule, and whether it matched unverified.
        let mut strictest: Option<(&Rule, Applies)> = None;
        let mut matched = 0usize;
        let mut certain = 0usize;
        for rule in &inner.rules {
            let applies = rule.matcher.applies(workload, target, op);
            match applies {
                Applies::No => continue,
                // An allow rule never matches an identity it cannot check.
                Applies::Unverified if rule.decision == Verdict::Allow => continue,
                Applies::Yes | Applies::Unverified => {}
            }
            if rule.require_identity && !verified {
                return Decision {
                    verdict: Verdict::Deny,
                    rule: Some(rule.name.clone()),
                    message: rule.message.clone(),
                    reason: format!(
                        "identity enrollment required: rule {:?} matched ({}) and requires a verified workload identity",
                        rule.name,
                        rule.matcher.explain(workload, target, op)
                    ),
                };
            }
            matched += 1;
            if applies == Applies::Yes {
                certain += 1;
            }
            if rule.is_final && first_final.is_none() {
                match applies {
                    Applies::Yes => first_final = Some(rule),
                    _ => {
                        if unverified_final.is_none_or(|u| rule.decision > u.decision) {
                            unverified_final = Some(rule);
                        }
                    }
                }
            }
            if strictest.is_none_or(|(s, _)| rule.decision > s.decision) {
                strictest = Some((rule, applies));
            }
        }

        let explain = |rule: &Rule, applies: Applies| {
            let keys = rule.matcher.explain(workload, target, op);
            match applies {
                Applies::Unverified => format!(
                    "rule {:?} matched ({keys}; a {} rule's identity.* keys match a workload without a verified identity)",
                    rule.name, rule.decision
                ),
                _ => format!("rule {:?} matched ({keys})", rule.name),
            }
        };

        if let Some(rule) = first_final {
            if let Some(u) = unverified_final.filter(|u| u.decision > rule.decision) {
                return rule_decision(
                    u,
                    format!(
                        "{} and is final, before final rule {:?}, which matched",
                        explain(u, Applies::Unverified),
                        rule.name
                    ),
                );
            }
            return rule_decision(
                rule,
                format!("{} and is final", explain(rule, Applies::Yes)),
            );
        }

        let others = |matched: usize| match matched {
            0 | 1 => String::new(),
            n => format!("; strictest of {n} matching rules"),
        };

        if let Operation::SqlUnparsed { error, .. } = op {
            let unparsed = inner.defaults.unparsed;
            return match strictest {
                Some((rule, applies)) if rule.decision >= unparsed => rule_decision(
                    rule,
                    format!(
                        "SQL could not be classified ({error}); {}{}",
                        explain(rule, applies),
                        others(matched)
                    ),
                ),
                _ => Decision {
                    verdict: unparsed,
                    rule: None,
                    message: None,
                    reason: format!(
                        "SQL could not be classified ({error}); defaults.unparsed = {unparsed}"
                    ),
                },
            };
        }

        match strictest {
            // Only rules matched for want of an identity: an identity
            // matching none of them would get the default.
            Some((rule, _)) if certain == 0 && inner.defaults.decision > rule.decision => {
                Decision {
                    verdict: inner.defaults.decision,
                    rule: None,
                    message: None,
                    reason: format!(
                        "no rule matched for certain; defaults.decision = {} (stricter than rule {:?}, which matched only because the workload has no verified identity)",
                        inner.defaults.decision, rule.name
                    ),
                }
            }
            Some((rule, applies)) => rule_decision(
                rule,
                format!("{}{}", explain(rule, applies), others(matched)),
            ),
            None => Decision {
                verdict: inner.defaults.decision,
                rule: None,
                message: None,
                reason: format!(
                    "no rule matched; defaults.decision = {}",
                    inner.defaults.decision
                ),
            },
        }
    }
}

fn rule_decision(rule: &Rule, reason: String) -> Decision {
    Decision {
        verdict: rule.decision,
        rule: Some(rule.name.clone()),
        message: rule.message.clone(),
        reason,
    }
}

impl Rule {
    /// Whether the rule uses sql.*, ssh.* or http.* keys (and so never
    /// matches [`Operation::Connect`]).
    pub fn is_operation_specific(&self) -> bool {
        self.matcher.is_operation_specific()
    }
}
