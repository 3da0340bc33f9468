//! A second thread for the small splits of a program that runs on its
//! caller's thread.
//!
//! A program too small to enter rayon's pool (`program.rs`,
//! `execute_here_or_on_pool`: entering it wakes a sleeping worker and puts
//! the caller to sleep until the program ends, tens of microseconds each
//! under a hypervisor) still has work worth two cores: a batch-1 layer's
//! GEMV reads its whole weight, and split by columns each core reads half
//! of it, which then stays in that core's L2 from call to call. Where the
//! pool has two threads, a program with larger splits runs on its
//! caller's thread too, each split's second part here
//! ([`for_each_part`]), so that no run enters the pool. Here a split
//! costs what two atomic stores and a spin cost, because neither side
//! ever sleeps while the other works:
//!
//! - The helper thread, after a job, stays awake (spinning) for
//!   [`LINGER`]; then it parks until the next caller finds it parked and
//!   wakes it.
//! - A caller posts the helper's part, runs its own, then takes back the
//!   helper's part if the helper has not started it (the helper parked,
//!   or is slow to see it) and runs it too, else spins until the helper
//!   is done. It never waits on work nobody runs.
//! - A caller that finds the helper parked wakes it and posts the part
//!   all the same: the helper takes it once it is up (a long part), or
//!   the caller takes it back when its own is done (a short one, shorter
//!   than the wake-up). One that finds another caller using the helper
//!   does both parts itself.
//!
//! Results never depend on who ran a part: each part is a fixed piece of
//! the work, computed by the same code either way.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the helper stays awake after its last job: long enough for
/// the next call of a program run in a loop (an inference server's, a
/// benchmark's), short enough that an idle process soon stops spinning.
const LINGER: Duration = Duration::from_millis(1);

/// The job slot's states.
const EMPTY: u8 = 0;
const POSTED: u8 = 1;
const TAKEN: u8 = 2;
const DONE: u8 = 3;

/// The helper's part of a split, borrowed from the caller's stack.
type Part = *const (dyn Fn() + Sync);

struct Helper {
    /// The slot's state (`EMPTY` → `POSTED` by the caller, → `TAKEN` by
    /// the helper or back to `EMPTY` by the caller, `TAKEN` → `DONE` →
    /// `EMPTY`).
    state: AtomicU8,
    /// The posted part; read by the helper only after it moved the state
    /// from `POSTED` to `TAKEN`.
    part: UnsafeCell<Option<Part>>,
    /// Whether the last part the helper ran panicked.
    panicked: AtomicBool,
    /// Whether the helper is spinning (else parked, or about to).
    awake: AtomicBool,
    /// When the helper may park, in nanoseconds after `start`.
    until: AtomicU64,
    start: Instant,
    /// One caller at a time.
    caller: Mutex<()>,
    thread: std::thread::Thread,
}

// SAFETY: `part` is written by the one caller holding `caller`, while the
// state is `EMPTY`, and read by the helper only after it took the state
// from `POSTED`; the caller does not return (so the borrowed part lives)
// until the state has left `POSTED` and `TAKEN`.
unsafe impl Sync for Helper {}
unsafe impl Send for Helper {}

/// The process's helper, started on first use; `None` where no thread
/// could be started (then every split runs whole on its caller).
fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<&'static Helper>> = OnceLock::new();
    *HELPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<&'static Helper>();
        let spawned = std::thread::Builder::new()
            .name("nnc-helper".into())
            .spawn(move || {
                if let Ok(h) = rx.recv() {
                    serve(h)
                }
            })
            .ok()?;
        let h: &'static Helper = Box::leak(Box::new(Helper {
            state: AtomicU8::new(EMPTY),
            part: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            awake: AtomicBool::new(true),
            until: AtomicU64::new(0),
            start: Instant::now(),
            caller: Mutex::new(()),
            thread: spawned.thread().clone(),
        }));
        h.stay_awake();
        tx.send(h).ok()?;
        Some(h)
    })
}

impl Helper {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn stay_awake(&self) {
        self.until
            .store(self.now() + LINGER.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Runs the posted part if there is one; whether it did.
    fn take(&self) -> bool {
        if self
            .state
            .compare_exchange(POSTED, TAKEN, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // SAFETY: the state was `POSTED`: the caller wrote the part before
        // posting it (released by that store) and waits for `DONE`. So the
        // slot holds a part: `split`'s invariant, whatever the input.
        let part = unsafe { (*self.part.get()).expect("a posted part") };
        // A part that panics is reported to its caller (which panics in
        // turn), never left for it to wait on.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // In the float modes of the programs' threads.
            let _modes = super::subnormal::enter();
            unsafe { (*part)() }
        }));
        self.panicked.store(ran.is_err(), Ordering::Relaxed);
        self.state.store(DONE, Ordering::Release);
        self.stay_awake();
        true
    }
}

/// The helper thread's loop: spin while there is work or the linger
/// lasts, then park.
fn serve(h: &'static Helper) -> ! {
    loop {
        let mut spins = 0u32;
        while h.now() < h.until.load(Ordering::Relaxed) {
            if !h.take() {
                spin(&mut spins);
            }
        }
        h.awake.store(false, Ordering::SeqCst);
        // A part posted while this thread was deciding to park is taken
        // back by its caller; parking is safe either way. A caller that
        // saw `awake` false unparks this thread for the next call.
        std::thread::park();
        h.awake.store(true, Ordering::SeqCst);
        h.stay_awake();
    }
}

/// One turn of a wait: a spin-loop hint, and now and then (every 2^14
/// turns, some hundreds of microseconds) the core to another thread
/// that wants it. Not more often: a `sched_yield` at every 64 turns made
/// the MLP's batch-1 GEMV 0.0059 ms instead of 0.0046 (the helper saw
/// its part late), and a waiting thread that is not preempted by the
/// system has nothing to give way to.
fn spin(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(1 << 14) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Runs `mine` on this thread and `theirs` on the helper where it is
/// awake and free, else both here; returns when both have run. Use it
/// from outside rayon's pool (its workers have the pool).
pub fn split(mine: &(dyn Fn() + Sync), theirs: &(dyn Fn() + Sync)) {
    let Some(h) = helper() else {
        mine();
        theirs();
        return;
    };
    // (A caller that panicked in its own part left the lock poisoned and
    // the slot as a finished split leaves it: it is usable.)
    let _guard = match h.caller.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            mine();
            theirs();
            return;
        }
    };
    // A parked helper is woken, and the part posted all the same: a long
    // part (half of a large GEMM) is taken as soon as the helper is up, a
    // short one taken back below and run here. (Running both parts here
    // and waking the helper only for the next call left it parked again by
    // then whenever a part outlasted its linger: from one such call on,
    // every call ran on one thread, matmul_1024 at half its rate.)
    if !h.awake.load(Ordering::SeqCst) {
        h.thread.unpark();
    }
    // SAFETY: this caller holds `caller` and the state is `EMPTY` (every
    // split leaves it so), so the helper does not read the slot now.
    // The part's lifetime is erased: it is borrowed until the state
    // leaves `POSTED` and `TAKEN`, which `Posted` waits for when it is
    // dropped, also when `mine` panics.
    unsafe {
        let part: &'static (dyn Fn() + Sync) = std::mem::transmute(theirs);
        *h.part.get() = Some(part as Part);
    }
    h.state.store(POSTED, Ordering::Release);
    let posted = Posted(h);
    mine();
    if posted.retract() {
        // Not taken yet: run here.
        theirs();
    } else if posted.finish() {
        // The part (the JIT's own loop or GEMM code, never a user's)
        // panicked on the helper: that bug is reported here, on its
        // caller, as if the part had run here.
        drop(_guard);
        panic!("the helper thread's part of a split panicked");
    }
}

/// A posted part, not yet known to be done.
struct Posted<'h>(&'h Helper);

impl Posted<'_> {
    /// Takes the part back if the helper has not taken it; whether it
    /// did (the slot is then empty).
    fn retract(&self) -> bool {
        self.0
            .state
            .compare_exchange(POSTED, EMPTY, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
    }

    /// Waits for the helper to finish the part it took and empties the
    /// slot; whether the part panicked.
    fn finish(&self) -> bool {
        let mut spins = 0u32;
        while self.0.state.load(Ordering::Acquire) != DONE {
            spin(&mut spins);
        }
        self.0.state.store(EMPTY, Ordering::Release);
        self.0.panicked.load(Ordering::Relaxed)
    }
}

impl Drop for Posted<'_> {
    /// Leaves the slot empty, the part no longer borrowed: after `finish`
    /// or `retract` it is; else (this caller's part panicked) the part is
    /// taken back, or waited for.
    fn drop(&mut self) {
        if self.0.state.load(Ordering::Acquire) != EMPTY && !self.retract() {
            self.finish();
        }
    }
}

/// Whether [`for_each_part`] of `parts` parts gives one to the helper
/// (else they go to rayon's pool).
pub fn takes_a_part(parts: usize) -> bool {
    parts == 2 && rayon::current_thread_index().is_none()
}

/// Runs `f(t)` for every `t` in `0..parts`, in parallel: two parts on
/// this thread and the helper ([`split`]) from outside rayon's pool,
/// else on the pool.
pub fn for_each_part(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if takes_a_part(parts) {
        split(&|| f(0), &|| f(1));
    } else {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// [`split_taken`] once the helper is awake, so that it takes the
    /// part even on a loaded machine; whether the helper ran it.
    fn split_waiting(theirs: &(dyn Fn() + Sync)) -> bool {
        // Awake first, so that the part is taken at once.
        let h = helper().expect("a helper thread");
        let t = Instant::now();
        while !h.awake.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(1) {
            h.thread.unpark();
            std::thread::sleep(Duration::from_micros(100));
        }
        split_taken(theirs)
    }

    /// `split` with this side's part waiting (up to 20 ms) for the other
    /// to start; whether the helper ran it.
    fn split_taken(theirs: &(dyn Fn() + Sync)) -> bool {
        let (started, on_helper) = (AtomicBool::new(false), AtomicBool::new(false));
        let mine = || {
            let t = Instant::now();
            while !started.load(Ordering::Acquire) && t.elapsed() < Duration::from_millis(20) {
                std::hint::spin_loop();
            }
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            split(&mine, &|| {
                let here = std::thread::current().name() == Some("nnc-helper");
                on_helper.store(here, Ordering::Relaxed);
                started.store(true, Ordering::Release);
                theirs();
            })
        }));
        let here = on_helper.load(Ordering::Relaxed);
        if let Err(e) = result {
            assert!(here, "a part that ran here panicked");
            std::panic::resume_unwind(e);
        }
        here
    }

    /// Both parts run exactly once, whoever runs them, from many callers
    /// at once and call after call; the helper does take parts; a part
    /// that panics on the helper panics its caller, and the helper serves
    /// the next split. (One test: the helper is the process's.)
    #[test]
    fn every_part_runs_once_and_a_panic_reaches_its_caller() {
        let count = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let (a, b) = (AtomicUsize::new(0), AtomicUsize::new(0));
                        split(&|| _ = a.fetch_add(1, Ordering::Relaxed), &|| {
                            _ = b.fetch_add(1, Ordering::Relaxed)
                        });
                        assert_eq!((a.into_inner(), b.into_inner()), (1, 1));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(count.into_inner(), 8000);

        // The first tries may find the helper parked (they wake it).
        let helped = (0..100).any(|_| split_waiting(&|| {}));
        assert!(helped, "the helper took no part");
        let panicked = (0..100).any(|_| {
            std::panic::catch_unwind(|| {
                split_waiting(&|| {
                    if std::thread::current().name() == Some("nnc-helper") {
                        panic!("a part");
                    }
                })
            })
            .is_err()
        });
        assert!(panicked, "no part panicked on the helper");
        let ran = AtomicUsize::new(0);
        split(&|| _ = ran.fetch_add(1, Ordering::Relaxed), &|| {
            _ = ran.fetch_add(1, Ordering::Relaxed)
        });
        assert_eq!(ran.into_inner(), 2);

        // A split that finds the helper parked wakes it, and the helper
        // takes the part posted meanwhile (a part longer than its linger,
        // call after call, keeps it at work). Only calls that find it
        // parked tell: tests beside this one may keep it awake.
        let h = helper().expect("a helper thread");
        let (mut parked, mut taken) = (0, 0);
        for _ in 0..20 {
            std::thread::sleep(LINGER * 5);
            if h.awake.load(Ordering::SeqCst) {
                continue;
            }
            parked += 1;
            if split_taken(&|| {}) {
                taken += 1;
            }
        }
        assert!(
            parked == 0 || taken > 0,
            "a parked helper took none of {parked} parts"
        );
    }
}
