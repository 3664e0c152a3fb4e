//! The engines of one [`LibOs`](super::LibOs): one per thread that uses it
//! (or one for all, in [`Threading::Shared`]).
//!
//! Each engine is a shard: its descriptors, tokens and lent-buffer handles
//! carry its index (see [`crate::engine::MAX_SHARDS`]), so any call finds
//! the right engine from its argument alone, without a lookup in shared
//! state. A thread gets a shard the first time it needs one (to create a
//! socket, say) and keeps it until it exits; then the shard waits, with its
//! sockets, for the next thread that needs one. Each shard has its own
//! lock: a thread that keeps to its own sockets takes only its own, which
//! no other core touches.
//!
//! A thread that uses another thread's descriptor goes through that
//! shard's lock (correct, slower) and remembers it did, so that its
//! `wait_next_n` and `arm` look at that shard too.

use crate::config::Threading;
use crate::engine::{Engine, MAX_SHARDS};
use crate::error::{fail, Result};
use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// Makes the engine of shard `i` (each with its own backend).
pub(crate) type MakeEngine = Box<dyn Fn(usize) -> Result<Engine> + Send + Sync>;

/// One engine and the threads sleeping on it. Aligned so that two shards
/// never share a cache line.
#[repr(align(128))]
pub(crate) struct Shard {
    state: Mutex<State>,
}

/// What a shard's lock guards.
pub(crate) struct State {
    pub engine: Engine,
    /// Eventfds of threads sleeping in a wait on this shard.
    pub sleepers: Vec<RawFd>,
    /// Sleeps arranged by `arm` whose `Armed` is not dropped yet.
    pub armed: usize,
}

impl State {
    /// Tells the device whether some thread still sleeps on it (in a wait,
    /// or armed), after one stopped sleeping or did not go to sleep.
    pub fn update_sleeping(&mut self) {
        let any = self.armed > 0 || !self.sleepers.is_empty();
        self.engine.set_sleeping(any);
    }
}

impl Shard {
    /// Locks the shard. A panic while holding the lock was caught at the
    /// C boundary; the engine's invariants hold between calls, so carry on.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A set of shards to wait on: one (the usual case, no allocation) or several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Set {
    One(usize),
    Many(u128),
}

impl Set {
    /// The set of the shards whose bits are in `mask` (not empty).
    pub fn from_mask(mask: u128) -> Set {
        debug_assert!(mask != 0);
        if mask.is_power_of_two() {
            Set::One(mask.trailing_zeros() as usize)
        } else {
            Set::Many(mask)
        }
    }

    /// The shards, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> + Clone {
        let mask = match self {
            Set::One(i) => 1u128 << i,
            Set::Many(m) => m,
        };
        (0..MAX_SHARDS).filter(move |i| mask & (1 << i) != 0)
    }

    /// How many shards.
    pub fn len(self) -> usize {
        match self {
            Set::One(_) => 1,
            Set::Many(m) => m.count_ones() as usize,
        }
    }
}

/// Which shards are held by live threads, and how many exist.
#[derive(Default)]
struct Owners {
    owned: u128,
    created: usize,
    /// Threads that came after every shard was taken share the existing
    /// ones in turn.
    overflow: usize,
}

/// The shards of one libOS.
pub(crate) struct Shards {
    /// Tells libOSes apart in the threads' bindings.
    id: u64,
    pub threading: Threading,
    make: MakeEngine,
    /// A fixed array: an index masked below MAX_SHARDS needs no bounds check.
    slots: Box<[OnceLock<Shard>; MAX_SHARDS]>,
    owners: Mutex<Owners>,
    /// This value's own Arc, for the threads' bindings.
    me: Weak<Shards>,
}

/// One thread's tie to one libOS.
struct Binding {
    id: u64,
    /// The thread's own shard, once it has one.
    shard: Option<usize>,
    /// The thread holds `shard` (and gives it back when it exits); false
    /// for a shard it shares because all were taken.
    owned: bool,
    /// Other shards whose descriptors this thread used.
    touched: u128,
    shards: Weak<Shards>,
}

impl Drop for Binding {
    fn drop(&mut self) {
        if let (true, Some(i), Some(shards)) = (self.owned, self.shard, self.shards.upgrade()) {
            shards.owners.lock().unwrap_or_else(|e| e.into_inner()).owned &= !(1 << i);
        }
    }
}

thread_local! {
    /// This thread's bindings, one per libOS it used.
    static BINDINGS: RefCell<Vec<Binding>> = const { RefCell::new(Vec::new()) };
    /// The last (libOS id, own shard) this thread looked up: the per-call
    /// check costs a compare, not a walk of `BINDINGS`.
    static LAST: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Shards {
    /// Shards made by `make`; shard 0 is made now (so a bad configuration
    /// fails at start) and becomes the calling thread's.
    pub fn new(threading: Threading, make: MakeEngine) -> Result<Arc<Shards>> {
        let engine = checked(make(0)?, 0)?;
        let slots: Box<[OnceLock<Shard>; MAX_SHARDS]> = Box::new(std::array::from_fn(|_| OnceLock::new()));
        let _ = slots[0].set(Shard::new(engine));
        let shards = Arc::new_cyclic(|me| Shards {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            threading,
            make,
            slots,
            owners: Mutex::new(Owners { owned: 1, created: 1, overflow: 0 }),
            me: me.clone(),
        });
        if threading == Threading::PerThread {
            shards.bind(Some(0), true);
        }
        Ok(shards)
    }

    /// How many shards exist.
    pub fn created(&self) -> usize {
        self.owners.lock().unwrap_or_else(|e| e.into_inner()).created
    }

    /// Shard `i`, if it exists.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&Shard> {
        self.slots[i & (MAX_SHARDS - 1)].get()
    }

    /// Shard `i`, which exists (every index in a [`Set`] made here does).
    #[inline]
    pub fn at(&self, i: usize) -> &Shard {
        self.get(i).expect("shard in a set exists")
    }

    /// The shard a descriptor, token or handle of shard `i` goes to: EBADF
    /// (as `missing` says) if there is no such shard. Records the use when
    /// the shard is not the calling thread's own.
    #[inline]
    pub fn route(&self, i: usize, missing: (i32, &'static str)) -> Result<&Shard> {
        let Some(shard) = self.get(i) else { return fail(missing.0, missing.1) };
        if self.threading == Threading::PerThread && LAST.get() != (self.id, i) {
            self.touch(i);
        }
        Ok(shard)
    }

    /// The calling thread's own shard (made or adopted on first use).
    #[inline]
    pub fn mine(&self) -> Result<usize> {
        if self.threading == Threading::Shared {
            return Ok(0);
        }
        match LAST.get() {
            (id, i) if id == self.id => Ok(i),
            _ => self.mine_slow(),
        }
    }

    #[cold]
    fn mine_slow(&self) -> Result<usize> {
        let own = self.with_binding(|b| b.shard);
        if let Some(i) = own {
            LAST.set((self.id, i));
            return Ok(i);
        }
        let (i, owned) = self.adopt()?;
        self.bind(Some(i), owned);
        Ok(i)
    }

    /// The shards this thread's `wait_next_n` and `arm` look at: its own
    /// and those whose descriptors it used.
    pub fn mine_and_touched(&self) -> Result<Set> {
        if self.threading == Threading::Shared {
            return Ok(Set::One(0));
        }
        let (own, touched) = self.with_binding(|b| (b.shard, b.touched));
        Ok(Set::from_mask(match own {
            Some(i) => touched | 1 << i,
            // A thread that only used others' descriptors waits on those.
            None if touched != 0 => touched,
            // A thread that has neither made nor used a socket (a thread
            // that only waits, for the others) waits on every engine.
            None => self.made(),
        }))
    }

    /// Picks a shard for a thread that has none: one a departed thread left,
    /// else a new one, else (all taken) an existing one to share.
    #[cold]
    fn adopt(&self) -> Result<(usize, bool)> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        // `created` is at least 1 (shard 0 is made at start).
        let made = u128::MAX >> (MAX_SHARDS - owners.created);
        let free = !owners.owned & made;
        if free != 0 {
            let i = free.trailing_zeros() as usize;
            owners.owned |= 1 << i;
            return Ok((i, true));
        }
        if owners.created == MAX_SHARDS {
            owners.overflow += 1;
            return Ok((owners.overflow % MAX_SHARDS, false));
        }
        // Reserve the index, then make the engine without holding the lock
        // (opening a device takes a while; exiting threads need the lock).
        let i = owners.created;
        owners.created += 1;
        owners.owned |= 1 << i;
        drop(owners);
        match (self.make)(i).and_then(|e| checked(e, i)) {
            Ok(engine) => {
                let _ = self.slots[i].set(Shard::new(engine));
                Ok((i, true))
            }
            // The index stays reserved (owned, with no engine): nothing
            // adopts it, and a number naming it finds no engine.
            Err(e) => Err(e),
        }
    }

    /// The shards that have an engine.
    fn made(&self) -> u128 {
        (0..MAX_SHARDS).filter(|&i| self.get(i).is_some()).fold(0, |m, i| m | 1 << i)
    }

    /// Records this thread's own shard.
    fn bind(&self, shard: Option<usize>, owned: bool) {
        // At thread exit the binding is gone: the call goes on without one.
        let _ = BINDINGS.try_with(|b| {
            let mut b = b.borrow_mut();
            b.retain(|x| x.shards.strong_count() > 0);
            match b.iter_mut().find(|x| x.id == self.id) {
                Some(x) => {
                    x.shard = shard;
                    x.owned = owned;
                }
                None => b.push(Binding { id: self.id, shard, owned, touched: 0, shards: self.me.clone() }),
            }
        });
        if let Some(i) = shard {
            LAST.set((self.id, i));
        }
    }

    /// Runs `f` on this thread's binding to this libOS, if it has one (none
    /// while the thread's locals are being destroyed, at its exit).
    fn with_binding<R: Default>(&self, f: impl FnOnce(&mut Binding) -> R) -> R {
        BINDINGS
            .try_with(|b| b.borrow_mut().iter_mut().find(|x| x.id == self.id).map(f).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Records that this thread used shard `i`, unless it is its own.
    #[cold]
    fn touch(&self, i: usize) {
        let bound = self.with_binding(|b| {
            if b.shard != Some(i) {
                b.touched |= 1 << i;
            }
            true
        });
        if !bound {
            // A thread that has no shard of its own needs none to use
            // another's descriptors: a binding records the use.
            self.bind(None, false);
            self.with_binding(|b| b.touched |= 1 << i);
        }
    }
}

/// `engine` if it is shard `i`'s (its numbers carry `i`), else EINVAL.
fn checked(engine: Engine, i: usize) -> Result<Engine> {
    match engine.shard() {
        s if s == i => Ok(engine),
        s => Err(crate::Error::with(
            libc::EINVAL,
            format!("the engine made for shard {i} is shard {s}'s (make it with Engine::with_shard)"),
        )),
    }
}

impl Shard {
    fn new(engine: Engine) -> Shard {
        Shard { state: Mutex::new(State { engine, sleepers: Vec::new(), armed: 0 }) }
    }
}
