//! The writer's bounded cache of the stream dictionary (`streams`: one id per distinct `(topic, device, point)`).
//!
//! Every logged row names its stream, so the writer must map a key to its id at append speed. The dictionary
//! itself lives in the database (indexed by key since schema v4); memory holds only the streams written
//! recently, in two generations: a hit in the older one moves the entry to the current one, and when the
//! current one is full the older one is dropped. Streams written at least once per generation never leave;
//! a client publishing to ever new topics costs at most `capacity` entries, not memory without end.
use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

/// A stream's key.
pub(crate) type StreamKey = (Arc<str>, Option<Arc<str>>, Option<Arc<str>>);

type Map = HashMap<StreamKey, i64, ahash::RandomState>;

pub(crate) struct StreamCache {
    current: Map,
    older: Map,
    /// Entries per generation.
    generation: usize,
    /// The next id to give a new stream.
    next_id: i64,
    /// Streams created in the open transaction: forgotten again if it rolls back.
    created: Vec<(StreamKey, i64)>,
    /// Lookups that had to ask the database (for tests and the soak benchmark).
    pub(crate) db_lookups: u64,
}

impl StreamCache {
    /// A cache of at most `capacity` entries (at least 2) for a dictionary whose next free id is `next_id`.
    pub(crate) fn new(capacity: usize, next_id: i64) -> StreamCache {
        StreamCache {
            current: Map::default(),
            older: Map::default(),
            generation: (capacity / 2).max(1),
            next_id,
            created: Vec::new(),
            db_lookups: 0,
        }
    }

    /// The id of `key`'s stream: from memory, else from the dictionary, else a new stream registered in the
    /// open transaction.
    pub(crate) fn id(&mut self, conn: &Connection, key: StreamKey) -> rusqlite::Result<i64> {
        if let Some(id) = self.current.get(&key) {
            return Ok(*id);
        }
        let id = match self.older.remove(&key) {
            Some(id) => id,
            None => {
                self.db_lookups += 1;
                let found = conn
                    .prepare_cached(
                        "SELECT id FROM streams WHERE topic = ?1 AND device IS ?2 AND point IS ?3",
                    )?
                    .query_row(params![&*key.0, key.1.as_deref(), key.2.as_deref()], |r| {
                        r.get::<_, i64>(0)
                    })
                    .optional()?;
                match found {
                    Some(id) => id,
                    None => {
                        let id = self.next_id;
                        conn.prepare_cached(
                            "INSERT INTO streams (id, topic, device, point) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![id, &*key.0, key.1.as_deref(), key.2.as_deref()])?;
                        self.next_id += 1;
                        self.created.push((key.clone(), id));
                        id
                    }
                }
            }
        };
        if self.current.len() >= self.generation {
            self.older = std::mem::take(&mut self.current);
        }
        self.current.insert(key, id);
        Ok(id)
    }

    /// The open transaction committed: its new streams are in the dictionary for good.
    pub(crate) fn committed(&mut self) {
        self.created.clear();
    }

    /// The open transaction rolled back: its new streams never existed.
    pub(crate) fn rolled_back(&mut self) {
        for (key, id) in self.created.drain(..) {
            self.current.remove(&key);
            self.older.remove(&key);
            self.next_id = self.next_id.min(id);
        }
    }

    /// Entries held in memory.
    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.older.len()
    }
}
