//! Kernels compiled while the schedule is still being built.
//!
//! The schedule tells its [`KernelSink`] of each loop kernel as it builds
//! it ([`crate::schedule::build_observed`]); [`Precompile`] queues the
//! kernel's compilation on the rayon pool at once, so the other core
//! compiles the kernels of a deep model's first layers while its later
//! layers are scheduled (the schedule builds each distinct kernel once,
//! where it first meets it). The code is compiled apart from any module
//! ([`codegen::compile_apart`]); [`codegen::define_all`] takes it, or
//! compiles a kernel itself where no job has started on it yet, so no
//! kernel is compiled twice and none waits behind a queue.

use super::{codegen, host_isa, wide};
use crate::schedule::{KernelSink, LoopKernel};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The kernels queued for compilation while a schedule is built, by
/// address (each slot holds its kernel, so no address is reused while
/// the queue lives).
#[derive(Default)]
pub struct Precompile {
    slots: Mutex<FxHashMap<usize, Arc<Slot>>>,
    /// Kernels whose code a job compiled and [`Precompile::take`] took.
    taken: AtomicUsize,
}

/// Where a queued kernel's compilation stands.
enum State {
    /// In the pool's queue.
    Queued,
    /// Being compiled by a job.
    Compiling,
    /// Compiled by a job, not yet taken.
    Done(Result<codegen::Code, String>),
    /// Taken by [`Precompile::take`], or left to it to compile.
    Taken,
}

struct Slot {
    kernel: Arc<LoopKernel>,
    state: Mutex<State>,
    done: Condvar,
}

/// Locks `m`; a poisoned lock (a compile job that panicked) still holds
/// a state that says what is left to do.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slot {
    /// The job: compiles the kernel unless [`Precompile::take`] came
    /// first.
    fn run(&self) {
        {
            let mut state = lock(&self.state);
            if !matches!(*state, State::Queued) {
                return;
            }
            *state = State::Compiling;
        }
        // A job's panic would abort the process (rayon's rule for spawned
        // work): it becomes the kernel's error instead, which the compile
        // that takes it reports (the panic's own message is printed above
        // it, as `nnc compile`'s code generator failures are).
        let compile = || host_isa().and_then(|isa| codegen::compile_apart(&*isa, &self.kernel));
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(compile))
            .unwrap_or_else(|_| Err("the code generator panicked on a kernel".to_string()));
        *lock(&self.state) = State::Done(code);
        self.done.notify_all();
    }
}

impl KernelSink for Precompile {
    /// Queues `kernel`'s compilation, unless it runs wide (no Cranelift
    /// code) or is queued already.
    fn built(&self, kernel: &Arc<LoopKernel>) {
        if wide::eligible(kernel).is_some() {
            return;
        }
        let address = Arc::as_ptr(kernel) as usize;
        let mut slots = lock(&self.slots);
        let std::collections::hash_map::Entry::Vacant(entry) = slots.entry(address) else {
            return;
        };
        let slot = Arc::new(Slot {
            kernel: Arc::clone(kernel),
            state: Mutex::new(State::Queued),
            done: Condvar::new(),
        });
        entry.insert(Arc::clone(&slot));
        drop(slots);
        rayon::spawn(move || slot.run());
    }
}

impl Precompile {
    /// The code of `kernel` if a job compiled it (waiting for a job that
    /// is compiling it); `None` where no job has started on it — the
    /// caller compiles it, and the queued job will find it taken.
    pub fn take(&self, kernel: &Arc<LoopKernel>) -> Option<Result<codegen::Code, String>> {
        let slot = lock(&self.slots)
            .get(&(Arc::as_ptr(kernel) as usize))?
            .clone();
        let mut state = lock(&slot.state);
        while matches!(*state, State::Compiling) {
            state = slot.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        match std::mem::replace(&mut *state, State::Taken) {
            State::Done(code) => {
                self.taken.fetch_add(1, Ordering::Relaxed);
                Some(code)
            }
            _ => None,
        }
    }

    /// How many kernels were queued, and how many of those a job
    /// compiled (the others were compiled when they were needed).
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.slots).len(), self.taken.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    //! The `expect`s and asserts below are the test's own checks, on a
    //! source it writes itself: none is reachable from user input.
    use super::*;

    fn slot(kernel: &Arc<LoopKernel>) -> Arc<Slot> {
        Arc::new(Slot {
            kernel: Arc::clone(kernel),
            state: Mutex::new(State::Queued),
            done: Condvar::new(),
        })
    }

    /// A queue holding `kernel`'s slot, as [`Precompile::built`] leaves
    /// it before its job starts.
    fn queue(kernel: &Arc<LoopKernel>, s: &Arc<Slot>) -> Precompile {
        let p = Precompile::default();
        lock(&p.slots).insert(Arc::as_ptr(kernel) as usize, Arc::clone(s));
        p
    }

    /// A kernel a job compiled is taken from the queue, once; one no job
    /// started on is left to the caller, and its job then does nothing.
    #[test]
    fn take_gets_a_jobs_code_or_leaves_the_kernel_to_the_caller() {
        let ks = codegen::tests::kernels("input x: [B, 5]\noutput p = abs(x) ^ x + 1\n");
        let k = &ks[0];
        let s = slot(k);
        let p = queue(k, &s);
        s.run();
        let code = p.take(k).expect("the job's code").expect("compiles");
        let isa = host_isa().expect("an ISA");
        let again = codegen::compile_apart(&*isa, k).expect("compiles");
        assert_eq!(code.bytes, again.bytes);
        assert!(p.take(k).is_none(), "taken once");
        assert_eq!(p.counts(), (1, 1));

        let s = slot(k);
        let p = queue(k, &s);
        assert!(p.take(k).is_none(), "no job started: the caller compiles");
        s.run();
        assert!(
            matches!(*lock(&s.state), State::Taken),
            "the job did nothing"
        );
        assert_eq!(p.counts(), (1, 0));
    }

    /// The queue compiles what the schedule builds, each kernel once, on
    /// the pool: every kernel is taken from it once its job is done.
    #[test]
    fn the_sink_queues_each_kernel_built() {
        let ks = codegen::tests::kernels(
            "input x: [B, 5]\noutput p = abs(x) ^ x + 1\noutput q = sum(x * x, axis = 1)\n",
        );
        let p = Precompile::default();
        for k in &ks {
            p.built(k);
            p.built(k);
        }
        let queued: Vec<_> = ks.iter().filter(|k| wide::eligible(k).is_none()).collect();
        assert!(!queued.is_empty());
        assert_eq!(p.counts().0, queued.len(), "each kernel queued once");
        for k in &queued {
            let s = lock(&p.slots)[&(Arc::as_ptr(k) as usize)].clone();
            // Waits for the job (the pool runs it); then takes its code.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while matches!(*lock(&s.state), State::Queued | State::Compiling) {
                assert!(std::time::Instant::now() < deadline, "the job never ran");
                std::thread::yield_now();
            }
            assert!(p.take(k).expect("the job's code").is_ok());
        }
        assert_eq!(p.counts(), (queued.len(), queued.len()));
    }
}
