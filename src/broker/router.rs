//! The topic tree: subscriptions (plain and shared), matching, and retained messages.
//!
//! Matching rules (MQTT 3.1.1 §4.7, 5.0 §4.7–4.8):
//! - `+` matches one whole level, `#` the rest including the parent level (`a/#` matches `a`);
//! - topics starting with `$` are not matched by a wildcard in the first level;
//! - a session with several matching subscriptions gets the message once, at the highest granted QoS, with
//!   every matching subscription identifier (5.0 §3.3.4);
//! - a shared subscription `$share/{group}/{filter}` delivers each message to one member of the group
//!   (round robin), independently of the member's other subscriptions.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::message::Message;
use super::session::Session;
use crate::mqtt::filter_matches;
use crate::mqtt::{QoS, RetainHandling};

/// Options of one subscription, as granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOptions {
    /// Granted maximum QoS.
    pub qos: QoS,
    /// Do not deliver the session's own publishes.
    pub no_local: bool,
    /// Keep the retain flag as published on normal delivery.
    pub retain_as_published: bool,
    /// What to do with retained messages at subscribe time.
    pub retain_handling: RetainHandling,
    /// Subscription identifier (v5).
    pub id: Option<u32>,
}

/// A session a message must be delivered to, with the options merged from all its matching subscriptions.
#[derive(Debug, Clone)]
pub struct Target {
    /// The session.
    pub session: Arc<Session>,
    /// Highest granted QoS among the matching subscriptions.
    pub qos: QoS,
    /// Every matching subscription identifier.
    pub sub_ids: Vec<u32>,
    /// Retain-as-published of any matching subscription.
    pub retain_as_published: bool,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<(Arc<Session>, SubOptions)>,
    next: AtomicUsize,
}

/// A level of the tree. Kept small: a broker with thousands of clients holds one per distinct level.
#[derive(Default)]
struct Node {
    children: Children,
    subs: Vec<(Arc<Session>, SubOptions)>,
    /// Shared groups are rare: boxed so plain nodes carry 8 bytes instead of an empty map's 48.
    #[allow(clippy::box_collection)]
    shared: Option<Box<HashMap<Box<str>, SharedGroup>>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_none()
    }

    fn shared_groups(&self) -> impl Iterator<Item = &SharedGroup> {
        self.shared.iter().flat_map(|m| m.values())
    }
}

/// A node's children. Most nodes are leaves (one per distinct topic a client subscribes to): boxed, so a leaf
/// carries 8 bytes here instead of an empty map's 48.
#[derive(Default)]
#[allow(clippy::box_collection)] // the point: 8 bytes for a leaf, the map's 48 only where there are children
struct Children(Option<Box<HashMap<Box<str>, Node>>>);

impl Children {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    fn get(&self, level: &str) -> Option<&Node> {
        self.0.as_ref()?.get(level)
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node> {
        self.0.as_mut()?.get_mut(level)
    }

    fn entry_or_default(&mut self, level: &str) -> &mut Node {
        self.0
            .get_or_insert_with(Default::default)
            .entry(level.into())
            .or_default()
    }

    fn remove(&mut self, level: &str) -> Option<Node> {
        let m = self.0.as_mut()?;
        let node = m.remove(level);
        if m.is_empty() {
            self.0 = None;
        }
        node
    }

    #[cfg(test)]
    fn contains_key(&self, level: &str) -> bool {
        self.get(level).is_some()
    }

    /// Takes every child out.
    fn take_all(&mut self) -> impl Iterator<Item = Node> {
        self.0.take().into_iter().flat_map(|m| m.into_values())
    }
}

#[cfg(test)]
impl std::ops::Index<&str> for Children {
    type Output = Node;
    fn index(&self, level: &str) -> &Node {
        self.get(level).expect("child exists")
    }
}

impl Drop for Node {
    /// The derived drop recurses once per level; a deep chain is taken apart with an explicit stack instead.
    fn drop(&mut self) {
        let mut stack: Vec<Node> = self.children.take_all().collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.take_all());
        }
    }
}

/// A parsed subscription filter: the share group (if any) and the plain filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// `Some(group)` for `$share/{group}/…`.
    pub group: Option<&'a str>,
    /// The filter that is matched against topics.
    pub filter: &'a str,
}

/// Splits `$share/{group}/{filter}`; other filters come back whole.
pub fn parse_filter(filter: &str) -> ParsedFilter<'_> {
    if let Some(rest) = filter.strip_prefix("$share/") {
        if let Some((group, f)) = rest.split_once('/') {
            return ParsedFilter {
                group: Some(group),
                filter: f,
            };
        }
    }
    ParsedFilter {
        group: None,
        filter,
    }
}

/// The subscription tree and the retained store.
#[derive(Default)]
pub struct Router {
    root: Node,
    retained: HashMap<Arc<str>, Arc<Message>>,
    retained_bytes: u64,
    subscription_count: usize,
}

fn retained_size(msg: &Message) -> u64 {
    (msg.topic.len() + msg.payload.len()) as u64
}

impl Router {
    /// Adds or replaces the subscription of `session` on `filter`. Returns true when it already existed
    /// (for retain handling 1).
    pub fn subscribe(&mut self, session: &Arc<Session>, filter: &str, opts: SubOptions) -> bool {
        let parsed = parse_filter(filter);
        let mut node = &mut self.root;
        for level in parsed.filter.split('/') {
            node = node.children.entry_or_default(level);
        }
        let list = match parsed.group {
            None => &mut node.subs,
            Some(group) => {
                &mut node
                    .shared
                    .get_or_insert_default()
                    .entry(group.into())
                    .or_default()
                    .members
            }
        };
        if let Some(slot) = list.iter_mut().find(|(s, _)| s.id == session.id) {
            slot.1 = opts;
            true
        } else {
            list.push((session.clone(), opts));
            if list.len() == 1 {
                // Most filters have one subscriber: no room for four.
                list.shrink_to_fit();
            }
            self.subscription_count += 1;
            false
        }
    }

    /// Removes the subscription of `session` on `filter`. Returns whether it existed.
    ///
    /// Iterative, like every walk of the tree: a filter's depth is chosen by the client, and recursion on it
    /// would let one SUBSCRIBE/UNSUBSCRIBE overflow the stack of the whole daemon.
    pub fn unsubscribe(&mut self, session_id: u64, filter: &str) -> bool {
        let parsed = parse_filter(filter);
        let levels: Vec<&str> = parsed.filter.split('/').collect();
        // The deepest node on the path that keeps something besides the path itself: everything below it is
        // pruned when the leaf ends up empty.
        let mut keep_depth = 0;
        let mut node = &mut self.root;
        for (depth, level) in levels.iter().enumerate() {
            if depth > 0
                && (node.children.len() > 1 || !node.subs.is_empty() || node.shared.is_some())
            {
                keep_depth = depth;
            }
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        let list = match parsed.group {
            None => &mut node.subs,
            Some(g) => match node.shared.as_mut().and_then(|m| m.get_mut(g)) {
                Some(sg) => &mut sg.members,
                None => return false,
            },
        };
        let before = list.len();
        list.retain(|(s, _)| s.id != session_id);
        let removed = list.len() != before;
        if let (Some(g), Some(groups)) = (parsed.group, node.shared.as_mut()) {
            if groups.get(g).is_some_and(|sg| sg.members.is_empty()) {
                groups.remove(g);
            }
            if groups.is_empty() {
                node.shared = None;
            }
        }
        if node.is_empty() {
            let mut parent = &mut self.root;
            for level in &levels[..keep_depth] {
                parent = parent.children.get_mut(level).expect("path exists");
            }
            // Dropping the pruned chain is iterative too (see `Drop for Node`).
            parent.children.remove(levels[keep_depth]);
        }
        if removed {
            self.subscription_count -= 1;
        }
        removed
    }

    /// Number of subscriptions in the tree.
    pub fn subscription_count(&self) -> usize {
        self.subscription_count
    }

    /// Every session the message must go to, merged per session.
    pub fn route(&self, msg: &Message) -> Vec<Target> {
        let levels: Vec<&str> = msg.topic.split('/').collect();
        let dollar = msg.topic.starts_with('$');
        let mut plain: Vec<(&Arc<Session>, &SubOptions)> = Vec::new();
        let mut shared: Vec<(&Arc<Session>, &SubOptions)> = Vec::new();
        Self::collect(&self.root, &levels, dollar, &mut plain, &mut shared);

        let mut targets: Vec<Target> = Vec::with_capacity(plain.len() + shared.len());
        if plain.len() > 1 {
            plain.sort_by_key(|(s, _)| s.id);
        }
        for (session, opts) in plain {
            if opts.no_local && msg.origin == Some(session.id) {
                continue;
            }
            match targets.last_mut() {
                Some(t) if t.session.id == session.id => {
                    t.qos = t.qos.max(opts.qos);
                    t.retain_as_published |= opts.retain_as_published;
                    t.sub_ids.extend(opts.id);
                }
                _ => targets.push(Target {
                    session: session.clone(),
                    qos: opts.qos,
                    sub_ids: opts.id.into_iter().collect(),
                    retain_as_published: opts.retain_as_published,
                }),
            }
        }
        // Shared deliveries are separate from the session's plain ones (5.0 §4.8.2).
        for (session, opts) in shared {
            targets.push(Target {
                session: session.clone(),
                qos: opts.qos,
                sub_ids: opts.id.into_iter().collect(),
                retain_as_published: opts.retain_as_published,
            });
        }
        targets
    }

    /// Walks the tree along the topic's levels with an explicit stack (depth is the publisher's choice).
    fn collect<'a>(
        root: &'a Node,
        levels: &[&str],
        dollar: bool,
        plain: &mut Vec<(&'a Arc<Session>, &'a SubOptions)>,
        shared: &mut Vec<(&'a Arc<Session>, &'a SubOptions)>,
    ) {
        let mut stack: Vec<(&'a Node, usize)> = vec![(root, 0)];
        while let Some((node, idx)) = stack.pop() {
            let wild_ok = !(idx == 0 && dollar);
            if wild_ok {
                if let Some(hash) = node.children.get("#") {
                    Self::take(hash, plain, shared);
                }
            }
            if idx == levels.len() {
                Self::take(node, plain, shared);
                continue;
            }
            if wild_ok {
                if let Some(plus) = node.children.get("+") {
                    stack.push((plus, idx + 1));
                }
            }
            if let Some(child) = node.children.get(levels[idx]) {
                stack.push((child, idx + 1));
            }
        }
    }

    fn take<'a>(
        node: &'a Node,
        plain: &mut Vec<(&'a Arc<Session>, &'a SubOptions)>,
        shared: &mut Vec<(&'a Arc<Session>, &'a SubOptions)>,
    ) {
        plain.extend(node.subs.iter().map(|(s, o)| (s, o)));
        for group in node.shared_groups() {
            if group.members.is_empty() {
                continue;
            }
            // Prefer a connected member; fall back to round robin over all (offline members queue).
            let n = group.members.len();
            let start = group.next.fetch_add(1, Ordering::Relaxed);
            let pick = (0..n)
                .map(|k| &group.members[(start + k) % n])
                .find(|(s, _)| s.is_online())
                .unwrap_or(&group.members[start % n]);
            shared.push((&pick.0, &pick.1));
        }
    }

    /// Stores, replaces or (empty payload) clears the retained message of the topic. Returns false when
    /// storing it would exceed `max_count` messages or `max_bytes` (topic + payload): the old message of the
    /// topic, if any, is removed then (a new subscriber must not take a superseded value for the current one).
    pub fn retain(&mut self, msg: &Arc<Message>, max_count: usize, max_bytes: u64) -> bool {
        if msg.payload.is_empty() {
            if let Some(old) = self.retained.remove(&msg.topic) {
                self.retained_bytes -= retained_size(&old);
            }
            return true;
        }
        let old = self.retained.get(&msg.topic).map(|m| retained_size(m));
        let bytes = self.retained_bytes - old.unwrap_or(0) + retained_size(msg);
        if (old.is_none() && self.retained.len() >= max_count) || bytes > max_bytes {
            if let Some(old) = self.retained.remove(&msg.topic) {
                self.retained_bytes -= retained_size(&old);
            }
            return false;
        }
        self.retained_bytes = bytes;
        self.retained.insert(msg.topic.clone(), msg.clone());
        true
    }

    /// The retained message of a topic.
    pub fn retained_get(&self, topic: &str) -> Option<&Arc<Message>> {
        self.retained.get(topic)
    }

    /// Bytes of retained messages (topics and payloads).
    pub fn retained_bytes(&self) -> u64 {
        self.retained_bytes
    }

    /// Retained messages matching `filter` (no `$share` prefix), skipping expired ones.
    pub fn retained_matching(&self, filter: &str, now: std::time::Instant) -> Vec<Arc<Message>> {
        let exact = !filter.contains(['+', '#']);
        if exact {
            return self
                .retained
                .get(filter)
                .filter(|m| !m.expired(now))
                .cloned()
                .into_iter()
                .collect();
        }
        self.retained
            .values()
            .filter(|m| !m.expired(now) && filter_matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_rules() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/x", true),
            ("+", "/x", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
            ("a/b", "a/b/", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(filter_matches(f, t), want, "{f} vs {t}");
        }
    }

    #[test]
    fn share_prefix_parsing() {
        assert_eq!(
            parse_filter("$share/g1/a/+"),
            ParsedFilter {
                group: Some("g1"),
                filter: "a/+"
            }
        );
        assert_eq!(parse_filter("a/b").group, None);
    }

    fn opts(qos: QoS, id: Option<u32>) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
            id,
        }
    }

    #[test]
    fn overlapping_subscriptions_merge_per_session() {
        let mut r = Router::default();
        let s = Session::new_for_test(1, "c1");
        r.subscribe(&s, "a/+", opts(QoS::AtMostOnce, Some(1)));
        r.subscribe(&s, "a/#", opts(QoS::AtLeastOnce, Some(2)));
        let targets = r.route(&Message::new("a/b", "x", QoS::ExactlyOnce, false));
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].qos, QoS::AtLeastOnce);
        let mut ids = targets[0].sub_ids.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
        assert!(r.unsubscribe(1, "a/+"));
        assert!(!r.unsubscribe(1, "a/+"));
        assert_eq!(
            r.route(&Message::new("a/b", "x", QoS::AtMostOnce, false))
                .len(),
            1
        );
        assert!(r.unsubscribe(1, "a/#"));
        assert!(r
            .route(&Message::new("a/b", "x", QoS::AtMostOnce, false))
            .is_empty());
        assert!(r.root.is_empty(), "tree pruned after the last unsubscribe");
    }

    #[test]
    fn a_very_deep_filter_neither_overflows_the_stack_nor_leaks() {
        // Guards issue 8: the recursive removal aborted the daemon at ~4,500 levels. Run on a small stack so a
        // recursive walk (insert, route, remove or drop) fails at once.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let deep = vec!["a"; 200_000].join("/");
                let mut r = Router::default();
                let s = Session::new_for_test(1, "deep");
                r.subscribe(&s, &deep, opts(QoS::AtMostOnce, None));
                r.subscribe(&s, &format!("{deep}/#"), opts(QoS::AtMostOnce, None));
                r.subscribe(&s, "a/b", opts(QoS::AtMostOnce, None));
                assert_eq!(
                    r.route(&Message::new(deep.as_str(), "x", QoS::AtMostOnce, false))
                        .len(),
                    1
                );
                assert!(r.unsubscribe(1, &deep));
                assert!(r.unsubscribe(1, &format!("{deep}/#")));
                assert_eq!(r.subscription_count(), 1);
                assert!(r.unsubscribe(1, "a/b"));
                assert!(r.root.is_empty(), "the whole chain was pruned");
                // A deep tree dropped as a whole (router shutdown) must not recurse either.
                r.subscribe(&s, &deep, opts(QoS::AtMostOnce, None));
                drop(r);
            })
            .expect("spawn")
            .join()
            .expect("no stack overflow");
    }

    #[test]
    fn pruning_keeps_branches_that_are_still_used() {
        let mut r = Router::default();
        let a = Session::new_for_test(1, "a");
        let b = Session::new_for_test(2, "b");
        r.subscribe(&a, "x/y/z/w", opts(QoS::AtMostOnce, None));
        r.subscribe(&b, "x/y", opts(QoS::AtMostOnce, None));
        r.subscribe(&b, "x/q/r", opts(QoS::AtMostOnce, None));
        assert!(r.unsubscribe(1, "x/y/z/w"));
        assert!(!r.unsubscribe(1, "x/y/z/w"));
        assert_eq!(
            r.route(&Message::new("x/y", "m", QoS::AtMostOnce, false))
                .len(),
            1
        );
        assert_eq!(
            r.route(&Message::new("x/q/r", "m", QoS::AtMostOnce, false))
                .len(),
            1
        );
        let y = &r.root.children["x"].children["y"];
        assert!(y.children.is_empty(), "z/w below x/y pruned");
        assert!(r.unsubscribe(2, "x/y"));
        assert!(!r.root.children["x"].children.contains_key("y"));
        assert!(r.unsubscribe(2, "x/q/r"));
        assert!(r.root.is_empty());
    }

    #[test]
    fn shared_group_round_robin() {
        let mut r = Router::default();
        let a = Session::new_for_test(1, "a");
        let b = Session::new_for_test(2, "b");
        r.subscribe(&a, "$share/g/t/#", opts(QoS::AtLeastOnce, None));
        r.subscribe(&b, "$share/g/t/#", opts(QoS::AtLeastOnce, None));
        let mut counts = [0; 3];
        for _ in 0..10 {
            let t = r.route(&Message::new("t/1", "x", QoS::AtLeastOnce, false));
            assert_eq!(t.len(), 1);
            counts[t[0].session.id as usize] += 1;
        }
        assert_eq!(counts[1], 5);
        assert_eq!(counts[2], 5);
    }

    #[test]
    fn retained_set_replace_clear() {
        let mut r = Router::default();
        let now = std::time::Instant::now();
        let retain = |r: &mut Router, t: &str, p: &str| {
            r.retain(
                &Arc::new(Message::new(t, p.to_string(), QoS::AtMostOnce, true)),
                2,
                100,
            )
        };
        assert!(retain(&mut r, "a/b", "1"));
        assert!(retain(&mut r, "a/b", "2"));
        assert!(retain(&mut r, "a/c", "3"));
        assert_eq!(r.retained_count(), 2);
        assert_eq!(r.retained_bytes(), 8);
        assert!(!retain(&mut r, "a/d", "4"), "count cap");
        assert!(
            retain(&mut r, "a/c", "33"),
            "replacing stays within the count"
        );
        assert!(!retain(&mut r, "a/c", &"x".repeat(100)), "bytes cap");
        assert!(
            r.retained_matching("a/c", now).is_empty(),
            "a refused replacement removes the superseded message"
        );
        let m = r.retained_matching("a/b", now);
        assert_eq!(&m[0].payload[..], b"2");
        assert!(retain(&mut r, "a/c", "3"));
        assert_eq!(r.retained_matching("a/+", now).len(), 2);
        assert!(retain(&mut r, "a/b", ""));
        assert_eq!(r.retained_matching("#", now).len(), 1);
        assert_eq!(r.retained_bytes(), 4);
    }
}
