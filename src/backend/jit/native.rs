//! The JIT's precompiled routines for the operations that are not loop
//! kernels: convolution and its gradients (im2col + GEMM), pooling and its
//! gradient, slices and concatenation. They work on the program's buffers
//! in place and allocate nothing per call (their scratch is planned with
//! the program).
//!
//! The interpreter's kernels (`interp::kernels_nn`) are the reference:
//! naive loop nests over every tap. These compute the same sums in another
//! order (GEMM panels), so they agree to rounding; `tests/differential.rs`
//! and the gradient tests check that.

use crate::ir::PoolOp;
use crate::schedule::{Blocks, Conv, ConvPass, Pool};
use crate::tensor::strides;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A product `dst (m×n) = [dst +] a (m×k) @ b (k×n)` for [`sgemm`]:
/// each operand with its own (row, column) strides; `dst` is row-major
/// with row stride `dst_rs`; `accumulate` adds to what `dst` holds.
#[derive(Clone, Copy)]
pub struct Product {
    /// (m, k, n).
    pub dims: (usize, usize, usize),
    pub dst: *mut f32,
    pub dst_rs: isize,
    pub a: *const f32,
    pub a_rc: (isize, isize),
    pub b: *const f32,
    pub b_rc: (isize, isize),
    pub accumulate: bool,
}

impl Product {
    /// Rows `lo..hi` of this product: those rows of `dst` and of `a`, all
    /// of `b` (the addresses computed, not read).
    pub fn rows(self, lo: usize, hi: usize) -> Product {
        Product {
            dims: (hi - lo, self.dims.1, self.dims.2),
            dst: self.dst.wrapping_offset(lo as isize * self.dst_rs),
            a: self.a.wrapping_offset(lo as isize * self.a_rc.0),
            ..self
        }
    }
}

/// Computes `product`: a narrow one by [`sgemm_narrow`], on this thread;
/// else by the gemm crate, split as `par` says.
///
/// # Safety
/// The pointers hold matrices of the sizes and strides given, and `dst`
/// does not overlap `a` or `b`.
pub unsafe fn sgemm(product: Product, par: gemm::Parallelism) {
    let Product {
        dims: (m, k, n),
        a_rc,
        b_rc,
        accumulate,
        ..
    } = product;
    // SAFETY: the caller's promise.
    if unsafe { sgemm_narrow(product) } {
        return;
    }
    LHS_PACKING.call_once(|| {
        gemm::set_lhs_packing_threshold_single_thread(gemm::get_lhs_packing_threshold_multi_thread())
    });
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            product.dst,
            1,
            product.dst_rs,
            accumulate,
            product.a,
            a_rc.1,
            a_rc.0,
            product.b,
            b_rc.1,
            b_rc.0,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Sets, once, when the gemm crate copies a panel of its left operand before
/// its micro-kernels read it: the crate's threshold for its own split
/// products, also for the single-threaded calls of [`sgemm_split`]'s parts.
/// The crate computes a row-major product transposed, so its left operand is
/// `b`, and it copies a panel of `b` where the thread's share has more than a
/// threshold times its micro-kernel's width in rows of `dst` (with AVX-512,
/// 6: 48 rows single-threaded, 96 for a thread of its own split). A weight of a dense layer is already laid out as such
/// panels (its rows contiguous), and the copy, redone by each thread at every
/// call, cost more than the strided reads it saves: mlp_infer at batch 128,
/// each thread 64 rows, took 0.205-0.217 ms (medians 0.207, 0.208, 0.205,
/// 0.217) with the threshold of 96 rows against 0.214-0.242 (0.223, 0.221,
/// 0.214, 0.242) with 48 (4 alternated runs, `nnc bench`); mlp_train,
/// transformer_train, lstm_train and lenet_train did not change. The copy
/// does not change the order of the sums, so the results are the same bit
/// for bit. The threshold is the crate's, for the whole process: another
/// user of the crate in the same process gets it too.
static LHS_PACKING: std::sync::Once = std::sync::Once::new();

/// The most columns of a product [`sgemm_narrow`] computes: one AVX-512
/// register.
const NARROW: usize = 16;

/// [`sgemm`] where the product has at most [`NARROW`] columns (a
/// classifier's last layer, its weight's gradient), each of `b`'s rows
/// contiguous, on a CPU with AVX-512: each of eight rows of `dst` in a
/// register (its columns the lanes, the rest masked off), summing
/// `a[i][p] · b[p]` over `p` with one FMA each. The gemm crate's
/// micro-kernels are shaped for wide products: the MLP's 128×256 @ 256×10
/// layer took 0.0121 ms there (`NNC_LOG=profile`). Returns false (doing
/// nothing) where it does not apply.
///
/// # Safety
/// As [`sgemm`].
unsafe fn sgemm_narrow(p: Product) -> bool {
    #[cfg(target_arch = "x86_64")]
    if (1..=NARROW).contains(&p.dims.2)
        && p.b_rc.1 == 1
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("fma")
    {
        // SAFETY: the features are present; the rest the caller's
        // promise.
        unsafe { sgemm_narrow_avx512(p) };
        return true;
    }
    let _ = p;
    false
}

/// [`sgemm_narrow`] on AVX-512, where `b`'s rows are contiguous.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn sgemm_narrow_avx512(
    Product {
        dims: (m, k, n),
        dst,
        dst_rs,
        a,
        a_rc: (a_rs, a_cs),
        b,
        b_rc: (b_rs, _),
        accumulate,
    }: Product,
) {
    use std::arch::x86_64::*;
    /// Rows of `dst` in registers at once.
    const ROWS: usize = 8;
    let mask: __mmask16 = ((1u32 << n) - 1) as __mmask16;
    // SAFETY (every access below): rows `..m` of `a` and `dst` and rows
    // `..k` of `b` at their strides, and `n` columns of `b` and `dst`
    // (the mask) lie in the caller's matrices.
    let store = |i: usize, acc: __m512| unsafe {
        let d = dst.offset(i as isize * dst_rs);
        let v = match accumulate {
            true => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), acc),
            false => acc,
        };
        _mm512_mask_storeu_ps(d, mask, v);
    };
    let mut i = 0;
    while i + ROWS <= m {
        let mut acc = [_mm512_setzero_ps(); ROWS];
        for p in 0..k {
            let bp = unsafe { _mm512_maskz_loadu_ps(mask, b.offset(p as isize * b_rs)) };
            for (r, c) in acc.iter_mut().enumerate() {
                let x = unsafe { *a.offset((i + r) as isize * a_rs + p as isize * a_cs) };
                *c = _mm512_fmadd_ps(_mm512_set1_ps(x), bp, *c);
            }
        }
        for (r, &c) in acc.iter().enumerate() {
            store(i + r, c);
        }
        i += ROWS;
    }
    for i in i..m {
        let mut c = _mm512_setzero_ps();
        for p in 0..k {
            let bp = unsafe { _mm512_maskz_loadu_ps(mask, b.offset(p as isize * b_rs)) };
            let x = unsafe { *a.offset(i as isize * a_rs + p as isize * a_cs) };
            c = _mm512_fmadd_ps(_mm512_set1_ps(x), bp, c);
        }
        store(i, c);
    }
}

/// A one-row product `dst (1×n) = a (1×k) @ b (k×n)`: `a`'s k floats at
/// stride `a_cs`, `b`'s k rows of n contiguous floats at stride `b_rs`.
#[derive(Clone, Copy)]
pub struct Gemv {
    pub k: usize,
    pub n: usize,
    pub dst: *mut f32,
    pub a: *const f32,
    pub a_cs: isize,
    pub b: *const f32,
    pub b_rs: isize,
}
// SAFETY: the parts of a split product write disjoint columns of `dst`
// and only read `a` and `b`.
unsafe impl Send for Gemv {}
unsafe impl Sync for Gemv {}

impl Gemv {
    /// Columns `from..to` of the product.
    fn columns(self, from: usize, to: usize) -> Gemv {
        Gemv {
            n: to - from,
            dst: self.dst.wrapping_add(from),
            b: self.b.wrapping_add(from),
            ..self
        }
    }
}

/// `dst (1×n) = a (1×k) @ b (k×n)` for a `b` whose rows are contiguous
/// (column stride 1), at the CPU's full vector width (AVX-512 or AVX2
/// with FMA, chosen at run time): blocks of columns whose sums stay in
/// registers over all k rows (256 columns in 16 of AVX-512's 32
/// registers, 64 in 8 of AVX2's 16; then narrower blocks), the last
/// columns four rows of `b` at a time added into `dst` while it stays in
/// the L1 cache. A batch-1 dense layer is this product, and reading `b`
/// once is all its cost; the `gemm` crate took 17 µs for the MLP's
/// 1×784 @ 784×256, four rows at a time 10.2 µs, the blocks 8.2 µs
/// (`NNC_LOG=profile`, a 2-vCPU Xeon with AVX-512). Returns
/// false (doing nothing) where neither extension is present.
///
/// # Safety
/// `g.a` holds k floats at stride `a_cs`, `g.b` k rows of n floats at
/// stride `b_rs`, `g.dst` n floats overlapping neither.
pub unsafe fn sgemv(g: Gemv) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            // SAFETY: the features are present; the rest as promised.
            unsafe { sgemv_avx512(g) };
            return true;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            unsafe { sgemv_avx2(g) };
            return true;
        }
    }
    let _ = g;
    false
}

/// [`sgemv`] with its columns in two parts, the second run by the
/// helper thread ([`super::helper::split`]) while this one runs the
/// first, where the product has at least
/// [`gemv_madds`](super::threads::gemv_madds) multiply-adds, this
/// thread is outside rayon's pool (whose workers split their own work)
/// and the pool has more than one thread (not on one core, nor under
/// `RAYON_NUM_THREADS=1`, which MPI's workers get on a shared machine:
/// one thread, and no helper spinning beside it).
/// Each core then reads its part of `b`, which stays in its L2 cache from
/// call to call. Every column is summed by the same code either way, so
/// the result is the same bits. Returns false (doing nothing) where
/// [`sgemv`] would.
///
/// # Safety
/// As [`sgemv`].
pub unsafe fn sgemv_parts(g: Gemv) -> bool {
    let parts = g.n >= 2
        && g.k * g.n >= super::threads::gemv_madds()
        && rayon::current_thread_index().is_none()
        && rayon::current_num_threads() > 1;
    if !parts {
        // SAFETY: the caller's promise.
        return unsafe { sgemv(g) };
    }
    // The first part a whole number of the narrowest register blocks
    // where there are enough columns.
    let half = if g.n >= 32 {
        (g.n / 2).div_ceil(16) * 16
    } else {
        g.n / 2
    };
    // SAFETY: the caller's promise; half <= n.
    unsafe { sgemv_split_at(half, g) }
}

/// [`sgemv`] as columns `..half` here and `half..` on the helper thread
/// (or here, where it is not free).
///
/// # Safety
/// As [`sgemv`], and `half <= g.n`.
unsafe fn sgemv_split_at(half: usize, g: Gemv) -> bool {
    let found = AtomicBool::new(true);
    let part = |from: usize, to: usize| {
        // SAFETY: columns from..to of the caller's product, the parts'
        // outputs disjoint.
        if !unsafe { sgemv(g.columns(from, to)) } {
            found.store(false, Ordering::Relaxed);
        }
    };
    super::helper::split(&|| part(0, half), &|| part(half, g.n));
    found.into_inner()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn sgemv_avx512(g: Gemv) {
    // SAFETY: as the caller promised.
    unsafe { sgemv_body::<256, 128, 64, 16>(g) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sgemv_avx2(g: Gemv) {
    // SAFETY: as the caller promised.
    unsafe { sgemv_body::<64, 32, 16, 8>(g) }
}

/// The loops of [`sgemv`], inlined into each feature level's function so
/// that they vectorize at its width: blocks of `B1` columns, then of `B2`,
/// `B3` and `B4` (decreasing) whose sums stay in registers over all rows,
/// and the last columns four rows at a time. A block of at least eight
/// registers keeps both FMA units busy (four wait on the FMAs' latency):
/// the 128-column halves of a split GEMV ([`sgemv_parts`]) run in blocks
/// of 128.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
unsafe fn sgemv_body<const B1: usize, const B2: usize, const B3: usize, const B4: usize>(
    Gemv {
        k,
        n,
        dst,
        a,
        a_cs,
        b,
        b_rs,
    }: Gemv,
) {
    // SAFETY: as [`sgemv`]'s caller promised.
    let (y, x, row) = unsafe {
        (
            std::slice::from_raw_parts_mut(dst, n),
            |i: usize| *a.offset(i as isize * a_cs),
            |i: usize| std::slice::from_raw_parts(b.offset(i as isize * b_rs), n),
        )
    };
    // Every column sums its rows in order, one FMA each, in every loop:
    // the result does not depend on which loop computed a column.
    let mut blocked = 0;
    blocked = sgemv_block::<B1>(k, (blocked, y), x, row);
    blocked = sgemv_block::<B2>(k, (blocked, y), x, row);
    blocked = sgemv_block::<B3>(k, (blocked, y), x, row);
    blocked = sgemv_block::<B4>(k, (blocked, y), x, row);
    let y = &mut y[blocked..];
    let row = |i: usize| &row(i)[blocked..];
    y.fill(0.0);
    let mut i = 0;
    while i + 4 <= k {
        let (x0, x1, x2, x3) = (x(i), x(i + 1), x(i + 2), x(i + 3));
        let (r0, r1, r2, r3) = (row(i), row(i + 1), row(i + 2), row(i + 3));
        for j in 0..y.len() {
            let s = x0.mul_add(r0[j], y[j]);
            let s = x1.mul_add(r1[j], s);
            let s = x2.mul_add(r2[j], s);
            y[j] = x3.mul_add(r3[j], s);
        }
        i += 4;
    }
    while i < k {
        let (xi, r) = (x(i), row(i));
        for j in 0..y.len() {
            y[j] = xi.mul_add(r[j], y[j]);
        }
        i += 1;
    }
}

/// Columns `from..` of `y` in blocks of `BLOCK`, each summed in
/// registers over the `k` rows; returns the first column it left.
#[inline(always)]
fn sgemv_block<'r, const BLOCK: usize>(
    k: usize,
    (from, y): (usize, &mut [f32]),
    x: impl Fn(usize) -> f32,
    row: impl Fn(usize) -> &'r [f32],
) -> usize {
    let to = from + (y.len() - from) / BLOCK * BLOCK;
    for (j0, out) in (from..to)
        .step_by(BLOCK)
        .zip(y[from..to].chunks_exact_mut(BLOCK))
    {
        let mut acc = [0.0f32; BLOCK];
        for i in 0..k {
            let (xi, r) = (x(i), &row(i)[j0..j0 + BLOCK]);
            for (s, &w) in acc.iter_mut().zip(r) {
                *s = xi.mul_add(w, *s);
            }
        }
        out.copy_from_slice(&acc);
    }
    to
}

/// A product's output and operands, shared by the threads that split
/// it: each writes its own block of the output, and the operands are
/// only read.
#[derive(Clone, Copy)]
pub(crate) struct GemmPtrs(pub *mut f32, pub *const f32, pub *const f32);
// SAFETY: as stated above: disjoint writes, shared reads.
unsafe impl Send for GemmPtrs {}
unsafe impl Sync for GemmPtrs {}
impl GemmPtrs {
    /// Used whole, so that a closure captures the `GemmPtrs`, not its
    /// fields.
    pub(crate) fn get(self) -> (*mut f32, *const f32, *const f32) {
        (self.0, self.1, self.2)
    }
}

/// The rows of `dst` a [`sgemm_split`] has finished: `rows_done(lo, hi,
/// Some(t))` from thread `t` of a split by rows, right after it computed
/// rows `lo..hi` (while they are in its cache), or `rows_done(0, m, None)`
/// once, on the caller's thread, after the whole product.
pub type RowsDone<'a> = &'a (dyn Fn(usize, usize, Option<usize>) + Sync);

/// [`sgemm`] over `threads` threads, each computing one block of `dst`
/// on its own: blocks of rows where `dst` has at least as many rows as
/// columns (each thread packs only its rows of `a`, and `b` is the
/// smaller operand to pack twice; `rows_parts` says whether the caller
/// can take [`RowsDone`] calls for parts), column blocks where it is
/// wide enough (each packs only its part of `b`), else the `gemm`
/// crate's own split; on one thread, plainly. The 512×64 @ 64×256
/// product of a transformer's feed-forward layer took 0.096 ms split by
/// columns and 0.057 by rows on two threads (`NNC_LOG=profile`).
///
/// Where `b_fixed` (no step writes `b` while the program runs: a weight
/// the program does not update, a loop's invariant operand), rows are split
/// whenever each thread gets [`ROWS`] of them, however wide `dst` is:
/// each thread then reads only its own rows of `a` and writes only its
/// own rows of `dst`, which the elementwise kernels before and after,
/// split by rows too, wrote and read on the same core, and the whole of
/// `b` it reads stays in its cache from call to call. Split by columns,
/// each thread reads the rows of `a` the other core just wrote, from that
/// core's cache. The LSTM's derivative product, 32×512 @ 512×128 per
/// step, took 0.0265 ms by columns and 0.0148 ms by rows; mlp_infer at
/// batch 128, 0.253-0.274 ms against 0.233-0.241 (a 2-core Xeon with
/// AVX-512, `NNC_LOG=profile` and `nnc bench`).
///
/// # Safety
/// As [`sgemm`]; `rows_done` may write rows it is given.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_split(
    (m, k, n): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: isize,
    a: *const f32,
    a_rc: (isize, isize),
    b: *const f32,
    b_rc: (isize, isize),
    accumulate: bool,
    threads: usize,
    (rows_parts, rows_done): (bool, Option<RowsDone>),
    b_fixed: bool,
) {
    /// Columns per block: a multiple of the widest micro-kernel.
    const COLS: usize = 64;
    let p = GemmPtrs(dst, a, b);
    let whole = Product {
        dims: (m, k, n),
        dst,
        dst_rs,
        a,
        a_rc,
        b,
        b_rc,
        accumulate,
    };
    // Block `t`'s first row or column of `len`, in units of `unit`.
    let cut = |t: usize, len: usize, unit: usize| {
        if t == threads {
            len
        } else {
            len / unit * t / threads * unit
        }
    };
    // The gemm crate's own split is rayon's: from a pool worker only (a
    // caller outside the pool splits with the helper thread, below).
    let par = if threads > 1 && rayon::current_thread_index().is_some() {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    if threads > 1
        && m.min(n) > 0
        && k >= SPLIT_K * m.max(n)
        && m * n * (threads - 1) <= PARTIALS_MAX
    {
        sgemm_split_k((m, k, n), p, dst_rs, a_rc, b_rc, accumulate, threads);
        if let Some(done) = rows_done {
            done(0, m, None);
        }
        return;
    }
    if threads > 1
        && (m >= n || b_fixed)
        && m >= ROWS * threads
        && (rows_parts || rows_done.is_none())
    {
        super::helper::for_each_part(threads, &|t| {
            let (dst, a, b) = p.get();
            let (lo, hi) = (cut(t, m, ROWS), cut(t + 1, m, ROWS));
            let product = Product {
                dims: (m, k, n),
                dst,
                dst_rs,
                a,
                a_rc,
                b,
                b_rc,
                accumulate,
            };
            // SAFETY: rows lo..hi of dst and a, as the caller promised
            // for all of them.
            unsafe { sgemm(product.rows(lo, hi), gemm::Parallelism::None) }
            if let Some(done) = rows_done {
                done(lo, hi, Some(t));
            }
        });
        return;
    }
    if threads > 1 && n >= COLS * threads {
        super::helper::for_each_part(threads, &|t| {
            let (dst, a, b) = p.get();
            let (lo, hi) = (cut(t, n, COLS), cut(t + 1, n, COLS));
            // SAFETY: columns lo..hi of dst and b, as the caller promised
            // for all of them.
            unsafe {
                sgemm(
                    Product {
                        dims: (m, k, hi - lo),
                        dst: dst.add(lo),
                        dst_rs,
                        a,
                        a_rc,
                        b: b.offset(lo as isize * b_rc.1),
                        b_rc,
                        accumulate,
                    },
                    gemm::Parallelism::None,
                )
            }
        });
    } else {
        // SAFETY: as the caller promised.
        unsafe { sgemm(whole, par) }
    }
    if let Some(done) = rows_done {
        done(0, m, None);
    }
}

/// Rows per block of a split by rows: a multiple of the gemm crate's
/// micro-kernels' rows.
pub(crate) const ROWS: usize = 16;

/// How many times its longer side a product's `k` must be for
/// [`sgemm_split`] to split it along `k` ([`sgemm_split_k`]).
const SPLIT_K: usize = 8;

/// The most floats of partial products [`sgemm_split_k`] keeps.
const PARTIALS_MAX: usize = 1 << 20;

thread_local! {
    /// [`sgemm_split_k`]'s partial products, kept from call to call by
    /// the thread that splits (grown to the largest product it split).
    /// A call takes the vector out while it runs: a rayon worker waiting
    /// for its parts may run another split meanwhile, which then finds
    /// none and makes its own.
    static PARTIALS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`sgemm`] split along `k` over `threads` threads: thread `t` computes
/// the product of columns `k·t/threads..` of `a` and those rows of `b`,
/// the first into `dst` (added to it when `accumulate`), the others into
/// partial products, which are then added into `dst` here. A product
/// whose `k` is long beside `m` and `n` (a weight's gradient, summed over
/// a batch's rows: the LSTM's 128×1024 @ 1024×128) is split so: each
/// thread packs its part of both operands, where a split by rows or by
/// columns has every thread pack the whole of one of them. The sums are
/// the same terms in another order, so the result may differ from an
/// unsplit product's in the last bits; it is the same from run to run.
///
/// # Safety
/// As [`sgemm`] for the product `p` holds.
unsafe fn sgemm_split_k(
    (m, k, n): (usize, usize, usize),
    p: GemmPtrs,
    dst_rs: isize,
    a_rc: (isize, isize),
    b_rc: (isize, isize),
    accumulate: bool,
    threads: usize,
) {
    let mut partials = PARTIALS.take();
    if partials.len() < m * n * (threads - 1) {
        partials.resize(m * n * (threads - 1), 0.0);
    }
    let at = GemmPtrs(partials.as_mut_ptr(), std::ptr::null(), std::ptr::null());
    super::helper::for_each_part(threads, &|t| {
        let (dst, a, b) = p.get();
        let (lo, hi) = (k * t / threads, k * (t + 1) / threads);
        let (out, out_rs, acc) = match t {
            0 => (dst, dst_rs, accumulate),
            // SAFETY: partial product t − 1 lies in `partials`, sized
            // above for all of them.
            _ => (
                unsafe { at.get().0.add((t - 1) * m * n) },
                n as isize,
                false,
            ),
        };
        // SAFETY: columns lo..hi of a and rows lo..hi of b, as the caller
        // promised for all of them; each thread writes its own output
        // (dst, or its partial product).
        unsafe {
            sgemm(
                Product {
                    dims: (m, hi - lo, n),
                    dst: out,
                    dst_rs: out_rs,
                    a: a.offset(lo as isize * a_rc.1),
                    a_rc,
                    b: b.offset(lo as isize * b_rc.0),
                    b_rc,
                    accumulate: acc,
                },
                gemm::Parallelism::None,
            )
        }
    });
    for part in partials[..m * n * (threads - 1)].chunks_exact(m * n) {
        for (i, row) in part.chunks_exact(n).enumerate() {
            // SAFETY: row i of dst, n floats at stride dst_rs, which no
            // other thread touches now.
            let out = unsafe { std::slice::from_raw_parts_mut(p.0.offset(i as isize * dst_rs), n) };
            for (o, &x) in out.iter_mut().zip(row) {
                *o += x;
            }
        }
    }
    PARTIALS.set(partials);
}

/// Copies `len` floats from `src` to `dst` (which do not overlap), 8 at a
/// time, then one by one, without a call to `memmove`.
///
/// # Safety
/// `src` is readable and `dst` writable for `len` floats.
#[inline(always)]
unsafe fn copy_run(dst: *mut f32, src: *const f32, len: usize) {
    let mut i = 0;
    while i + 8 <= len {
        // SAFETY: floats i..i + 8, inside both (the caller's promise).
        unsafe {
            let v = std::ptr::read_unaligned(src.add(i) as *const [f32; 8]);
            std::ptr::write_unaligned(dst.add(i) as *mut [f32; 8], v);
        }
        i += 8;
    }
    while i < len {
        // SAFETY: as above.
        unsafe { *dst.add(i) = *src.add(i) };
        i += 1;
    }
}

/// Adds `len` floats from `src` into `dst` (which do not overlap).
///
/// # Safety
/// `src` is readable and `dst` writable for `len` floats.
#[inline(always)]
unsafe fn add_run(dst: *mut f32, src: *const f32, len: usize) {
    for i in 0..len {
        // SAFETY: float i, inside both (the caller's promise).
        unsafe { *dst.add(i) += *src.add(i) };
    }
}

impl Conv {
    /// The input row that output row `i` reads at kernel row `a`, if it
    /// is not padding (likewise for columns).
    fn src(&self, i: usize, a: usize, len: usize) -> Option<usize> {
        (i * self.stride + a)
            .checked_sub(self.pad)
            .filter(|&v| v < len)
    }

    /// Unfolds one sample `x` (`[c, h, w]`) into columns `at..at + p` of
    /// `cols`, a `[k, width]` matrix (the unfoldings of several samples
    /// side by side): `cols[(c, a, b), at + (i, j)] = x[c, i·s + a − pad,
    /// j·s + b − pad]`, zero in the padding.
    fn im2col_at(&self, x: &[f32], cols: &mut [f32], width: usize, at: usize) {
        let ow = self.ow;
        if self.stride == 1 && self.pad == 0 {
            // Copied inline: a call to `memmove` per run of LeNet's 24 or
            // 8 floats cost more than the copy, and so did slicing (two
            // bounds checks a run).
            let (src, dst) = (x.as_ptr(), cols.as_mut_ptr());
            self.runs((x.len(), cols.len()), width, at, |xo, co| {
                // SAFETY: `runs` checked that the run lies inside both.
                unsafe { copy_run(dst.add(co), src.add(xo), ow) }
            });
            return;
        }
        let p = self.p();
        for c in 0..self.c {
            for a in 0..self.kh {
                for b in 0..self.kw {
                    let r = (c * self.kh + a) * self.kw + b;
                    let row = &mut cols[r * width + at..][..p];
                    for (i, dst) in row.chunks_exact_mut(ow).enumerate() {
                        let Some(h) = self.src(i, a, self.h) else {
                            dst.fill(0.0);
                            continue;
                        };
                        let line = &x[(c * self.h + h) * self.w..][..self.w];
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = self.src(j, b, self.w).map_or(0.0, |v| line[v]);
                        }
                    }
                }
            }
        }
    }

    /// For a stride-1 convolution without padding, calls `f(x_at,
    /// cols_at)` with the offsets of each run of `ow` floats of one
    /// sample's unfolding: in the sample (`x_len` floats) and in columns
    /// `at..` of a `[k, width]` matrix (`cols_len` floats). Row (c, a, b)
    /// of the unfolding is `oh` runs, `x[c][i + a][b..b + ow]` for each
    /// `i`. It first checks that every run lies inside both, so that `f`
    /// may copy through pointers (the schedule's geometry and the callers'
    /// slicing make the checks hold; a failure is a compiler bug, stopped
    /// before any access).
    fn runs(
        &self,
        (x_len, cols_len): (usize, usize),
        width: usize,
        at: usize,
        mut f: impl FnMut(usize, usize),
    ) {
        let (k, p, (h, w), ow) = (self.k(), self.p(), (self.h, self.w), self.ow);
        assert!(x_len >= self.c * h * w, "a sample of the input");
        assert!(
            k == 0 || cols_len >= (k - 1) * width + at + p,
            "room for the unfolding"
        );
        assert!(
            ow + self.kw - 1 <= w && self.oh + self.kh - 1 <= h,
            "windows inside the input"
        );
        assert!(
            self.stride == 1 && self.pad == 0,
            "runs without stride or padding"
        );
        let mut row = at;
        for c in 0..self.c {
            for a in 0..self.kh {
                for b in 0..self.kw {
                    let from = (c * h + a) * w + b;
                    for i in 0..self.oh {
                        f(from + i * w, row + i * ow);
                    }
                    row += width;
                }
            }
        }
    }

    /// The adjoint of [`Conv::im2col_at`]: `x` (one sample) is set to the sum
    /// of the columns that read each of its elements, its columns being
    /// `at..at + p` of `cols`, a `[k, width]` matrix.
    fn col2im_at(&self, cols: &[f32], width: usize, at: usize, x: &mut [f32]) {
        x.fill(0.0);
        let (p, ow) = (self.p(), self.ow);
        if self.stride == 1 && self.pad == 0 {
            let (src, dst) = (cols.as_ptr(), x.as_mut_ptr());
            self.runs((x.len(), cols.len()), width, at, |xo, co| {
                // SAFETY: `runs` checked that the run lies inside both.
                unsafe { add_run(dst.add(xo), src.add(co), ow) }
            });
            return;
        }
        for c in 0..self.c {
            for a in 0..self.kh {
                for b in 0..self.kw {
                    let r = (c * self.kh + a) * self.kw + b;
                    let row = &cols[r * width + at..][..p];
                    for (i, src) in row.chunks_exact(ow).enumerate() {
                        let Some(h) = self.src(i, a, self.h) else {
                            continue;
                        };
                        let line = &mut x[(c * self.h + h) * self.w..][..self.w];
                        for (j, s) in src.iter().enumerate() {
                            if let Some(v) = self.src(j, b, self.w) {
                                line[v] += s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// How many threads to use and how many samples each takes.
    fn split(&self, threads: usize) -> (usize, usize) {
        // Saturating: the output (n·o·p) and the unfolded input (k·p)
        // are checked sizes, their product need not fit.
        let work = (self.n * self.o * self.p()).saturating_mul(self.k());
        let t = if work >= super::threads::conv_madds() {
            threads.clamp(1, self.n.max(1))
        } else {
            1
        };
        (t, self.n.div_ceil(t).max(1))
    }

    /// Runs `pass` on operands `a`, `b` into `out`, with `scratch` holding
    /// `threads ×` [`Conv::scratch_per_thread`] floats.
    pub fn run(
        &self,
        pass: ConvPass,
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
        threads: usize,
    ) {
        if self.n * self.o * self.k() * self.p() == 0 {
            // Nothing to sum: every output is zero (or there is none).
            out.fill(0.0);
            return;
        }
        let (t, per) = self.split(threads.max(1));
        let (k, p, o) = (self.k(), self.p(), self.o);
        let xlen = self.c * self.h * self.w;
        let ylen = o * p;
        let each = self.scratch_per_thread(pass);
        let one = gemm::Parallelism::None;
        match pass {
            ConvPass::Forward => {
                // For a group of samples at once ([`Conv::group`]): their
                // unfoldings side by side, cols (k × width), one product
                // w (o×k) @ cols into prod (o × width), then each
                // sample's y[n] (o×p) copied out of its columns. LeNet's
                // first layer, 6×25 @ 25×576 per sample, is a product too
                // thin for the GEMM's micro-kernels one sample at a time.
                let (x, w) = (a, b);
                let group = self.group();
                per_group(
                    out,
                    ylen,
                    scratch,
                    each,
                    (t, per, group),
                    |first, ys, sc| {
                        let (cols, prod) = sc.split_at_mut(k * group * p);
                        let count = ys.len() / ylen;
                        let width = count * p;
                        for s in 0..count {
                            let xs = &x[(first + s) * xlen..][..xlen];
                            self.im2col_at(xs, cols, width, s * p);
                        }
                        // SAFETY: cols holds k rows of `width`, prod o
                        // rows of `width` (the scratch is sized for a
                        // whole group), w is o×k.
                        unsafe {
                            sgemm(
                                Product {
                                    dims: (o, k, width),
                                    dst: prod.as_mut_ptr(),
                                    dst_rs: width as isize,
                                    a: w.as_ptr(),
                                    a_rc: (k as isize, 1),
                                    b: cols.as_ptr(),
                                    b_rc: (width as isize, 1),
                                    accumulate: false,
                                },
                                one,
                            )
                        }
                        for (s, y) in ys.chunks_exact_mut(ylen).enumerate() {
                            for (oo, row) in y.chunks_exact_mut(p).enumerate() {
                                row.copy_from_slice(&prod[oo * width + s * p..][..p]);
                            }
                        }
                    },
                );
            }
            ConvPass::BackInput => {
                // cols (k × width) = wᵀ (k×o) @ gys (o × width) for a group
                // of samples at once ([`Conv::group`]), their gy side by
                // side in gys; each sample's columns then folded back
                // into its gx[n].
                let (gy, w) = (a, b);
                let group = self.group();
                per_group(
                    out,
                    xlen,
                    scratch,
                    each,
                    (t, per, group),
                    |first, gxs, sc| {
                        let (cols, gys) = sc.split_at_mut(k * group * p);
                        let count = gxs.len() / xlen;
                        let width = count * p;
                        for s in 0..count {
                            let g = &gy[(first + s) * ylen..][..ylen];
                            side_by_side(g, p, gys, width, s * p);
                        }
                        // SAFETY: gys holds o rows of `width`, cols k
                        // rows of `width`, w is o×k (read transposed).
                        unsafe {
                            sgemm(
                                Product {
                                    dims: (k, o, width),
                                    dst: cols.as_mut_ptr(),
                                    dst_rs: width as isize,
                                    a: w.as_ptr(),
                                    a_rc: (1, k as isize),
                                    b: gys.as_ptr(),
                                    b_rc: (width as isize, 1),
                                    accumulate: false,
                                },
                                one,
                            )
                        }
                        for (s, gx) in gxs.chunks_exact_mut(xlen).enumerate() {
                            self.col2im_at(cols, width, s * p, gx);
                        }
                    },
                );
            }
            ConvPass::BackWeight => {
                // gw (o×k) = Σ_n gy[n] (o×p) @ cols[n]ᵀ (p×k), for a group
                // of samples at once ([`Conv::group`]): their gy side by
                // side in gys (o × width) and their unfoldings in cols
                // (k × width), one product gys @ colsᵀ summed into this
                // thread's partial sum acc; the threads' sums added up at
                // the end.
                let (x, gy) = (a, b);
                let wlen = o * k;
                let group = self.group();
                let acc_at = group * p * (k + o);
                scratch
                    .par_chunks_mut(each)
                    .take(t)
                    .enumerate()
                    .for_each(|(ti, sc)| {
                        let (cols, rest) = sc.split_at_mut(k * group * p);
                        let (gys, acc) = rest.split_at_mut(o * group * p);
                        let samples = ti * per..((ti + 1) * per).min(self.n);
                        for (gi, first) in samples.clone().step_by(group).enumerate() {
                            let count = group.min(samples.end - first);
                            let width = count * p;
                            for s in 0..count {
                                let xs = &x[(first + s) * xlen..][..xlen];
                                self.im2col_at(xs, cols, width, s * p);
                                let g = &gy[(first + s) * ylen..][..ylen];
                                side_by_side(g, p, gys, width, s * p);
                            }
                            // SAFETY: gys holds o rows of `width`, cols k
                            // rows of `width` (read transposed), acc o×k.
                            unsafe {
                                sgemm(
                                    Product {
                                        dims: (o, width, k),
                                        dst: acc.as_mut_ptr(),
                                        dst_rs: k as isize,
                                        a: gys.as_ptr(),
                                        a_rc: (width as isize, 1),
                                        b: cols.as_ptr(),
                                        b_rc: (1, width as isize),
                                        accumulate: gi > 0,
                                    },
                                    one,
                                )
                            }
                        }
                        if samples.is_empty() {
                            acc[..wlen].fill(0.0);
                        }
                    });
                out.copy_from_slice(&scratch[acc_at..][..wlen]);
                for g in 1..t {
                    let part = &scratch[g * each + acc_at..][..wlen];
                    out.iter_mut().zip(part).for_each(|(o, v)| *o += v);
                }
            }
        }
    }
}

/// Calls `f(first sample, their outputs, scratch)` for every group of
/// up to `group` consecutive samples, whose outputs are consecutive
/// `len`-float blocks of `out`: `t` runs of `per` samples, one run per
/// thread, each with its own `each`-float scratch.
fn per_group(
    out: &mut [f32],
    len: usize,
    scratch: &mut [f32],
    each: usize,
    (t, per, group): (usize, usize, usize),
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    out.par_chunks_mut(per * len)
        .zip(scratch.par_chunks_mut(each).take(t))
        .enumerate()
        .for_each(|(ti, (outs, sc))| {
            for (gi, o) in outs.chunks_mut(group * len).enumerate() {
                f(ti * per + gi * group, o, sc);
            }
        });
}

/// Lays the rows of `src` (each `p` floats) into columns `at..at + p` of
/// `dst`, a matrix of `width`-float rows: one sample's rows beside the
/// others' of its group.
fn side_by_side(src: &[f32], p: usize, dst: &mut [f32], width: usize, at: usize) {
    for (r, row) in src.chunks_exact(p).enumerate() {
        dst[r * width + at..][..p].copy_from_slice(row);
    }
}

impl Pool {
    /// Whether `v` replaces `m` as a window's maximum: the first maximal
    /// element wins, and a NaN counts as the maximum (the interpreter's
    /// rule, as `reduce.max`).
    #[inline(always)]
    fn beats(v: f32, m: f32) -> bool {
        // Without short-circuits: a select, not a branch that the data
        // decides (a random window's maximum is a coin toss per element).
        !m.is_nan() & ((v > m) | v.is_nan())
    }

    /// Planes per parallel chunk: at least 16K input floats each. With
    /// 64K, LeNet's second pooling (1024 planes of 8×8) was one chunk, on
    /// one thread, and its first (384 of 24×24) four uneven ones: the
    /// step's poolings took 0.371-0.397 ms, against 0.267-0.273 ms in
    /// chunks of 16K, lenet_train 1.97-2.04 against 1.69-1.79 ms
    /// (alternated `nnc bench` runs, a 2-core Xeon with AVX-512).
    fn chunk(&self) -> usize {
        ((1 << 14) / (self.h * self.w).max(1)).max(1)
    }

    /// Calls `f(plane of x, plane of y)` for every plane, split over the
    /// pool's threads when large.
    fn each_plane(&self, x: &[f32], y: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync) {
        let (xl, yl) = (self.h * self.w, self.oh * self.ow);
        let c = self.chunk();
        y[..self.planes * yl]
            .par_chunks_mut(c * yl)
            .zip(x[..self.planes * xl].par_chunks(c * xl))
            .for_each(|(ys, xs)| {
                for (yp, xp) in ys.chunks_exact_mut(yl).zip(xs.chunks_exact(xl)) {
                    f(xp, yp);
                }
            });
    }

    /// `y = pool(x)`.
    pub fn forward(&self, x: &[f32], y: &mut [f32]) {
        if x.is_empty() || y.is_empty() {
            y.fill(0.0);
            return;
        }
        let (k, s, w, ow) = (self.size, self.stride, self.w, self.ow);
        let area = (k * k) as f32;
        let op = self.op;
        self.each_plane(x, y, |xp, yp| {
            for (i, yrow) in yp.chunks_exact_mut(ow).enumerate() {
                let top = &xp[i * s * w..];
                if op == PoolOp::Max && k == 2 && s == 2 {
                    // The common 2×2 window: its four taps in row-major
                    // order, as pairs of neighbours in two input rows.
                    let (r0, r1) = (&top[..2 * ow], &top[w..][..2 * ow]);
                    let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
                    for (out, (p, q)) in yrow.iter_mut().zip(pairs) {
                        let mut m = p[0];
                        for v in [p[1], q[0], q[1]] {
                            m = if Self::beats(v, m) { v } else { m };
                        }
                        *out = m;
                    }
                    continue;
                }
                if op == PoolOp::Max {
                    // A row of windows at once, one tap of each at a
                    // time, in the taps' row-major order (the first
                    // maximal element still wins).
                    for (out, &v) in yrow.iter_mut().zip(top.iter().step_by(s)) {
                        *out = v;
                    }
                    for a in 0..k {
                        for b in 0..k {
                            let taps = top[a * w + b..].iter().step_by(s);
                            for (out, &v) in yrow.iter_mut().zip(taps) {
                                *out = if Self::beats(v, *out) { v } else { *out };
                            }
                        }
                    }
                    continue;
                }
                // Average pooling.
                for (j, out) in yrow.iter_mut().enumerate() {
                    let win = &top[j * s..];
                    let mut acc = 0.0f32;
                    for a in 0..k {
                        for v in &win[a * w..][..k] {
                            acc += v;
                        }
                    }
                    *out = acc / area;
                }
            }
        });
    }

    /// The gradient of 2×2 max pooling with stride 2 (windows that do
    /// not overlap) for whole planes: each tap gets 0 + g when it is its
    /// window's first maximal element (the bits of adding into the zeroed
    /// gradient), else 0. The four taps of every window are first laid
    /// side by side, so that the choice is lane-wise arithmetic over the
    /// plane's windows (it vectorizes), then written back.
    fn max_2x2_backward(&self, gxs: &mut [f32], xs: &[f32], gys: &[f32]) {
        let (w, oh, ow) = (self.w, self.oh, self.ow);
        let (xl, yl) = (self.h * w, oh * ow);
        // Windows per block: the taps live on the stack (a step allocates
        // nothing).
        const BLOCK: usize = 64;
        let mut taps = [[0f32; BLOCK]; 4];
        let planes = gxs.chunks_exact_mut(xl).zip(xs.chunks_exact(xl));
        // The top-left tap of every window of a plane, in order (no
        // division per window).
        let corners = || (0..oh).flat_map(move |i| (0..ow).map(move |j| 2 * i * w + 2 * j));
        for ((gxp, xp), gyp) in planes.zip(gys.chunks_exact(yl)) {
            let mut at_corners = corners();
            let mut back_corners = corners();
            for first in (0..yl).step_by(BLOCK) {
                let n = BLOCK.min(yl - first);
                let [t0, t1, t2, t3] = &mut taps;
                for (o, at) in (0..n).zip(&mut at_corners) {
                    (t0[o], t1[o], t2[o], t3[o]) = (xp[at], xp[at + 1], xp[at + w], xp[at + w + 1]);
                }
                for (o, &g) in gyp[first..first + n].iter().enumerate() {
                    let (a, b, c, d) = (t0[o], t1[o], t2[o], t3[o]);
                    let w1 = Self::beats(b, a);
                    let m = if w1 { b } else { a };
                    let w2 = Self::beats(c, m);
                    let m = if w2 { c } else { m };
                    let w3 = Self::beats(d, m);
                    let share = |won: bool| if won { 0.0 + g } else { 0.0 };
                    t0[o] = share(!w1 & !w2 & !w3);
                    t1[o] = share(w1 & !w2 & !w3);
                    t2[o] = share(w2 & !w3);
                    t3[o] = share(w3);
                }
                for (o, at) in (0..n).zip(&mut back_corners) {
                    (gxp[at], gxp[at + 1], gxp[at + w], gxp[at + w + 1]) =
                        (t0[o], t1[o], t2[o], t3[o]);
                }
            }
        }
    }

    /// `gx` from `x` and `gy`: max sends each window's gradient to its
    /// first maximal element, average spreads it evenly.
    pub fn backward(&self, x: &[f32], gy: &[f32], gx: &mut [f32]) {
        if gy.is_empty() {
            gx.fill(0.0);
            return;
        }
        let (k, s, w, ow) = (self.size, self.stride, self.w, self.ow);
        let area = (k * k) as f32;
        let (xl, yl) = (self.h * w, self.oh * ow);
        let c = self.chunk();
        let op = self.op;
        let two_by_two = op == PoolOp::Max && k == 2 && s == 2;
        // Whether the 2×2 windows tile each plane (even sides): then
        // every element of `gx` is written, and none need be zeroed first.
        let tiled = two_by_two && self.h == 2 * self.oh && w == 2 * ow;
        let (planes_gx, rest) = gx.split_at_mut(self.planes * xl);
        rest.fill(0.0);
        planes_gx
            .par_chunks_mut(c * xl)
            .zip(x[..self.planes * xl].par_chunks(c * xl))
            .zip(gy[..self.planes * yl].par_chunks(c * yl))
            .for_each(|((gxs, xs), gys)| {
                // Zeroed here, by the thread that writes the chunk next.
                if !tiled {
                    gxs.fill(0.0);
                }
                if two_by_two {
                    self.max_2x2_backward(gxs, xs, gys);
                    return;
                }
                let planes = gxs.chunks_exact_mut(xl).zip(xs.chunks_exact(xl));
                for ((gxp, xp), gyp) in planes.zip(gys.chunks_exact(yl)) {
                    for (i, grow) in gyp.chunks_exact(ow).enumerate() {
                        let top = i * s * w;
                        for (j, &g) in grow.iter().enumerate() {
                            let top = top + j * s;
                            match op {
                                PoolOp::Max => {
                                    let mut best = top;
                                    for a in 0..k {
                                        for b in 0..k {
                                            let at = top + a * w + b;
                                            if Self::beats(xp[at], xp[best]) {
                                                best = at;
                                            }
                                        }
                                    }
                                    gxp[best] += g;
                                }
                                PoolOp::Avg => {
                                    let share = g / area;
                                    for a in 0..k {
                                        for v in &mut gxp[top + a * w..][..k] {
                                            *v += share;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            });
    }
}

/// `dst` = `src` (of `shape`) with its axes permuted, walking `dst` in
/// order. A swap of the last two axes (a matrix, or a batch of them) goes
/// in 8×8 tiles ([`transpose_matrix`]): 0.042-0.053 ms against
/// 0.057-0.068 element by element for a 4×128×128 stack, 0.26-0.35
/// against 0.44-0.52 ms for 512×784 (`NNC_LOG=profile`, alone).
pub fn transpose(src: &[f32], dst: &mut [f32], shape: &[usize], perm: &[usize]) {
    let r = shape.len();
    let swaps_last_two = r >= 2
        && perm[..r - 2].iter().enumerate().all(|(i, &p)| p == i)
        && perm[r - 2] == r - 1
        && perm[r - 1] == r - 2;
    if swaps_last_two {
        let (rows, cols) = (shape[r - 2], shape[r - 1]);
        let size = rows * cols;
        if size == 0 {
            return;
        }
        let each = |src: &[f32], dst: &mut [f32]| {
            for (s, d) in src.chunks_exact(size).zip(dst.chunks_exact_mut(size)) {
                transpose_matrix(s, d, rows, cols);
            }
        };
        // A stack of matrices large enough is shared by two threads, half
        // the matrices each (the LSTM's [4, 128, 128] gate weights).
        let batches = dst.len() / size;
        if batches >= 2 && in_two(dst.len()) {
            let at = batches / 2 * size;
            let (s0, s1) = src.split_at(at);
            in_halves(dst, at, &|p, d| each(if p == 0 { s0 } else { s1 }, d));
        } else {
            each(src, dst);
        }
        return;
    }
    transpose_any(src, dst, shape, perm);
}

/// Whether a copy or transpose of `floats` floats is split over two
/// threads: from [`super::threads`]' loop threshold (these are as memory
/// bound as a plain loop), when there are two.
fn in_two(floats: usize) -> bool {
    floats >= super::threads::loop_elements().max(2) && rayon::current_num_threads() >= 2
}

/// `blocks.copy(src, dst)`, in two halves side by side when it moves
/// enough floats ([`in_two`]): the first half of the rows and the rest
/// (or, for one row, its two halves), each into its own part of `dst`.
/// Rows that overlap in `dst` are copied in order, on one thread.
pub fn copy_blocks(blocks: &Blocks, src: &[f32], dst: &mut [f32]) {
    let b = *blocks;
    if !in_two(b.count * b.len) || (b.count > 1 && b.dst_stride < b.len) {
        b.copy(src, dst);
        return;
    }
    // The second half's blocks, from `cut` in `dst`.
    let (first, second, cut) = if b.count > 1 {
        let h = b.count / 2;
        let cut = b.dst_at + h * b.dst_stride;
        let second = Blocks {
            count: b.count - h,
            src_at: b.src_at + h * b.src_stride,
            dst_at: 0,
            ..b
        };
        (Blocks { count: h, ..b }, second, cut)
    } else {
        let h = b.len / 2;
        let second = Blocks {
            len: b.len - h,
            src_at: b.src_at + h,
            dst_at: 0,
            ..b
        };
        (Blocks { len: h, ..b }, second, b.dst_at + h)
    };
    in_halves(dst, cut, &|p, d| {
        if p == 0 { first } else { second }.copy(src, d)
    });
}

/// `f(0, &mut dst[..at])` and `f(1, &mut dst[at..])` side by side, on this
/// thread and the helper ([`super::helper::for_each_part`]): each half is
/// handed to its part alone.
fn in_halves(dst: &mut [f32], at: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let (d0, d1) = dst.split_at_mut(at);
    let halves = [Mutex::new(d0), Mutex::new(d1)];
    super::helper::for_each_part(2, &|p| {
        f(p, &mut halves[p].lock().unwrap_or_else(|e| e.into_inner()));
    });
}

/// `dst` ([cols, rows]) = `src` ([rows, cols]) transposed, in tiles of
/// `TILE`×`TILE`: a whole tile is read row by row into registers and
/// written back row by row, each a contiguous run on both sides; the
/// tiles at the edges go element by element.
fn transpose_matrix(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    const TILE: usize = 8;
    for i0 in (0..rows).step_by(TILE) {
        for j0 in (0..cols).step_by(TILE) {
            if i0 + TILE <= rows && j0 + TILE <= cols {
                let mut t = [[0.0f32; TILE]; TILE];
                for (a, row) in src[i0 * cols..].chunks(cols).take(TILE).enumerate() {
                    for (b, &x) in row[j0..j0 + TILE].iter().enumerate() {
                        t[b][a] = x;
                    }
                }
                for (b, line) in t.iter().enumerate() {
                    dst[(j0 + b) * rows + i0..][..TILE].copy_from_slice(line);
                }
            } else {
                for i in i0..(i0 + TILE).min(rows) {
                    for j in j0..(j0 + TILE).min(cols) {
                        dst[j * rows + i] = src[i * cols + j];
                    }
                }
            }
        }
    }
}

/// [`transpose`] for any permutation, element by element.
fn transpose_any(src: &[f32], dst: &mut [f32], shape: &[usize], perm: &[usize]) {
    let r = shape.len();
    let st = strides(shape);
    let mut idx = [0usize; 8];
    let mut dims = [0usize; 8];
    let mut sst = [0usize; 8];
    assert!(r <= 8, "transpose of rank > 8");
    for i in 0..r {
        dims[i] = shape[perm[i]];
        sst[i] = st[perm[i]];
    }
    if dst.is_empty() {
        return;
    }
    let mut off = 0usize;
    for d in dst.iter_mut() {
        *d = src[off];
        // Increment the multi-index, last axis fastest.
        let mut ax = r;
        while ax > 0 {
            ax -= 1;
            idx[ax] += 1;
            off += sst[ax];
            if idx[ax] < dims[ax] {
                break;
            }
            off -= sst[ax] * dims[ax];
            idx[ax] = 0;
        }
    }
}

/// Floats of scratch a convolution needs on `threads` threads, or `None`
/// when that does not fit [`MAX_ELEMENTS`](crate::ir::shape::MAX_ELEMENTS)
/// per thread: the unfolded input is [c·kh·kw, oh·ow] per thread (plus
/// the weight's o·c·kh·kw, a checked shape, for its gradient), each
/// factor part of a checked shape, but their product can pass 2^48 (a
/// wide window over a wide output).
pub fn conv_scratch(geo: &Conv, pass: ConvPass, threads: usize) -> Option<usize> {
    let unfolded = [geo.c, geo.kh, geo.kw, geo.oh, geo.ow];
    crate::ir::shape::checked_elements(&unfolded)?;
    geo.scratch_per_thread(pass).checked_mul(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` test values spread around 0: `(i·step mod modulus − modulus/2)
    /// · scale` for each index i (an odd modulus centres them exactly).
    fn spread(len: usize, step: usize, modulus: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * step % modulus) as f32 - (modulus / 2) as f32) * scale)
            .collect()
    }

    /// The unfolding of a stride-1 convolution without padding (runs of
    /// `ow` floats copied 8 at a time, then one by one) puts every input
    /// element where the definition says: widths that are multiples of 8
    /// (LeNet's 24 and 8), one that is not, and several channels; two
    /// samples side by side, the second's columns after the first's.
    #[test]
    fn im2col_without_stride_or_padding_follows_the_definition() {
        use crate::schedule::Conv;
        for (c, h, w, kh, kw) in [(1, 28, 28, 5, 5), (6, 12, 12, 5, 5), (3, 9, 17, 2, 4)] {
            let (oh, ow) = (h - kh + 1, w - kw + 1);
            let g = Conv {
                n: 2,
                c,
                h,
                w,
                o: 1,
                kh,
                kw,
                oh,
                ow,
                stride: 1,
                pad: 0,
            };
            let (xlen, p) = (c * h * w, oh * ow);
            let x: Vec<f32> = (0..2 * xlen).map(|i| i as f32).collect();
            let mut cols = vec![f32::NAN; c * kh * kw * 2 * p];
            for s in 0..2 {
                g.im2col_at(&x[s * xlen..][..xlen], &mut cols, 2 * p, s * p);
            }
            for ((ci, a), b) in (0..c)
                .flat_map(|ci| (0..kh).map(move |a| (ci, a)))
                .flat_map(|ca| (0..kw).map(move |b| (ca, b)))
            {
                for (s, i, j) in
                    (0..2).flat_map(|s| (0..oh).flat_map(move |i| (0..ow).map(move |j| (s, i, j))))
                {
                    let row = (ci * kh + a) * kw + b;
                    let want = x[s * xlen + (ci * h + i + a) * w + j + b];
                    assert_eq!(
                        cols[row * 2 * p + s * p + i * ow + j],
                        want,
                        "{c}x{h}x{w}, sample {s}, tap {ci},{a},{b}, at {i},{j}"
                    );
                }
            }
        }
    }

    /// Copies and transposes large enough to run in two halves (at the
    /// default thresholds, on two threads) give what one pass gives: rows
    /// split at the half, one long row split at its half, rows that
    /// overlap (in order, whole), and a stack of matrices split by
    /// matrices.
    #[test]
    fn copies_and_transposes_in_two_halves_match_one_pass() {
        let src: Vec<f32> = (0..400_000).map(|i| (i % 977) as f32 * 0.5 - 3.0).collect();
        let cases = [
            (301, 256, 3, 900, 7, 260),
            (1, 70_001, 5, 0, 11, 0),
            (300, 300, 0, 301, 0, 200),
        ];
        for (count, len, src_at, src_stride, dst_at, dst_stride) in cases {
            let b = Blocks {
                count,
                len,
                src_at,
                src_stride,
                dst_at,
                dst_stride,
            };
            let size = dst_at + (count - 1) * dst_stride + len + 5;
            let (mut one, mut two) = (vec![f32::NAN; size], vec![f32::NAN; size]);
            b.copy(&src, &mut one);
            copy_blocks(&b, &src, &mut two);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&two), "{b:?}");
        }
        for shape in [[4, 128, 128], [3, 200, 120], [1, 300, 257]] {
            let n: usize = shape.iter().product();
            let mut whole = vec![0.0; n];
            let mut halves = vec![0.0; n];
            transpose_any(&src[..n], &mut whole, &shape, &[0, 2, 1]);
            transpose(&src[..n], &mut halves, &shape, &[0, 2, 1]);
            assert_eq!(whole, halves, "{shape:?}");
        }
    }

    /// A product split along `k` ([`sgemm_split_k`]: `k` at least
    /// [`SPLIT_K`] times `m` and `n`) over two and three threads, with a
    /// transposed operand (the weight gradient's `hᵀ`), a row stride
    /// beyond the row, and added into what `dst` held, agrees with the
    /// sum taken in double precision; the elements beyond each row are
    /// left alone. A second call (its partial products reused) gives the
    /// same bits.
    #[test]
    fn a_product_split_along_k_agrees_with_the_plain_sum() {
        for (m, k, n, threads, accumulate) in [
            (128, 1024, 128, 2, false),
            (32, 1024, 128, 2, true),
            (7, 100, 3, 3, true),
            (1, 64, 8, 2, false),
        ] {
            assert!(k >= SPLIT_K * m.max(n));
            // `a` stored transposed ([k, m]), `b` row-major, `dst` rows of
            // n + 2 floats.
            let at = spread(k * m, 7, 13, 0.11);
            let b = spread(k * n, 5, 17, 0.07);
            let rs = n + 2;
            let held: Vec<f32> = (0..m * rs).map(|i| (i % 5) as f32 - 2.0).collect();
            let run = || {
                let mut dst = held.clone();
                // SAFETY: the sizes as promised: a is m×k at strides
                // (1, m), b k×n at (n, 1), dst m rows of n at stride rs.
                unsafe {
                    sgemm_split(
                        (m, k, n),
                        dst.as_mut_ptr(),
                        rs as isize,
                        at.as_ptr(),
                        (1, m as isize),
                        b.as_ptr(),
                        (n as isize, 1),
                        accumulate,
                        threads,
                        (false, None),
                        false,
                    )
                };
                dst
            };
            let (first, second) = (run(), run());
            assert_eq!(first, second, "{m}×{k}×{n}");
            for i in 0..m {
                for j in 0..rs {
                    let got = first[i * rs + j];
                    if j >= n {
                        assert_eq!(got, held[i * rs + j]);
                        continue;
                    }
                    let mut want: f64 = (0..k)
                        .map(|p| at[p * m + i] as f64 * b[p * n + j] as f64)
                        .sum();
                    if accumulate {
                        want += held[i * rs + j] as f64;
                    }
                    let tol = 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt();
                    assert!(
                        (got as f64 - want).abs() <= tol,
                        "{m}×{k}×{n} on {threads} threads, ({i}, {j}): {got} against {want}"
                    );
                }
            }
        }
    }

    /// A product wider than it is tall whose `b` is fixed is split by
    /// rows: each thread reports its own rows to `rows_done` as it
    /// finishes them (a split by columns reports the whole product once,
    /// from no thread), and the values agree with the sum taken in double
    /// precision and with the same product split by columns.
    #[test]
    fn a_product_with_a_fixed_b_is_split_by_rows() {
        for (m, k, n) in [(32, 512, 128), (48, 70, 200), (128, 784, 256)] {
            assert!(m < n && k < SPLIT_K * n);
            let a = spread(m * k, 7, 13, 0.11);
            let b = spread(k * n, 5, 17, 0.07);
            let run = |b_fixed: bool| {
                let mut dst = vec![f32::NAN; m * n];
                // Poisoned only if a part panicked, which fails the test
                // on its own.
                let parts = std::sync::Mutex::new(Vec::new());
                let done = |lo: usize, hi: usize, t: Option<usize>| {
                    parts.lock().expect("no part panics").push((lo, hi, t))
                };
                // SAFETY: the sizes as promised: a is m×k, b k×n and dst
                // m×n, all row-major.
                unsafe {
                    sgemm_split(
                        (m, k, n),
                        dst.as_mut_ptr(),
                        n as isize,
                        a.as_ptr(),
                        (k as isize, 1),
                        b.as_ptr(),
                        (n as isize, 1),
                        false,
                        2,
                        (true, Some(&done)),
                        b_fixed,
                    )
                };
                let mut parts = parts.into_inner().expect("no part panics");
                parts.sort();
                (dst, parts)
            };
            let (rows, row_parts) = run(true);
            let (cols, col_parts) = run(false);
            let half = m / ROWS / 2 * ROWS;
            assert_eq!(row_parts, vec![(0, half, Some(0)), (half, m, Some(1))]);
            assert_eq!(col_parts, vec![(0, m, None)]);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                        .sum();
                    let tol = 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt();
                    for (got, how) in [(rows[i * n + j], "rows"), (cols[i * n + j], "columns")] {
                        assert!(
                            (got as f64 - want).abs() <= tol,
                            "{m}×{k}×{n} by {how}, ({i}, {j}): {got} against {want}"
                        );
                    }
                }
            }
        }
    }

    /// A GEMV split in two at any column gives the bits of the whole one,
    /// whoever runs the second part (`helper::split`).
    #[test]
    fn split_gemv_matches_the_whole_one() {
        for (k, n) in [(1, 2), (7, 17), (33, 40), (300, 200), (784, 256), (5, 301)] {
            let x = spread(k, 7, 13, 0.37);
            let w = spread(k * n, 11, 23, 0.051);
            let mut whole = vec![f32::NAN; n];
            // SAFETY: the sizes as promised: x of k, w of k rows of n.
            let gemv = |dst: &mut [f32]| Gemv {
                k,
                n,
                dst: dst.as_mut_ptr(),
                a: x.as_ptr(),
                a_cs: 1,
                b: w.as_ptr(),
                b_rs: n as isize,
            };
            // SAFETY: the sizes as promised: x of k, w of k rows of n.
            let had = unsafe { sgemv(gemv(&mut whole)) };
            if !had {
                return; // no AVX2/AVX-512: nothing to split
            }
            for half in [0, 1, n / 2, n.saturating_sub(16), n] {
                for _ in 0..50 {
                    let mut parts = vec![f32::NAN; n];
                    // SAFETY: as above; half <= n.
                    let ok = unsafe { sgemv_split_at(half, gemv(&mut parts)) };
                    assert!(ok);
                    let (a, b): (Vec<u32>, Vec<u32>) = (
                        whole.iter().map(|v| v.to_bits()).collect(),
                        parts.iter().map(|v| v.to_bits()).collect(),
                    );
                    assert_eq!(a, b, "k {k} n {n} split at {half}");
                }
            }
        }
    }

    /// A narrow product gives, for every width up to a register, the
    /// bits of each row's FMAs in order, with `a` read transposed, and
    /// with and without accumulating; the columns past `n` in each row of
    /// `dst` are left as they were.
    #[test]
    fn narrow_product_sums_each_row_in_order() {
        for (m, k) in [(1, 1), (7, 5), (8, 33), (9, 256), (17, 3)] {
            for n in 1..=NARROW {
                for accumulate in [false, true] {
                    let a = spread(k * m, 7, 13, 0.37);
                    let b = spread(k * n, 11, 23, 0.051);
                    // `a` is given as its transpose's buffer ([k, m]).
                    let (rs, before) = (n + 3, |i: usize| i as f32 * 0.5 - 3.0);
                    let mut dst: Vec<f32> = (0..m * rs).map(before).collect();
                    // SAFETY: a holds [k, m], read with strides (1, m) as
                    // [m, k]; b [k, n]; dst m rows of rs >= n.
                    let done = unsafe {
                        sgemm_narrow(Product {
                            dims: (m, k, n),
                            dst: dst.as_mut_ptr(),
                            dst_rs: rs as isize,
                            a: a.as_ptr(),
                            a_rc: (1, m as isize),
                            b: b.as_ptr(),
                            b_rc: (n as isize, 1),
                            accumulate,
                        })
                    };
                    if !done {
                        return; // no AVX-512: the gemm crate computes it
                    }
                    for i in 0..m {
                        for j in 0..rs {
                            let old = before(i * rs + j);
                            let want = if j < n {
                                let sum = (0..k)
                                    .fold(0.0f32, |acc, p| a[p * m + i].mul_add(b[p * n + j], acc));
                                if accumulate {
                                    old + sum
                                } else {
                                    sum
                                }
                            } else {
                                old
                            };
                            assert_eq!(
                                dst[i * rs + j].to_bits(),
                                want.to_bits(),
                                "m {m} k {k} n {n} accumulate {accumulate} at ({i}, {j})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The tiled swap of the last two axes gives what the general walk
    /// gives, for sizes that are and are not multiples of the tile.
    #[test]
    fn tiled_transpose_matches_the_general_one() {
        for shape in [
            vec![1, 1],
            vec![3, 5],
            vec![8, 8],
            vec![16, 16],
            vec![17, 33],
            vec![2, 40, 7],
        ] {
            let r = shape.len();
            let mut perm: Vec<usize> = (0..r).collect();
            perm.swap(r - 2, r - 1);
            let n: usize = shape.iter().product();
            let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let (mut tiled, mut plain) = (vec![0.0; n], vec![0.0; n]);
            transpose(&src, &mut tiled, &shape, &perm);
            transpose_any(&src, &mut plain, &shape, &perm);
            assert_eq!(tiled, plain, "shape {shape:?}");
        }
    }
}
