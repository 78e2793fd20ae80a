//! Resources several devices of one protocol share: a serial bus, a Modbus TCP endpoint, a CoAP ingest socket.
//!
//! A factory owns one [`SharedPool`] per kind of resource. The core keeps one factory per running
//! application (its adapter registry), so the pool lives exactly as long as the application, and a reload (which
//! reuses the registry) hands new adapters the resources the old ones still hold. There is no process-wide
//! state: two applications in one process (tests, benchmarks) each have their own pools.
//!
//! Lifecycle: an adapter [`acquire`](SharedPool::acquire)s the resource for a key when it starts running and
//! keeps the returned [`Lease`] for as long as it runs. The first lease creates the resource (its `make`
//! closure gets a [`CancellationToken`] for any background task the resource needs); when the last lease is
//! dropped (the adapter stopped: shutdown, reload, device removed, restart after a failure) that token is
//! cancelled and the resource is forgotten, so a later adapter with other settings starts a fresh one.
//! Resources are therefore started and stopped with the adapters, never held by nobody.
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, Weak};

use tokio_util::sync::CancellationToken;

/// A resource held by at least one adapter. Derefs to the resource; dropping the last handle stops it.
pub struct Shared<R> {
    key: String,
    resource: R,
    stop: CancellationToken,
}

impl<R> Shared<R> {
    /// The key the resource is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Cancelled when the last lease is dropped: background tasks of the resource watch it.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }
}

impl<R> Deref for Shared<R> {
    type Target = R;
    fn deref(&self) -> &R {
        &self.resource
    }
}

impl<R> Drop for Shared<R> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<R: fmt::Debug> fmt::Debug for Shared<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("key", &self.key)
            .field("resource", &self.resource)
            .finish()
    }
}

/// What an adapter holds while it uses a shared resource.
pub type Lease<R> = Arc<Shared<R>>;

/// The live resources of one kind, keyed by what makes two devices share one (a port path, an address).
/// Cloning gives another handle on the same pool.
pub struct SharedPool<R> {
    live: Arc<Mutex<HashMap<String, Weak<Shared<R>>>>>,
}

impl<R> Clone for SharedPool<R> {
    fn clone(&self) -> Self {
        SharedPool {
            live: self.live.clone(),
        }
    }
}

impl<R> Default for SharedPool<R> {
    fn default() -> Self {
        SharedPool {
            live: Arc::default(),
        }
    }
}

impl<R> fmt::Debug for SharedPool<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPool")
            .field("open", &self.open())
            .finish()
    }
}

impl<R> SharedPool<R> {
    /// An empty pool.
    pub fn new() -> Self {
        SharedPool::default()
    }

    /// The resource under `key`: the live one if some adapter holds it and `reuse` accepts it (return an
    /// error to refuse, e.g. a serial port already open at another baud rate), else a new one from `make`.
    /// `make` runs under the pool's lock and must not block (bind a socket, spawn a task: fine).
    pub fn acquire<E>(
        &self,
        key: &str,
        reuse: impl FnOnce(&R) -> Result<(), E>,
        make: impl FnOnce(CancellationToken) -> Result<R, E>,
    ) -> Result<Lease<R>, E> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = live.get(key).and_then(Weak::upgrade) {
            reuse(&existing.resource)?;
            return Ok(existing);
        }
        let stop = CancellationToken::new();
        let resource = make(stop.clone())?;
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            resource,
            stop,
        });
        live.insert(key.to_owned(), Arc::downgrade(&shared));
        Ok(shared)
    }

    /// The live resource under `key`, if an adapter holds one.
    pub fn get(&self, key: &str) -> Option<Lease<R>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(key).and_then(Weak::upgrade)
    }

    /// How many resources are held by live adapters (metrics, tests).
    pub fn open(&self) -> usize {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_while_held_and_stops_with_the_last_lease() {
        let pool: SharedPool<u32> = SharedPool::new();
        let a = pool
            .acquire::<()>("k", |_| Ok(()), |_| Ok(1))
            .expect("first");
        let token = a.stop_token().clone();
        let b = pool
            .acquire::<()>("k", |_| Ok(()), |_| Ok(2))
            .expect("second");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(**b, 1);
        assert_eq!(pool.open(), 1);
        drop(a);
        assert!(!token.is_cancelled());
        drop(b);
        assert!(token.is_cancelled());
        assert_eq!(pool.open(), 0);
        let c = pool.acquire::<()>("k", |_| Ok(()), |_| Ok(3)).unwrap();
        assert_eq!(**c, 3);
    }

    #[test]
    fn reuse_can_refuse() {
        let pool: SharedPool<u32> = SharedPool::new();
        let _a = pool
            .acquire::<String>("k", |_| Ok(()), |_| Ok(9600))
            .unwrap();
        let e = pool
            .acquire("k", |r| Err(format!("open at {r}")), |_| Ok(19200))
            .unwrap_err();
        assert_eq!(e, "open at 9600");
    }

    #[test]
    fn pools_are_independent() {
        let p1: SharedPool<u8> = SharedPool::new();
        let p2: SharedPool<u8> = SharedPool::new();
        let _a = p1.acquire::<()>("k", |_| Ok(()), |_| Ok(1)).unwrap();
        assert!(p2.get("k").is_none());
        assert_eq!(p1.clone().open(), 1);
    }
}
