//! Authentication (user names and passwords) and authorization (ACL rules) of broker clients.
//!
//! ACL semantics: rules are checked in order and the first rule whose user matches (or that is for everyone)
//! and whose filter covers the topic decides. With no rules at all, everything is allowed; with rules and no
//! match, access is denied. A subscription filter is checked as written: `sensors/#` is covered by a rule on
//! `sensors/#` or `#`, not by a rule on `sensors/+/temp`. `%u` and `%c` in a rule's filter stand for the
//! client's user name and client id.
use crate::config::{AclAccess, AclRule, UserConfig};

use super::codec::reason;
use super::router::filter_matches;

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
                // name must not silently fall back to anonymous rights.
                return Err(reason::BAD_USER_NAME_OR_PASSWORD);
            };
            match password {
                Some(p) if constant_time_eq(p, user.password.as_bytes()) => Ok(()),
                _ => Err(reason::BAD_USER_NAME_OR_PASSWORD),
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a client wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic.
    Publish,
    /// Subscribe to a filter.
    Subscribe,
}

/// Whether `user`/`client_id` may do `action` on `topic` (a topic name, or a filter for subscribe).
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
    for rule in acl {
        if let Some(rule_user) = &rule.user {
            if Some(rule_user.as_str()) != user {
                continue;
            }
        }
        let covers_action = matches!(
            (rule.access, action),
            (AclAccess::All, _)
                | (AclAccess::Publish, Action::Publish)
                | (AclAccess::Subscribe, Action::Subscribe)
        );
        if !covers_action {
            continue;
        }
        let filter = if rule.filter.contains('%') {
            rule.filter
                .replace("%u", user.unwrap_or(""))
                .replace("%c", client_id)
        } else {
            rule.filter.clone()
        };
        if filter_matches(&filter, topic) {
            return rule.allow;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(user: Option<&str>, filter: &str, access: AclAccess, allow: bool) -> AclRule {
        AclRule {
            user: user.map(Into::into),
            filter: filter.into(),
            access,
            allow,
        }
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
            authenticate(&users, true, Some("bob"), Some(b"s3cret")),
            Err(0x86)
        );
        assert_eq!(authenticate(&users, true, Some("alice"), None), Err(0x86));
    }

    #[test]
    fn acl_first_match_decides() {
        let acl = vec![
            rule(Some("alice"), "secret/#", AclAccess::All, true),
            rule(None, "secret/#", AclAccess::All, false),
            rule(None, "clients/%c/#", AclAccess::Publish, true),
            rule(None, "public/#", AclAccess::Subscribe, true),
        ];
        assert!(authorize(
            &acl,
            Some("alice"),
            "c1",
            Action::Publish,
            "secret/x"
        ));
        assert!(!authorize(
            &acl,
            Some("bob"),
            "c1",
            Action::Publish,
            "secret/x"
        ));
        assert!(authorize(&acl, None, "c1", Action::Publish, "clients/c1/x"));
        assert!(!authorize(
            &acl,
            None,
            "c2",
            Action::Publish,
            "clients/c1/x"
        ));
        assert!(authorize(&acl, None, "c2", Action::Subscribe, "public/+/a"));
        assert!(!authorize(&acl, None, "c2", Action::Publish, "public/a"));
        assert!(!authorize(&acl, None, "c2", Action::Subscribe, "#"));
        assert!(authorize(&[], None, "c2", Action::Subscribe, "#"));
    }
}
