//! When the JIT splits work over rayon's threads. Below these sizes work
//! runs on one thread: waking the pool's workers costs tens to hundreds
//! of microseconds. The defaults are measured; tests set them to 0 so
//! that every split path runs on small programs ([`set`]).

use std::sync::atomic::{AtomicUsize, Ordering};

/// The sizes from which work is split over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Elements of a loop kernel (a wide kernel's: an eighth of it; with
    /// the helper, a compiled one's weighed by its work, see
    /// [`jit_loop_splits`]). From
    /// 2^16: while a program runs the pool's workers stand by
    /// (`program.rs`, `stand_by`), so a split no longer waits for one to
    /// wake. The loops of a training step (`NNC_LOG=profile`, by kind, a
    /// 2-vCPU EPYC with AVX-512), split from 2^20 and from 2^16:
    /// mlp_train 0.58-0.67 and 0.37-0.40 ms (Adam's updates of the
    /// 784x256 weight), lstm_train 0.89-1.06 and 0.61-0.62, lenet_train
    /// 0.42-0.48 and 0.29-0.34, transformer_train 0.90-1.10 either way.
    /// (Before the workers stood by, that Adam update took 0.19 ms on one
    /// thread and 0.43 ms split in two.)
    pub loop_elements: usize,
    /// Multiply-adds (m·n·k) of a GEMM. The MLP's 128x784x256 product took
    /// 0.93 ms on one thread and 0.81 ms on two, and with every GEMM of
    /// the MLP step on one thread the whole step went from 2.7 to 4.1 ms
    /// (the pool's workers stay awake between the GEMMs, so the loops
    /// after them split cheaply). From 2^20: the LSTM's 32x128x128 gate
    /// products (2^19) ran faster on one thread, its step 5.9-6.2 ms with
    /// them split against 5.3-5.7 ms without, the other benchmarks the
    /// same (a 2-vCPU Xeon with AVX-512; 2^21 gave the same as 2^20).
    pub gemm_madds: usize,
    /// Multiply-adds of a convolution (split by samples).
    pub conv_madds: usize,
    /// Multiply-adds (k·n) of a one-row product (a batch-1 layer's GEMV)
    /// run outside rayon's pool, from which its columns are shared with
    /// the helper thread (`helper.rs`).
    pub gemv_madds: usize,
}

impl Thresholds {
    /// The measured defaults.
    pub const DEFAULT: Thresholds = Thresholds {
        loop_elements: 1 << 16,
        gemm_madds: 1 << 20,
        conv_madds: 1 << 17,
        gemv_madds: 1 << 16,
    };
}

static LOOP: AtomicUsize = AtomicUsize::new(Thresholds::DEFAULT.loop_elements);
static GEMM: AtomicUsize = AtomicUsize::new(Thresholds::DEFAULT.gemm_madds);
static CONV: AtomicUsize = AtomicUsize::new(Thresholds::DEFAULT.conv_madds);
static GEMV: AtomicUsize = AtomicUsize::new(Thresholds::DEFAULT.gemv_madds);

/// Sets the thresholds for every program of this process, from the next
/// step on. Results do not depend on them beyond the order of a split
/// reduction's partial sums (convolution weight gradients).
pub fn set(t: Thresholds) {
    LOOP.store(t.loop_elements, Ordering::Relaxed);
    GEMM.store(t.gemm_madds, Ordering::Relaxed);
    CONV.store(t.conv_madds, Ordering::Relaxed);
    GEMV.store(t.gemv_madds, Ordering::Relaxed);
}

pub(crate) fn loop_elements() -> usize {
    LOOP.load(Ordering::Relaxed)
}

/// Points of a wide loop kernel ([`super::wide`]) from which it splits:
/// an eighth of [`Thresholds::loop_elements`] (it is chosen for its
/// transcendentals, several times a plain loop's time per point), and a
/// sixteenth where the second part goes to the helper thread (`helper.rs`),
/// which is awake between the parts. The LSTM's gate kernels (4096
/// points) take 0.0060-0.0068 ms per step on one thread and 0.0037-0.0040
/// split with the helper: lstm_train 1.92-2.03 against 1.79-1.93 ms in
/// alternated runs (`NNC_LOG=profile`, a 2-vCPU EPYC with AVX-512).
pub(crate) fn wide_loop_points(with_helper: bool) -> usize {
    loop_elements() / if with_helper { 16 } else { 8 }
}

/// Whether a compiled loop kernel over `points` points, whose expression
/// has `entries` entries, is split: from [`Thresholds::loop_elements`]
/// points, and where the helper takes the second part (`helper.rs`, awake
/// between the parts) from half as many points times entries, a measure of
/// its work. A transformer's elementwise kernels of 8192-32768 points then
/// split. Alternated rounds of 400 steps (`nnc bench`, median ms, a
/// 2-vCPU EPYC with AVX-512; the rounds in a fast stretch), points alone
/// against points times entries:
/// transformer_train 0.625-0.651 against 0.578-0.590 (0.928-0.942 against
/// 0.884-0.905 in a slow stretch), transformer_stack_8 6.45-6.65 against
/// 5.96-6.11; lstm_train (its derivative step's kernel, 4096 points and 31
/// entries, now split), mlp_train and lenet_train within noise.
pub(crate) fn jit_loop_splits(points: usize, entries: usize, with_helper: bool) -> bool {
    let min = loop_elements();
    points >= min || (with_helper && points.saturating_mul(entries) >= min / 2)
}

pub(crate) fn gemm_madds() -> usize {
    GEMM.load(Ordering::Relaxed)
}

/// Whether one GEMM of `madds` multiply-adds is split over the threads:
/// from [`Thresholds::gemm_madds`], or from a quarter of it where it
/// would be split by rows because its right operand is fixed
/// (`by_rows`: `native::sgemm_split`), each core then computing the rows
/// whose `a` it wrote itself. mlp_infer at batch 128's last layer,
/// 128x256 @ 256x10 (2^18.3 multiply-adds), took 0.0142 ms on one thread
/// and 0.0076 ms split (`NNC_LOG=profile`), the whole run 0.235-0.253 ms
/// (median 0.2515) against 0.237-0.247 ms (median 0.243) in ten
/// alternated pairs (`nnc bench`, a 2-core Xeon with AVX-512). A batch of
/// products (an LSTM's four gates) is shared out by products instead.
pub(crate) fn gemm_splits(madds: usize, by_rows: bool) -> bool {
    let min = gemm_madds();
    madds >= min || (by_rows && madds >= min / 4)
}

pub(crate) fn conv_madds() -> usize {
    CONV.load(Ordering::Relaxed)
}

pub(crate) fn gemv_madds() -> usize {
    GEMV.load(Ordering::Relaxed)
}
