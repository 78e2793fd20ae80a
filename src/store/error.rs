//! The store's error type.
use std::path::PathBuf;

/// Everything the store can report. Open-time errors name the database file, because the operator has to act
/// on that file (move a corrupt one aside, free a lock, fix permissions).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or configured (permissions, missing directory, bad path…).
    #[error("cannot open store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A file-system operation around the database failed (creating its directory, its lock file…).
    #[error("store {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The database failed its integrity check, or is not a SQLite database at all. fieldbridge never
    /// recreates it silently: the operator moves it aside (and keeps it for inspection) and restarts.
    #[error(
        "store {path} is corrupt ({detail}); move it aside to start with an empty log \
         (fieldbridge will not overwrite it)"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The first problem SQLite reported.
        detail: String,
    },
    /// Another process (another fieldbridge) has the database open for writing.
    #[error("store {path} is in use by another process (lock file {lock} is held)")]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The lock file next to it.
        lock: PathBuf,
    },
    /// The database was written by a newer fieldbridge: refusing to touch it rather than guess.
    #[error("store {path} has schema version {found}; this fieldbridge knows versions up to {supported}")]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Version found in `meta`.
        found: u32,
        /// Highest version this build can migrate to.
        supported: u32,
    },
    /// A schema migration failed; its transaction was rolled back, the database is unchanged.
    #[error("store {path}: migration from schema v{from} to v{to} failed: {source}")]
    Migration {
        /// The database file.
        path: PathBuf,
        /// Version before the step.
        from: u32,
        /// Version the step was going to.
        to: u32,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A read or maintenance query failed.
    #[error("store query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored column has an unexpected type.
    #[error("store row has an unexpected column type: {0}")]
    Decode(#[from] rusqlite::types::FromSqlError),
    /// A stored row could not be decoded (its `props` blob is malformed).
    #[error("store row {seq}: {detail}")]
    BadRow {
        /// Sequence number of the row.
        seq: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// The log is full and the policy is `drop_newest`: the message was refused (and counted).
    #[error("store full: message refused (when_full: drop_newest)")]
    Full,
    /// The disk is full (or the database cannot be written) and no room could be made: the message was
    /// refused (and counted).
    #[error("store cannot write ({0}): message refused")]
    Unwritable(String),
    /// The message was accepted but could not be committed (the writer stopped while the disk was full or
    /// failing). Counted as `write_failed`.
    #[error("message not committed: {0}")]
    WriteFailed(String),
    /// The database is damaged (see [`crate::store::WriterState::Degraded`]): the message was refused.
    #[error("store damaged ({0}): message refused; restart fieldbridge to move the damaged file aside and salvage it")]
    Damaged(String),
    /// The store has been closed (or its writer thread stopped): nothing more can be appended.
    #[error("store closed")]
    Closed,
    /// `set_cursor` for a bridge that has no cursor (call `cursor` first; removed bridges stay removed).
    #[error("no cursor for bridge {0:?}")]
    UnknownCursor(String),
    /// A query names a device or point the log has never seen (the message suggests the closest name).
    #[error("{0}")]
    NoSuch(String),
    /// The record or query is not valid (QoS above 2, empty batch, malformed topic filter…).
    #[error("invalid {0}")]
    Invalid(String),
}
