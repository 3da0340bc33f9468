//! A graph together with the engine that runs it, kept between calls so
//! that the JIT compiles once per set of input shapes, not once per call.

use nnc::backend::{BackendKind, Engine};
use nnc::ir::Graph;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;

/// What owns the graph an engine runs: the graph itself, or the gradient
/// graph around it.
pub trait HasGraph: 'static {
    fn graph(&self) -> &Graph;
}

impl HasGraph for Graph {
    fn graph(&self) -> &Graph {
        self
    }
}

impl HasGraph for nnc::pipeline::GradGraph {
    fn graph(&self) -> &Graph {
        &self.graph
    }
}

/// An engine and the value that owns the graph it borrows. The engine's
/// borrow is `'static` only in name: the value lives in a heap
/// allocation this runner owns, never moved, changed nor freed while the
/// engine lives (it is dropped first, in [`Drop`]).
pub struct Runner<T: HasGraph> {
    engine: ManuallyDrop<Engine<'static>>,
    owner: NonNull<T>,
}

impl<T: HasGraph> Runner<T> {
    pub fn new(owner: T, kind: BackendKind) -> Runner<T> {
        let owner = NonNull::from(Box::leak(Box::new(owner)));
        // SAFETY: `owner` points to a live heap allocation that this
        // runner alone owns; it is only read (through `owned`) and is
        // freed in `drop`, after the engine that borrows its graph.
        let graph: &'static Graph = unsafe { owner.as_ref() }.graph();
        Runner {
            engine: ManuallyDrop::new(Engine::new(kind, graph)),
            owner,
        }
    }

    /// The value that owns the graph, and the engine running it.
    pub fn parts(&mut self) -> (&T, &mut Engine<'static>) {
        // SAFETY: the allocation lives as long as `self` (see `new`), and
        // nothing mutates it.
        (unsafe { self.owner.as_ref() }, &mut self.engine)
    }
}

impl<T: HasGraph> Drop for Runner<T> {
    fn drop(&mut self) {
        // SAFETY: the engine is dropped once, here, and never used again;
        // then the allocation made by `Box::leak` in `new` is freed, no
        // borrow of it left.
        unsafe {
            ManuallyDrop::drop(&mut self.engine);
            drop(Box::from_raw(self.owner.as_ptr()));
        }
    }
}

// SAFETY: a runner owns everything it points to (its graph, and the
// engine's compiled code and buffers, which the JIT keeps as raw pointers
// into memory it allocated), and nothing of it is tied to a thread; the
// model keeps each runner behind a mutex, so one thread at a time uses it.
unsafe impl<T: HasGraph + Send> Send for Runner<T> {}
