//! The store's configuration (`storage:`): the typed form the store runs with, and the raw form as written.
//! The validation that reads one into the other (`impl Cx` below: defaults, ranges, `record` filters, with
//! file:line:col for every error) is here too; `config` calls `Cx::storage` for the section.
use std::path::PathBuf;
use std::time::Duration;

use fieldbridge_sdk::config::{HumanDuration, HumanSize, Spanned};
use fieldbridge_sdk::ConfigNode;
use serde::Deserialize;

use crate::confkit::{positive, topics, Cx};

/// `storage:`
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// SQLite database file. Default `/var/lib/fieldbridge/fieldbridge.db` (the demo uses a relative path).
    pub path: PathBuf,
    /// Group-commit interval. Default 20 ms.
    pub commit_interval: Duration,
    /// Group-commit row count: commit as soon as this many rows wait. Default 10000.
    pub commit_rows: usize,
    /// SQLite `synchronous`. Default `Full`.
    pub synchronous: Synchronous,
    /// Whether local QoS 1/2 publishes that are logged are acknowledged only after commit. Default `Strict`.
    pub durability: Durability,
    /// Cap on the database's real size on disk. Default 1 GiB.
    pub max_bytes: u64,
    /// History older than this is removed once every bridge has delivered it. `None`: kept until `max_bytes`.
    pub max_age: Option<Duration>,
    /// What happens to rows not yet delivered when `max_bytes` is reached. Default `DropOldest`.
    pub when_full: WhenFull,
    /// Extra filters whose local publishes are logged even when no bridge forwards them (history only).
    /// `{gateway}` expanded at load.
    pub record: Vec<String>,
}

impl StorageConfig {
    /// A log at `path` with every other setting at its default (what a `storage:` section that names only
    /// `path` gives).
    pub fn at(path: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            path: path.into(),
            commit_interval: Duration::from_millis(20),
            commit_rows: 10_000,
            synchronous: Synchronous::Full,
            durability: Durability::Strict,
            max_bytes: 1 << 30,
            max_age: None,
            when_full: WhenFull::DropOldest,
            record: Vec::new(),
        }
    }
}

/// SQLite `synchronous` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync at every commit (power-cut safe).
    Full,
    /// fsync at checkpoints only (WAL): faster, may lose the last commits on power loss.
    Normal,
}

/// When a logged local publish is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the row is committed.
    Strict,
    /// As soon as it is queued for the writer.
    Relaxed,
}

/// The policy when the log is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Remove the oldest undelivered rows to make room.
    DropOldest,
    /// Refuse the new rows.
    DropNewest,
    /// Slow local publishers and adapters until room is made.
    Block,
}

// The section as written; the `impl Cx` block below turns it into the typed form above.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub path: Option<Spanned<String>>,
    pub commit_interval: Option<Spanned<HumanDuration>>,
    pub commit_rows: Option<Spanned<usize>>,
    pub synchronous: Option<SynchronousRaw>,
    pub durability: Option<DurabilityRaw>,
    pub max_bytes: Option<Spanned<HumanSize>>,
    pub max_age: Option<Spanned<HumanDuration>>,
    pub when_full: Option<WhenFullRaw>,
    pub record: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SynchronousRaw {
    Full,
    Normal,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DurabilityRaw {
    Strict,
    Relaxed,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WhenFullRaw {
    DropOldest,
    DropNewest,
    Block,
}

impl Cx<'_> {
    pub(crate) fn storage(&mut self, node: Option<&ConfigNode>, gw: &str) -> StorageConfig {
        let raw: RawStorage = self.read(node).unwrap_or_default();
        let path = raw.path.as_ref().map_or_else(
            || PathBuf::from("/var/lib/fieldbridge/fieldbridge.db"),
            |p| self.resolve(&p.value),
        );
        let d = StorageConfig::at(path);
        let commit_interval = match &raw.commit_interval {
            None => d.commit_interval,
            Some(s) if s.value.0.is_zero() => {
                self.at(
                    s,
                    "commit_interval must be longer than 0 (it is the group-commit window)",
                );
                d.commit_interval
            }
            Some(s) => s.value.0,
        };
        let commit_rows = positive(self, raw.commit_rows.as_ref(), d.commit_rows, "commit_rows");
        let max_bytes = match &raw.max_bytes {
            None => d.max_bytes,
            Some(s) if s.value.0 == 0 => {
                self.at(s, "max_bytes must be larger than 0");
                d.max_bytes
            }
            Some(s) => s.value.0,
        };
        let max_age = match &raw.max_age {
            Some(s) if s.value.0.is_zero() => {
                self.at(
                    s,
                    "max_age must be longer than 0 (leave it out to keep history until max_bytes)",
                );
                None
            }
            other => other.as_ref().map(|s| s.value.0),
        };
        let record = self.filters(raw.record.as_deref().unwrap_or_default(), gw);
        StorageConfig {
            commit_interval,
            commit_rows,
            synchronous: match raw.synchronous.unwrap_or(SynchronousRaw::Full) {
                SynchronousRaw::Full => Synchronous::Full,
                SynchronousRaw::Normal => Synchronous::Normal,
            },
            durability: match raw.durability.unwrap_or(DurabilityRaw::Strict) {
                DurabilityRaw::Strict => Durability::Strict,
                DurabilityRaw::Relaxed => Durability::Relaxed,
            },
            max_bytes,
            max_age,
            when_full: match raw.when_full.unwrap_or(WhenFullRaw::DropOldest) {
                WhenFullRaw::DropOldest => WhenFull::DropOldest,
                WhenFullRaw::DropNewest => WhenFull::DropNewest,
                WhenFullRaw::Block => WhenFull::Block,
            },
            record,
            ..d
        }
    }

    fn filters(&mut self, list: &[Spanned<String>], gw: &str) -> Vec<String> {
        let mut out = Vec::new();
        for f in list {
            let filter = topics::expand_gateway(&f.value, gw);
            match topics::check_filter(&filter) {
                Ok(()) => out.push(filter),
                Err(m) => self.at(f, m),
            }
        }
        out
    }
}
