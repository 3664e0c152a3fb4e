//! A global allocator that counts the allocation calls (alloc,
//! alloc_zeroed, realloc) one thread makes while it has counting switched
//! on; every call is forwarded unchanged to the system allocator. A test
//! binary that includes this module (`#[path = "common/counting.rs"] mod
//! counting;`) counts with [`allocations_in`].
//!
//! `DEMI_ALLOC_TRACE=n` prints a backtrace of each of the first `n` counted
//! allocations to stderr: how to find the call site that allocated.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Backtraces still to print (from DEMI_ALLOC_TRACE).
    static TRACES: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // try_with: the allocator also runs while thread-locals are torn down.
    let _ = COUNTING.try_with(|on| {
        if !on.get() {
            return;
        }
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        let left = TRACES.with(Cell::get);
        if left > 0 {
            TRACES.with(|t| t.set(left - 1));
            // Capturing allocates: count nothing meanwhile.
            on.set(false);
            eprintln!("counted allocation:\n{}", std::backtrace::Backtrace::force_capture());
            on.set(true);
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator, so its
// guarantees are ours; the counting touches only const-initialised
// thread-locals, which never allocate (the optional backtrace switches
// counting off first, so it cannot recurse).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded as is; the caller upholds alloc's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded as is; the caller upholds alloc_zeroed's contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded as is; the caller upholds realloc's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; the caller upholds dealloc's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap allocation calls this thread makes while `f` runs.
pub fn allocations_in(f: impl FnOnce()) -> u64 {
    let traces = std::env::var("DEMI_ALLOC_TRACE").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    TRACES.with(|t| t.set(traces));
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(Cell::get) - before
}
