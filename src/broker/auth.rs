//! Authentication (user names and passwords) and authorization (ACL rules) of broker clients.
//!
//! # Credentials
//! A user's secret is plain text (`users:` in YAML) or a `mosquitto_passwd` hash (`password_file`, see
//! [`passwd`]): `$6$` salted SHA-512 or `$7$` PBKDF2-SHA512. Every comparison is constant-time.
//!
//! # ACL semantics
//! Rules are checked in order; the first rule that is for this client (everyone, anonymous clients only, or one
//! user) and covers the action decides. With no rules at all, everything is allowed; with rules and no match,
//! access is denied. `%u` and `%c` in a rule's filter stand for the client's user name and client id.
//!
//! - PUBLISH: the topic name is matched.
//! - SUBSCRIBE (as mosquitto does it): granted only if one allow rule *contains* the whole filter (every topic
//!   the filter can match is matched by the rule: `gw/#` is not within `gw/+`, `gw/+/key` is not within `gw/+`)
//!   and no deny rule met before that allow *intersects* it (`gw/#` meets `deny gw/secret/#`), unless the shared
//!   topics are already granted by an earlier allow rule. `$share/<group>/<filter>` is judged on `<filter>`.
//! - Every delivery (live, retained at subscribe, shared, queued while offline, resent after a reconnect) is
//!   checked again against the receiver's read rights on the concrete topic. Whatever a filter trick might
//!   get past the subscribe check, nothing is sent that the receiver may not read.
//! - `%u`/`%c` are substituted only with values that cannot change the filter's shape: a user name or client
//!   id that is empty or contains `+`, `#` or `/` (and `%u` for an anonymous client) makes an *allow* rule not
//!   match, and a *deny* rule match every topic (mosquitto denies such clients everything once patterns
//!   exist; the safe side of a deny is the broad one).
//!
//! Checks are cheap when no ACL is configured (one branch per delivery), and with an ACL each connection keeps
//! its own rules (already filtered and substituted) plus a bounded per-topic cache of read decisions, rebuilt
//! when the configuration is reloaded.
use std::collections::HashMap;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::broker::config::{
    AclAccess, AclRule, AclWho, BrokerConfig, ClientIdBinding, Password, UserConfig,
};

use crate::mqtt::reason;

pub mod aclfile;
pub mod passwd;

/// A problem in a `password_file` or `acl_file`, at a 1-based line and column (the config layer adds the
/// file name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct FileError {
    /// 1-based line.
    pub line: u32,
    /// 1-based column (bytes).
    pub col: u32,
    /// What is wrong.
    pub message: String,
}

impl FileError {
    fn new(line: u32, col: u32, message: impl Into<String>) -> FileError {
        FileError {
            line,
            col,
            message: message.into(),
        }
    }
}

/// The outcome of checking credentials, as a v5 CONNACK reason code on failure.
pub fn authenticate(
    users: &[UserConfig],
    allow_anonymous: bool,
    username: Option<&str>,
    password: Option<&[u8]>,
) -> Result<(), u8> {
    match username {
        None => {
            if allow_anonymous {
                Ok(())
            } else {
                Err(reason::NOT_AUTHORIZED)
            }
        }
        Some(name) => {
            let Some(user) = users.iter().find(|u| u.username == name) else {
                // An unknown user with anonymous access allowed is still a failed login: a typo in a user
                // name must not silently fall back to anonymous rights. The same hashing work as for a
                // known user (mosquitto_passwd's default) keeps user names from being probed by timing.
                let decoy = Password::Pbkdf2Sha512 {
                    iterations: 101,
                    salt: vec![0; 12],
                    hash: vec![0; 64],
                };
                let _ = verify(&decoy, password.unwrap_or_default());
                return Err(reason::BAD_USER_NAME_OR_PASSWORD);
            };
            match password {
                Some(p) if verify(&user.password, p) => Ok(()),
                _ => Err(reason::BAD_USER_NAME_OR_PASSWORD),
            }
        }
    }
}

/// Whether `given` is the password `stored` describes (constant-time in the compared bytes).
pub fn verify(stored: &Password, given: &[u8]) -> bool {
    match stored {
        Password::Plain(p) => {
            // Compare equal-length digests so the time does not depend on where (or whether) lengths differ.
            let a = ring::digest::digest(&ring::digest::SHA512, p.as_bytes());
            let b = ring::digest::digest(&ring::digest::SHA512, given);
            bool::from(a.as_ref().ct_eq(b.as_ref()))
        }
        Password::Sha512 { salt, hash } => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
            ctx.update(given);
            ctx.update(salt);
            bool::from(ctx.finish().as_ref().ct_eq(hash))
        }
        Password::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        } => {
            let Some(n) = std::num::NonZeroU32::new(*iterations) else {
                return false;
            };
            let mut out = vec![0u8; hash.len()];
            ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA512, n, salt, given, &mut out);
            bool::from(out.as_slice().ct_eq(hash))
        }
    }
}

/// Whether a client that authenticated as `user` may attach to the existing session `owner` holds (as
/// `client_id_binding` says), as a v5 CONNACK reason code on refusal. `owner` is the user of the connection that
/// created or last attached the session (`None`: anonymous).
pub fn check_binding(
    cfg: &BrokerConfig,
    owner: Option<&str>,
    user: Option<&str>,
) -> Result<(), u8> {
    match cfg.client_id_binding {
        ClientIdBinding::Off => Ok(()),
        ClientIdBinding::Strict if owner == user => Ok(()),
        ClientIdBinding::Strict => Err(reason::CLIENT_IDENTIFIER_NOT_VALID),
    }
}

/// What a client wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic.
    Publish,
    /// Subscribe to a filter, or receive a message on a topic.
    Subscribe,
}

fn covers(access: AclAccess, action: Action) -> bool {
    matches!(
        (access, action),
        (AclAccess::All, _)
            | (AclAccess::Publish, Action::Publish)
            | (AclAccess::Subscribe, Action::Subscribe)
    )
}

fn applies(who: &AclWho, user: Option<&str>) -> bool {
    match who {
        AclWho::Everyone => true,
        AclWho::Anonymous => user.is_none(),
        AclWho::User(u) => user == Some(u.as_str()),
    }
}

/// A value that may be put into a filter level: it cannot add levels or wildcards.
fn substitutable(v: &str) -> bool {
    !v.is_empty() && !v.contains(['+', '#', '/'])
}

/// What a rule matches once compiled for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// A filter, split into levels.
    Levels(Vec<Box<str>>),
    /// Every topic, `$` topics included (a deny rule whose placeholder could not be substituted).
    Everything,
}

/// One rule, for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: Pattern,
    access: AclAccess,
    allow: bool,
}

/// Keeps only the rules that are for this client, with `%u`/`%c` substituted (see the module doc).
fn compile(acl: &[AclRule], user: Option<&str>, client_id: &str) -> Vec<Rule> {
    let mut out = Vec::new();
    for r in acl {
        if !applies(&r.who, user) {
            continue;
        }
        let needs_user = r.filter.contains("%u");
        let needs_id = r.filter.contains("%c");
        let user_ok = !needs_user || user.is_some_and(substitutable);
        let id_ok = !needs_id || substitutable(client_id);
        let pattern = if user_ok && id_ok {
            let f = if needs_user || needs_id {
                r.filter
                    .replace("%u", user.unwrap_or(""))
                    .replace("%c", client_id)
            } else {
                r.filter.clone()
            };
            Pattern::Levels(f.split('/').map(Into::into).collect())
        } else if r.allow {
            continue;
        } else {
            Pattern::Everything
        };
        out.push(Rule {
            pattern,
            access: r.access,
            allow: r.allow,
        });
    }
    out
}

fn is_wild(level: &str) -> bool {
    level == "+" || level == "#"
}

/// A topic starting with `$` is not matched by a wildcard in the first level: `a` (a rule or a filter) starting
/// with a wildcard shares no topic with `b` starting with a `$` level.
fn dollar_split<S: AsRef<str>, T: AsRef<str>>(a: &[S], b: &[T]) -> bool {
    match (a.first(), b.first()) {
        (Some(x), Some(y)) => {
            let (x, y) = (x.as_ref(), y.as_ref());
            (is_wild(x) && !is_wild(y) && y.starts_with('$'))
                || (is_wild(y) && !is_wild(x) && x.starts_with('$'))
        }
        _ => false,
    }
}

/// Whether every topic filter `f` can match is matched by filter `a` (both split into levels).
pub fn filter_contains<S: AsRef<str>, T: AsRef<str>>(a: &[S], f: &[T]) -> bool {
    if dollar_split(a, f) {
        return false;
    }
    let mut i = 0;
    loop {
        match (a.get(i).map(AsRef::as_ref), f.get(i).map(AsRef::as_ref)) {
            // `a/#` covers `a` itself and everything below.
            (Some("#"), _) => return true,
            // `+/#` is every topic (each has at least one level), like `#`.
            (Some("+"), Some("#")) => return i == 0 && a.len() == 2 && a[1].as_ref() == "#",
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y && !is_wild(x) => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

/// The filter matching exactly the topics both `a` and `f` match, or `None` when they share no topic.
pub fn filter_intersection<S: AsRef<str>, T: AsRef<str>>(a: &[S], f: &[T]) -> Option<Vec<String>> {
    if dollar_split(a, f) {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match (a.get(i).map(AsRef::as_ref), f.get(i).map(AsRef::as_ref)) {
            (Some("#"), Some(_)) => {
                out.extend(f[i..].iter().map(|s| s.as_ref().to_string()));
                return Some(out);
            }
            (Some(_), Some("#")) => {
                out.extend(a[i..].iter().map(|s| s.as_ref().to_string()));
                return Some(out);
            }
            // `x/#` and `x` share the topic `x`.
            (Some("#"), None) | (None, Some("#")) | (None, None) => return Some(out),
            (None, Some(_)) | (Some(_), None) => return None,
            (Some("+"), Some(y)) => out.push(y.to_string()),
            (Some(x), Some("+")) => out.push(x.to_string()),
            (Some(x), Some(y)) if x == y => out.push(x.to_string()),
            _ => return None,
        }
        i += 1;
    }
}

fn matches_topic(levels: &[Box<str>], topic: &str) -> bool {
    if topic.starts_with('$') && levels.first().is_some_and(|l| is_wild(l)) {
        return false;
    }
    let mut t = topic.split('/');
    for level in levels {
        match (&**level, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(x)) if l == x => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// The first rule covering `action` that matches `topic` decides; none: denied.
fn decide(rules: &[Rule], action: Action, topic: &str) -> bool {
    for r in rules {
        if !covers(r.access, action) {
            continue;
        }
        let hit = match &r.pattern {
            Pattern::Everything => true,
            Pattern::Levels(l) => matches_topic(l, topic),
        };
        if hit {
            return r.allow;
        }
    }
    false
}

/// Whether the whole `filter` (no `$share` prefix) may be subscribed to under `rules` (see the module doc).
fn decide_subscribe(rules: &[Rule], filter: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let mut partial: Vec<&[Box<str>]> = Vec::new();
    for r in rules {
        if !covers(r.access, Action::Subscribe) {
            continue;
        }
        match (&r.pattern, r.allow) {
            (Pattern::Everything, allow) => return allow,
            (Pattern::Levels(l), true) => {
                if filter_contains(l, &f) {
                    return true;
                }
                if filter_intersection(l, &f).is_some() {
                    partial.push(l);
                }
            }
            (Pattern::Levels(l), false) => {
                if let Some(shared) = filter_intersection(l, &f) {
                    // Topics an earlier allow already granted are decided; the rest meet this deny.
                    if !partial.iter().any(|a| filter_contains(a, &shared)) {
                        return false;
                    }
                }
            }
        }
    }
    false
}

/// Largest number of per-topic read decisions a connection remembers (then the cache starts over).
const READ_CACHE_MAX: usize = 1024;

/// One connection's view of the ACL: the rules that concern it, substituted, and a cache of read decisions.
/// Rebuilt by [`ClientAcl::refresh`] when the broker configuration changes (a reload).
#[derive(Debug)]
pub struct ClientAcl {
    cfg: Arc<BrokerConfig>,
    /// The broker's configuration generation last seen by [`ClientAcl::refresh_from`].
    generation: u64,
    /// `None`: no ACL configured, everything is allowed and nothing is looked up. Boxed: every connection
    /// carries a `ClientAcl`, most brokers have no ACL.
    compiled: Option<Box<Compiled>>,
}

#[derive(Debug)]
struct Compiled {
    rules: Vec<Rule>,
    read_cache: HashMap<Arc<str>, bool, ahash::RandomState>,
}

/// Who a [`ClientAcl`] is for: the user (`None`: anonymous) and the client id. Asked for only when the rules
/// are compiled (at CONNECT and after a reload), so a connection need not carry copies of both.
pub type Who = (Option<Arc<str>>, Arc<str>);

impl ClientAcl {
    /// The ACL of a client that authenticated as `user` (`None`: anonymous) with `client_id`.
    pub fn new(cfg: Arc<BrokerConfig>, user: Option<&str>, client_id: Arc<str>) -> ClientAcl {
        let mut acl = ClientAcl {
            generation: 0,
            compiled: None,
            cfg: cfg.clone(),
        };
        acl.rebuild(cfg, (user.map(Into::into), client_id));
        acl
    }

    fn rebuild(&mut self, cfg: Arc<BrokerConfig>, (user, client_id): Who) {
        self.compiled = (!cfg.acl.is_empty()).then(|| {
            Box::new(Compiled {
                rules: compile(&cfg.acl, user.as_deref(), &client_id),
                read_cache: HashMap::default(),
            })
        });
        self.cfg = cfg;
    }

    /// Follows a configuration change; a no-op (a pointer comparison) when `cfg` is the one in use. `who` is
    /// called only when the rules must be compiled again.
    pub fn refresh(&mut self, cfg: &Arc<BrokerConfig>, who: impl FnOnce() -> Who) {
        if !Arc::ptr_eq(cfg, &self.cfg) {
            self.rebuild(cfg.clone(), who());
        }
    }

    /// Like [`ClientAcl::refresh`] from the broker's current configuration. `generation` (bumped after each
    /// configuration change) makes the common case one atomic load: no lock, no reference count.
    #[inline]
    pub(crate) fn refresh_from(
        &mut self,
        generation: &std::sync::atomic::AtomicU64,
        current: &parking_lot::RwLock<Arc<BrokerConfig>>,
        who: impl FnOnce() -> Who,
    ) {
        let g = generation.load(std::sync::atomic::Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            let cfg = current.read().clone();
            self.refresh(&cfg, who);
        }
    }

    /// Whether the client may publish on `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.compiled
            .as_ref()
            .is_none_or(|c| decide(&c.rules, Action::Publish, topic))
    }

    /// Whether the client may subscribe to `filter` (without a `$share/<group>/` prefix).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.compiled
            .as_ref()
            .is_none_or(|c| decide_subscribe(&c.rules, filter))
    }

    /// Whether a message on `topic` may be delivered to the client (cached per topic).
    #[inline]
    pub fn may_read(&mut self, topic: &Arc<str>) -> bool {
        match &mut self.compiled {
            None => true,
            Some(c) => c.may_read_slow(topic),
        }
    }
}

impl Compiled {
    fn may_read_slow(&mut self, topic: &Arc<str>) -> bool {
        if let Some(v) = self.read_cache.get(topic) {
            return *v;
        }
        let v = decide(&self.rules, Action::Subscribe, topic);
        if self.read_cache.len() >= READ_CACHE_MAX {
            self.read_cache.clear();
        }
        self.read_cache.insert(topic.clone(), v);
        v
    }
}

/// Whether `user`/`client_id` may do `action` on `topic` (a topic name, or a filter for subscribe), compiling the
/// rules on the fly: for one-off checks (a will at CONNECT). Connections use a [`ClientAcl`].
pub fn authorize(
    acl: &[AclRule],
    user: Option<&str>,
    client_id: &str,
    action: Action,
    topic: &str,
) -> bool {
    if acl.is_empty() {
        return true;
    }
    let rules = compile(acl, user, client_id);
    match action {
        Action::Publish => decide(&rules, Action::Publish, topic),
        Action::Subscribe => decide_subscribe(&rules, topic),
    }
}

/// Whether listener `l` is reachable from other hosts and accepts anonymous clients: what `fieldbridge check`
/// warns about.
pub fn exposed_to_anonymous(cfg: &BrokerConfig, l: &crate::broker::config::ListenerConfig) -> bool {
    l.allow_anonymous.unwrap_or(cfg.allow_anonymous) && !l.bind.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::filter_matches;

    fn rule(who: AclWho, filter: &str, access: AclAccess, allow: bool) -> AclRule {
        AclRule {
            who,
            filter: filter.into(),
            access,
            allow,
        }
    }

    fn user(name: &str) -> AclWho {
        AclWho::User(name.into())
    }

    #[test]
    fn credentials() {
        let users = vec![UserConfig {
            username: "alice".into(),
            password: "s3cret".into(),
        }];
        assert_eq!(authenticate(&users, true, None, None), Ok(()));
        assert_eq!(authenticate(&users, false, None, None), Err(0x87));
        assert_eq!(
            authenticate(&users, false, Some("alice"), Some(b"s3cret")),
            Ok(())
        );
        assert_eq!(
            authenticate(&users, true, Some("alice"), Some(b"nope")),
            Err(0x86)
        );
        assert_eq!(
            authenticate(&users, true, Some("alice"), Some(b"s3cret ")),
            Err(0x86)
        );
        assert_eq!(
            authenticate(&users, true, Some("bob"), Some(b"s3cret")),
            Err(0x86)
        );
        assert_eq!(authenticate(&users, true, Some("alice"), None), Err(0x86));
    }

    #[test]
    fn acl_first_match_decides() {
        let acl = vec![
            rule(user("alice"), "secret/#", AclAccess::All, true),
            rule(AclWho::Everyone, "secret/#", AclAccess::All, false),
            rule(AclWho::Everyone, "clients/%c/#", AclAccess::Publish, true),
            rule(AclWho::Everyone, "public/#", AclAccess::Subscribe, true),
        ];
        let a = |u: Option<&str>, c: &str, act, t: &str| authorize(&acl, u, c, act, t);
        assert!(a(Some("alice"), "c1", Action::Publish, "secret/x"));
        assert!(!a(Some("bob"), "c1", Action::Publish, "secret/x"));
        assert!(a(None, "c1", Action::Publish, "clients/c1/x"));
        assert!(!a(None, "c2", Action::Publish, "clients/c1/x"));
        assert!(a(None, "c2", Action::Subscribe, "public/+/a"));
        assert!(!a(None, "c2", Action::Publish, "public/a"));
        assert!(!a(None, "c2", Action::Subscribe, "#"));
        assert!(authorize(&[], None, "c2", Action::Subscribe, "#"));
    }

    /// The bypasses of issue 8: against `allow gw/+` and `deny gw/secret/#`, in either order.
    #[test]
    fn subscribe_needs_the_whole_filter_within_an_allow_and_no_deny() {
        for deny_first in [false, true] {
            let mut acl = vec![
                rule(AclWho::Everyone, "gw/+", AclAccess::Subscribe, true),
                rule(AclWho::Everyone, "gw/secret/#", AclAccess::All, false),
            ];
            if deny_first {
                acl.reverse();
            }
            let s = |f: &str| authorize(&acl, None, "c", Action::Subscribe, f);
            // Deny first: `gw/secret/#` also matches `gw/secret`, one of the topics of `gw/+`.
            assert_eq!(s("gw/+"), !deny_first);
            assert!(s("gw/temp"));
            assert!(!s("gw/#"), "gw/# is not within gw/+");
            assert!(!s("gw/+/key"), "gw/+/key is not within gw/+");
            assert!(!s("#"));
            assert!(!s("+/+"));
            assert!(!s("gw/secret/#"));
            // `gw/secret` is one level: within gw/+, and the deny `gw/secret/#` covers it too.
            assert_eq!(s("gw/secret"), !deny_first);
        }
        // An allow that is wider than the deny: the deny still cuts it.
        let acl = vec![
            rule(AclWho::Everyone, "gw/#", AclAccess::Subscribe, true),
            rule(AclWho::Everyone, "gw/secret/#", AclAccess::All, false),
        ];
        // First match: `gw/#` contains the whole filter before the deny is met.
        assert!(authorize(&acl, None, "c", Action::Subscribe, "gw/#"));
        let acl = vec![
            rule(AclWho::Everyone, "gw/secret/#", AclAccess::All, false),
            rule(AclWho::Everyone, "gw/#", AclAccess::Subscribe, true),
        ];
        let s = |f: &str| authorize(&acl, None, "c", Action::Subscribe, f);
        assert!(!s("gw/#"));
        assert!(!s("gw/+/key"));
        assert!(s("gw/public/#"));
        // `gw/secret/#` also matches `gw/secret` itself, one of the topics of `gw/+`.
        assert!(!s("gw/+"));
        assert!(s("gw/public"));
    }

    #[test]
    fn deny_after_a_partial_allow_that_already_granted_the_overlap() {
        let acl = vec![
            rule(user("alice"), "secret/#", AclAccess::All, true),
            rule(AclWho::Everyone, "secret/#", AclAccess::All, false),
            rule(AclWho::Everyone, "#", AclAccess::Subscribe, true),
        ];
        assert!(authorize(&acl, Some("alice"), "c", Action::Subscribe, "#"));
        assert!(!authorize(&acl, Some("bob"), "c", Action::Subscribe, "#"));
        assert!(authorize(
            &acl,
            Some("bob"),
            "c",
            Action::Subscribe,
            "other/#"
        ));
    }

    #[test]
    fn share_prefix_is_judged_on_its_inner_filter() {
        // The connection strips `$share/<group>/`; the same rules then apply.
        let acl = vec![rule(AclWho::Everyone, "gw/+", AclAccess::Subscribe, true)];
        let parsed = super::super::router::parse_filter("$share/g/gw/#");
        assert!(!authorize(
            &acl,
            None,
            "c",
            Action::Subscribe,
            parsed.filter
        ));
        let parsed = super::super::router::parse_filter("$share/g/gw/+");
        assert!(authorize(&acl, None, "c", Action::Subscribe, parsed.filter));
    }

    #[test]
    fn dangerous_ids_never_become_wildcards() {
        let acl = vec![
            rule(AclWho::Everyone, "cmd/%c/set", AclAccess::All, true),
            rule(AclWho::Everyone, "home/%u/#", AclAccess::All, true),
        ];
        for id in ["+", "#", "a/b", "a+", ""] {
            assert!(
                !authorize(&acl, None, id, Action::Publish, "cmd/victim/set"),
                "{id}"
            );
            assert!(
                !authorize(&acl, None, id, Action::Subscribe, "cmd/+/set"),
                "{id}"
            );
            assert!(
                !authorize(&acl, None, id, Action::Subscribe, "cmd/#"),
                "{id}"
            );
        }
        assert!(authorize(&acl, None, "me", Action::Publish, "cmd/me/set"));
        assert!(!authorize(&acl, None, "me", Action::Publish, "cmd/you/set"));
        for u in ["+", "#", "x/y"] {
            assert!(
                !authorize(&acl, Some(u), "c", Action::Publish, "home/bob/x"),
                "{u}"
            );
        }
        // %u never matches an anonymous client (no empty level).
        assert!(!authorize(&acl, None, "c", Action::Publish, "home//x"));
        assert!(authorize(
            &acl,
            Some("bob"),
            "c",
            Action::Publish,
            "home/bob/x"
        ));
        // A deny rule with an unusable placeholder denies everything (the safe side).
        let acl = vec![
            rule(AclWho::Everyone, "cmd/%c/admin", AclAccess::All, false),
            rule(AclWho::Everyone, "#", AclAccess::All, true),
        ];
        assert!(authorize(
            &acl,
            None,
            "ok",
            Action::Publish,
            "cmd/other/admin"
        ));
        assert!(!authorize(
            &acl,
            None,
            "ok",
            Action::Publish,
            "cmd/ok/admin"
        ));
        assert!(!authorize(&acl, None, "+", Action::Publish, "cmd/ok/admin"));
        assert!(!authorize(&acl, None, "+", Action::Publish, "anything"));
    }

    #[test]
    fn anonymous_scope() {
        let acl = vec![
            rule(AclWho::Anonymous, "public/#", AclAccess::All, true),
            rule(user("op"), "#", AclAccess::All, true),
        ];
        assert!(authorize(&acl, None, "c", Action::Publish, "public/x"));
        assert!(!authorize(
            &acl,
            Some("eve"),
            "c",
            Action::Publish,
            "public/x"
        ));
        assert!(authorize(
            &acl,
            Some("op"),
            "c",
            Action::Publish,
            "public/x"
        ));
    }

    /// Containment and intersection agree with brute force over a small universe of topics.
    #[test]
    fn filter_algebra_matches_brute_force() {
        let atoms = ["a", "b", "$s", "", "+", "#"];
        let mut filters: Vec<String> = Vec::new();
        for n in 1..=3 {
            let mut cur: Vec<String> = vec![String::new()];
            for depth in 0..n {
                let mut next = Vec::new();
                for p in &cur {
                    for a in atoms {
                        if a == "#" && depth + 1 != n {
                            continue;
                        }
                        next.push(if depth == 0 {
                            a.to_string()
                        } else {
                            format!("{p}/{a}")
                        });
                    }
                }
                cur = next;
            }
            filters.extend(cur);
        }
        let topic_atoms = ["a", "b", "c", "$s", ""];
        let mut topics: Vec<String> = Vec::new();
        let mut cur: Vec<String> = vec![String::new()];
        for depth in 0..4 {
            let mut next = Vec::new();
            for p in &cur {
                for a in topic_atoms {
                    next.push(if depth == 0 {
                        a.to_string()
                    } else {
                        format!("{p}/{a}")
                    });
                }
            }
            topics.extend(next.iter().cloned());
            cur = next;
        }
        let matches =
            |f: &str| -> Vec<bool> { topics.iter().map(|t| filter_matches(f, t)).collect() };
        let sets: Vec<Vec<bool>> = filters.iter().map(|f| matches(f)).collect();
        let mut memo: HashMap<String, Vec<bool>> = HashMap::new();
        for (a, ta) in filters.iter().zip(&sets) {
            let al: Vec<&str> = a.split('/').collect();
            for (f, tf) in filters.iter().zip(&sets) {
                let fl: Vec<&str> = f.split('/').collect();
                let contained = ta.iter().zip(tf).all(|(x, y)| !*y || *x);
                assert_eq!(filter_contains(&al, &fl), contained, "{f} within {a}");
                let both: Vec<bool> = ta.iter().zip(tf).map(|(x, y)| *x && *y).collect();
                match filter_intersection(&al, &fl) {
                    None => assert!(both.iter().all(|b| !b), "{a} and {f} share a topic"),
                    Some(i) => {
                        let i = i.join("/");
                        let ti = memo.entry(i.clone()).or_insert_with(|| matches(&i));
                        assert_eq!(*ti, both, "{a} ∩ {f} = {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn read_checks_are_cached_and_follow_reloads() {
        let cfg = BrokerConfig {
            acl: vec![rule(AclWho::Everyone, "gw/+", AclAccess::Subscribe, true)],
            ..Default::default()
        };
        let cfg = Arc::new(cfg);
        let mut acl = ClientAcl::new(cfg.clone(), None, "c".into());
        let t: Arc<str> = "gw/secret".into();
        assert!(acl.may_read(&t));
        assert!(!acl.may_read(&"gw/secret/key".into()));
        let mut next = (*cfg).clone();
        next.acl.insert(
            0,
            rule(AclWho::Everyone, "gw/secret", AclAccess::All, false),
        );
        acl.refresh(&Arc::new(next), || (None, "c".into()));
        assert!(
            !acl.may_read(&t),
            "the cache was dropped with the old rules"
        );
        for i in 0..3 * READ_CACHE_MAX {
            assert!(acl.may_read(&format!("gw/{i}").into()));
        }
        assert!(acl.compiled.as_ref().unwrap().read_cache.len() <= READ_CACHE_MAX);
        let open = ClientAcl::new(Arc::new(BrokerConfig::default()), None, "c".into());
        assert!(open.compiled.is_none());
    }

    #[test]
    fn binding() {
        let mut cfg = BrokerConfig::default();
        assert_eq!(check_binding(&cfg, Some("a"), Some("a")), Ok(()));
        assert_eq!(check_binding(&cfg, None, None), Ok(()));
        assert_eq!(check_binding(&cfg, Some("a"), Some("b")), Err(0x85));
        assert_eq!(check_binding(&cfg, None, Some("b")), Err(0x85));
        assert_eq!(check_binding(&cfg, Some("a"), None), Err(0x85));
        cfg.client_id_binding = ClientIdBinding::Off;
        assert_eq!(check_binding(&cfg, Some("a"), Some("b")), Ok(()));
    }

    #[test]
    fn hashed_passwords() {
        // Written by Debian's mosquitto_passwd 2.0.11 (`-H sha512` for the $6$ one).
        let users = passwd::parse(
            "alice:$7$101$IQh11kX33+xbzn6p$MgggMs92guxqRG9N8PH9aZrFWQw57Qik9MFwoIcyAM6QGNwSuQRoJyvF4pfkuuVyZqqoMaw8LFhRY1+c29yqTA==\n\
             bob:$6$AySTSnQn0fZIXgsH$9L6YiKRN7A7v7M1l644ADh8C9nc8ykYUKAKiHTI95yDIwCecfFigh+rAoIQ3TO4b/ZvUw/mgiK1LO9XYIoAhfg==\n",
        )
        .unwrap();
        let users: Vec<UserConfig> = users
            .into_iter()
            .map(|e| UserConfig {
                username: e.username,
                password: e.password,
            })
            .collect();
        assert_eq!(
            authenticate(&users, false, Some("alice"), Some(b"s3cret")),
            Ok(())
        );
        assert_eq!(
            authenticate(&users, false, Some("alice"), Some(b"s3creT")),
            Err(0x86)
        );
        assert_eq!(
            authenticate(&users, false, Some("bob"), Some(b"hunter2")),
            Ok(())
        );
        assert_eq!(
            authenticate(&users, false, Some("bob"), Some(b"hunter")),
            Err(0x86)
        );
        assert_eq!(
            authenticate(&users, false, Some("bob"), Some(b"s3cret")),
            Err(0x86)
        );
    }
}
