//! Full-width elementwise kernels: a loop kernel heavy in `exp`, `log`,
//! `tanh` or `sigmoid` run by precompiled Rust at the CPU's full vector
//! width (AVX-512: 16 lanes, else AVX2: 8) instead of Cranelift's 128-bit
//! code (4 lanes), chosen at run time from the CPU's features.
//!
//! The kernel's expression is evaluated a block of [`BLOCK`] points at a
//! time: each entry of the expression becomes one pass over the block
//! (which stays in the L1 cache), so every pass is a plain loop over
//! arrays that LLVM vectorizes at the width the enclosing function's
//! `target_feature` allows. The arithmetic is the JIT's, operation for
//! operation — the same polynomials, the same fused multiply-adds, the
//! same handling of the ends of the range, NaN-propagating max and min —
//! so a kernel gives the same bits either way (`tests/jit_math.rs`).
//!
//! Which kernels: elementwise (no reduction), every access and the output
//! walking the innermost dim contiguously or not at all (a broadcast),
//! at least [`MIN_INNER`] points along it (or shorter rows, at least a
//! block of them, grouped whole into blocks), and at least one
//! transcendental (where the width pays; an add or a copy is memory-bound
//! either way), with no general power (`x ^ y` calls the host's `powf`).
//! A kernel's further outputs (fusion's `store-alongside`) must walk the
//! innermost dim contiguously too: each such value's pass writes straight
//! into its output's row (rows shorter than a block: into the scratch,
//! then scattered), and later passes read it there.

// Elsewhere than x86-64 there is no wider vector to reach: the JIT's
// own kernels run and these routines are not called.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::math::{EXP_P, LOG_P, TANH_P};
use crate::ir::{BinaryOp, CmpOp, UnaryOp};
use crate::schedule::{Expr, LoopKernel};

/// Points per block: 16 KiB of registers for a 16-entry expression.
const BLOCK: usize = 256;

/// The most accesses and dims a wide kernel has (its offsets live on the
/// stack: a call allocates nothing).
const MAX_ACCESSES: usize = 32;
const MAX_RANK: usize = 8;
/// The most entries a wide kernel's expression has (where each entry's
/// block lies is kept on the stack too).
const MAX_EXPRS: usize = 256;

/// Where an entry's block of values lies while a block is computed.
#[derive(Clone, Copy)]
enum Home {
    /// In the entry's part of the scratch.
    Scratch,
    /// In the row of further output `j` (fusion's `store-alongside`),
    /// written there by the entry's pass and read there by the later ones.
    Also(usize),
    /// Where access `a` lies (a contiguous load): read in place, no pass.
    InPlace(usize),
}

/// The floats of scratch one thread needs to run `k`.
pub fn scratch_len(k: &LoopKernel) -> usize {
    k.exprs.len() * BLOCK
}

/// The shortest innermost dim worth a block.
const MIN_INNER: usize = 64;

/// The vector extension a wide kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Avx512,
    Avx2,
}

/// Whether wide kernels are used: unset (0: unless `NNC_WIDE=off`), on
/// (1) or off (2).
static ENABLED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Turns wide kernels on or off for the programs this process compiles
/// from now on (tests compare both).
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

/// The widest level this CPU has, if any and if wide kernels are on
/// ([`set_enabled`]; `NNC_WIDE=off` turns them off, for comparisons).
pub fn level() -> Option<Level> {
    static LEVEL: std::sync::OnceLock<Option<Level>> = std::sync::OnceLock::new();
    static ENV_ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = match ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => *ENV_ON.get_or_init(|| !std::env::var("NNC_WIDE").is_ok_and(|v| v == "off")),
    };
    if !on {
        return None;
    }
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Some(Level::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Some(Level::Avx2);
            }
        }
        None
    })
}

/// Whether `k` runs wide (see the module's rules), at `level`.
pub fn eligible(k: &LoopKernel) -> Option<Level> {
    let level = level()?;
    let last = k.dims.len() - 1;
    // Further outputs (`store-alongside`) are rows of computed values,
    // each written where it lies (see the module's rules).
    let contiguous = k.out[last] == 1
        && k.accesses.iter().all(|s| s[last] == 0 || s[last] == 1)
        && k.also.iter().all(|a| {
            a.strides[last] == 1 && !matches!(k.exprs[a.expr], Expr::Load(_) | Expr::Const(_))
        });
    let heavy = k.exprs.iter().any(|e| {
        matches!(
            e,
            Expr::Unary(
                UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid,
                _
            )
        )
    });
    let supported = !k
        .exprs
        .iter()
        .any(|e| matches!(e, Expr::Binary(BinaryOp::Pow, ..)));
    let small = k.accesses.len() <= MAX_ACCESSES
        && k.also.len() <= MAX_ACCESSES
        && k.exprs.len() <= MAX_EXPRS
        && k.dims.len() <= MAX_RANK;
    // Short rows are grouped into blocks: worth it from one full block.
    let points: usize = k.dims.iter().product();
    let long_enough = k.dims[last] >= MIN_INNER || (last > 0 && points >= BLOCK);
    (k.reduce.is_none() && contiguous && heavy && supported && small && long_enough)
        .then_some(level)
}

/// Runs `k` (which [`eligible`] accepted) over `lo..hi` of its outermost
/// dim, with `regs` ([`scratch_len`] floats) as its scratch.
///
/// # Safety
///
/// As a compiled loop kernel: `ptrs` holds the output's, each access's
/// and each further output's buffer, each as long as the kernel's strides
/// reach over `lo..hi`.
pub unsafe fn run(
    level: Level,
    k: &LoopKernel,
    ptrs: *const *mut f32,
    lo: usize,
    hi: usize,
    regs: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: `level` was detected on this CPU; the caller's promise.
        Level::Avx512 => unsafe { run_avx512(k, ptrs, lo, hi, regs) },
        Level::Avx2 => unsafe { run_avx2(k, ptrs, lo, hi, regs) },
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (level, k, ptrs, lo, hi, regs);
        unreachable!("no wide level off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn run_avx512(
    k: &LoopKernel,
    ptrs: *const *mut f32,
    lo: usize,
    hi: usize,
    regs: &mut [f32],
) {
    // SAFETY: the caller's promise.
    unsafe { run_generic(k, ptrs, lo, hi, regs) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(k: &LoopKernel, ptrs: *const *mut f32, lo: usize, hi: usize, regs: &mut [f32]) {
    // SAFETY: the caller's promise.
    unsafe { run_generic(k, ptrs, lo, hi, regs) }
}

/// The walk over the iteration space, inlined into each level's function
/// so that its passes are compiled at that level's width.
#[inline(always)]
unsafe fn run_generic(
    k: &LoopKernel,
    ptrs: *const *mut f32,
    lo: usize,
    hi: usize,
    regs: &mut [f32],
) {
    let rank = k.dims.len();
    let last = rank - 1;
    let n_acc = k.accesses.len();
    // SAFETY: the caller's promise: one pointer for the output, then one
    // per access.
    let out = unsafe { *ptrs };
    let mut acc = [std::ptr::null_mut::<f32>(); MAX_ACCESSES];
    for (a, p) in acc.iter_mut().enumerate().take(n_acc) {
        *p = unsafe { *ptrs.add(a + 1) };
    }
    // The further outputs' buffers follow the accesses'.
    let mut also = [std::ptr::null_mut::<f32>(); MAX_ACCESSES];
    for (j, p) in also.iter_mut().enumerate().take(k.also.len()) {
        *p = unsafe { *ptrs.add(1 + n_acc + j) };
    }
    // The points: every index of the dims before the last (the first
    // within lo..hi), then the innermost dim in blocks; a kernel of one dim
    // has its range split directly.
    let (outer_lo, outer_hi, inner_lo, inner_hi) = if rank == 1 {
        (0, 1, lo, hi)
    } else {
        (lo, hi, 0, k.dims[last])
    };
    // A constant's pass is the same for every block: filled once here
    // (each entry has its own part of the scratch, which no other pass
    // writes).
    for (e, expr) in k.exprs.iter().enumerate() {
        if let Expr::Const(c) = *expr {
            regs[e * BLOCK..(e + 1) * BLOCK].fill(c);
        }
    }
    if rank > 1 && k.dims[last] < MIN_INNER {
        // SAFETY: the caller's promise.
        unsafe { run_short_rows(k, out, &acc, &also, lo, hi, regs) };
        return;
    }
    // Where each entry's block lies (see `Home`); the rows themselves are
    // found once per block.
    let n = k.exprs.len();
    let mut homes = [Home::Scratch; MAX_EXPRS];
    for (e, home) in homes[..n].iter_mut().enumerate() {
        if let Some(j) = k.also.iter().position(|a| a.expr == e) {
            *home = Home::Also(j);
        } else if let Expr::Load(a) = k.exprs[e] {
            // The value itself is copied into the scratch, then out.
            if k.accesses[a][last] == 1 && e + 1 < n {
                *home = Home::InPlace(a);
            }
        }
    }
    let mut rows = [std::ptr::null_mut::<f32>(); MAX_EXPRS];
    let mut idx_store = [0usize; MAX_RANK];
    let idx = &mut idx_store[..rank - 1];
    let middle: usize = k.dims[1..last.max(1)].iter().product();
    for i0 in outer_lo..outer_hi {
        for m in 0..if rank > 1 { middle } else { 1 } {
            // The multi-index of the dims before the last.
            if rank > 1 {
                idx[0] = i0;
                let mut r = m;
                for d in (1..last).rev() {
                    idx[d] = r % k.dims[d];
                    r /= k.dims[d];
                }
            }
            let base = |strides: &[i64]| -> isize {
                idx.iter()
                    .zip(strides)
                    .map(|(&i, &s)| i as isize * s as isize)
                    .sum()
            };
            let out_base = base(&k.out) + k.out_offset as isize;
            let mut also_base = [0isize; MAX_ACCESSES];
            for (b, a) in also_base.iter_mut().zip(&k.also) {
                *b = base(&a.strides) + a.offset as isize;
            }
            let mut acc_base = [0isize; MAX_ACCESSES];
            for ((b, s), &o) in acc_base.iter_mut().zip(&k.accesses).zip(&k.offsets) {
                *b = base(s) + o as isize;
            }
            // The last pass writes straight into the output where the
            // output's row overlaps no access's (an in-place kernel goes
            // through the scratch), and a contiguous load is read where it
            // lies: no copy in or out of the scratch for either (chain.nn
            // over 262144 points, in cache: 0.16-0.21 ms with the copies,
            // 0.14-0.16 without, measured).
            let out_row = out.wrapping_offset(out_base);
            let overlaps = (0..n_acc).any(|a| {
                let s = k.accesses[a][last] as isize;
                let from = acc[a].wrapping_offset(acc_base[a] + inner_lo as isize * s);
                let to = from.wrapping_add(if s == 0 { 1 } else { inner_hi - inner_lo });
                from < out_row.wrapping_add(inner_hi) && out_row.wrapping_add(inner_lo) < to
            });
            let direct_out = !overlaps && !matches!(k.exprs[n - 1], Expr::Load(_) | Expr::Const(_));
            let mut at = inner_lo;
            while at < inner_hi {
                let len = BLOCK.min(inner_hi - at);
                // Each contiguous access's block after next is fetched
                // into the cache while this one computes: the passes are
                // long enough that, left to the hardware, the loads of
                // the next block wait on memory (chain.nn's 16M points:
                // about a fifth of the time, measured).
                for (a, strides) in k.accesses.iter().enumerate() {
                    if strides[last] == 1 && at + PREFETCH_AHEAD < inner_hi {
                        // SAFETY: within the access's range (checked
                        // above); a prefetch never faults in any case.
                        let p =
                            unsafe { acc[a].offset(acc_base[a] + (at + PREFETCH_AHEAD) as isize) };
                        prefetch_block(p);
                    }
                }
                // Where each entry's block lies, found once per block for
                // all the passes (`Home`): a value stored alongside in its
                // output's row, a contiguous load where it lies, the
                // output's last pass in the output's row, the rest in the
                // scratch.
                let scratch = regs.as_mut_ptr();
                for (e, row) in rows[..n].iter_mut().enumerate() {
                    *row = match homes[e] {
                        Home::Also(j) => also[j].wrapping_offset(also_base[j] + at as isize),
                        Home::InPlace(a) => acc[a].wrapping_offset(acc_base[a] + at as isize),
                        Home::Scratch => scratch.wrapping_add(e * BLOCK),
                    };
                }
                if direct_out {
                    rows[n - 1] = out_row.wrapping_add(at);
                }
                for (e, expr) in k.exprs.iter().enumerate() {
                    // SAFETY: every row holds `len` floats (the output's,
                    // a further output's and a load's by the caller's
                    // promise, the scratch's by its length); the entry
                    // written is not one of its operands (an operand comes
                    // before it), and no access overlaps the output's or a
                    // further output's row (checked above; the verifier's
                    // rule 2).
                    let r = unsafe { std::slice::from_raw_parts_mut(rows[e], len) };
                    let reg = |j: usize| unsafe { std::slice::from_raw_parts(rows[j], len) };
                    match *expr {
                        // Read where it lies, unless it is the value itself.
                        Expr::Load(_) if matches!(homes[e], Home::InPlace(_)) => {}
                        Expr::Load(a) => {
                            let s = k.accesses[a][last] as isize;
                            // SAFETY: as above.
                            let p = unsafe { acc[a].offset(acc_base[a] + at as isize * s) };
                            if s == 0 {
                                r.fill(unsafe { *p });
                            } else {
                                r.copy_from_slice(unsafe { std::slice::from_raw_parts(p, len) });
                            }
                        }
                        // Filled before the walk.
                        Expr::Const(_) => {}
                        Expr::Unary(op, x) => unary(op, reg(x), r),
                        Expr::Binary(op, x, y) => binary(op, reg(x), reg(y), r),
                        Expr::PowI(x, p) => powi(reg(x), p, r),
                        Expr::Compare(op, x, y) => compare(op, reg(x), reg(y), r),
                        Expr::Select(c, x, y) => select(reg(c), reg(x), reg(y), r),
                    }
                }
                if !direct_out {
                    let value = &regs[(n - 1) * BLOCK..][..len];
                    // SAFETY: as for the loads; the output is contiguous
                    // here.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_row.add(at), len) };
                    dst.copy_from_slice(value);
                }
                at += len;
            }
        }
    }
}

/// [`run_generic`] for rows shorter than [`MIN_INNER`] (a softmax over a
/// sequence of 32, say): a block holds as many whole rows as fit, each
/// load gathered row by row into its part of the scratch (a broadcast
/// along the row filled with its one value) and the value scattered to
/// the output's rows, so that the passes run over a full block instead
/// of one short row at a time. The arithmetic per point is the same.
///
/// # Safety
///
/// As [`run`], with `out`, `acc` and `also` its output's, accesses' and
/// further outputs' buffers; the constants' parts of `regs` are filled.
#[inline(always)]
unsafe fn run_short_rows(
    k: &LoopKernel,
    out: *mut f32,
    acc: &[*mut f32; MAX_ACCESSES],
    also: &[*mut f32; MAX_ACCESSES],
    lo: usize,
    hi: usize,
    regs: &mut [f32],
) {
    let rank = k.dims.len();
    let last = rank - 1;
    let inner = k.dims[last];
    let per_block = BLOCK / inner;
    let middle: usize = k.dims[1..last].iter().product();
    let n = k.exprs.len();
    // The element offset of row `r` (counted from row 0 of `lo`) for the
    // strides `s` and start `at`.
    let row_at = |r: usize, s: &[i64], at: usize| -> isize {
        let (i0, mut m) = (lo + r / middle, r % middle);
        let mut off = i0 as isize * s[0] as isize + at as isize;
        for d in (1..last).rev() {
            off += (m % k.dims[d]) as isize * s[d] as isize;
            m /= k.dims[d];
        }
        off
    };
    let rows = (hi - lo) * middle;
    let mut first = 0;
    while first < rows {
        let count = per_block.min(rows - first);
        let len = count * inner;
        for (e, expr) in k.exprs.iter().enumerate() {
            let (done, rest) = regs.split_at_mut(e * BLOCK);
            let r = &mut rest[..len];
            match *expr {
                Expr::Load(a) => {
                    let stride = k.accesses[a][last];
                    for (j, seg) in r.chunks_exact_mut(inner).enumerate() {
                        let at = row_at(first + j, &k.accesses[a], k.offsets[a]);
                        // SAFETY: the caller's promise covers every point
                        // of the range.
                        let p = unsafe { acc[a].offset(at) };
                        if stride == 0 {
                            seg.fill(unsafe { *p });
                        } else {
                            seg.copy_from_slice(unsafe { std::slice::from_raw_parts(p, inner) });
                        }
                    }
                }
                Expr::Const(_) => {}
                Expr::Unary(op, x) => unary(op, &done[x * BLOCK..][..len], r),
                Expr::Binary(op, x, y) => {
                    binary(op, &done[x * BLOCK..][..len], &done[y * BLOCK..][..len], r)
                }
                Expr::PowI(x, p) => powi(&done[x * BLOCK..][..len], p, r),
                Expr::Compare(op, x, y) => {
                    compare(op, &done[x * BLOCK..][..len], &done[y * BLOCK..][..len], r)
                }
                Expr::Select(c, x, y) => select(
                    &done[c * BLOCK..][..len],
                    &done[x * BLOCK..][..len],
                    &done[y * BLOCK..][..len],
                    r,
                ),
            }
        }
        let value = &regs[(n - 1) * BLOCK..][..len];
        for (j, seg) in value.chunks_exact(inner).enumerate() {
            let at = row_at(first + j, &k.out, k.out_offset);
            // SAFETY: as for the loads; the output's rows are contiguous.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.offset(at), inner) };
            dst.copy_from_slice(seg);
        }
        for (a, &p) in k.also.iter().zip(also) {
            let value = &regs[a.expr * BLOCK..][..len];
            for (j, seg) in value.chunks_exact(inner).enumerate() {
                let at = row_at(first + j, &a.strides, a.offset);
                // SAFETY: as for the output.
                let dst = unsafe { std::slice::from_raw_parts_mut(p.offset(at), inner) };
                dst.copy_from_slice(seg);
            }
        }
        first += count;
    }
}

/// How far ahead of the block being computed its loads are fetched.
const PREFETCH_AHEAD: usize = 2 * BLOCK;

/// Asks for the [`BLOCK`] floats at `p` to be brought into the L1 cache.
#[inline(always)]
fn prefetch_block(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..BLOCK / 16 {
        // SAFETY: a prefetch is a hint; it reads nothing and never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                p.wrapping_add(line * 16) as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline(always)]
fn unary(op: UnaryOp, x: &[f32], r: &mut [f32]) {
    // One loop per operation, so that each inlines and vectorizes.
    let it = r.iter_mut().zip(x);
    match op {
        UnaryOp::Neg => it.for_each(|(o, &v)| *o = -v),
        UnaryOp::Abs => it.for_each(|(o, &v)| *o = v.abs()),
        UnaryOp::Sqrt => it.for_each(|(o, &v)| *o = v.sqrt()),
        UnaryOp::Exp if tame(x, EXP_FAST) => it.for_each(|(o, &v)| *o = exp_fast(v)),
        UnaryOp::Exp => it.for_each(|(o, &v)| *o = exp(v)),
        UnaryOp::Log => it.for_each(|(o, &v)| *o = log(v)),
        UnaryOp::Tanh if tame(x, EXP_FAST / 2.0) => it.for_each(|(o, &v)| *o = tanh_fast(v)),
        UnaryOp::Tanh => it.for_each(|(o, &v)| *o = tanh(v)),
        UnaryOp::Sigmoid if tame(x, EXP_FAST) => {
            it.for_each(|(o, &v)| *o = 1.0 / (1.0 + exp_fast(-v)))
        }
        UnaryOp::Sigmoid => it.for_each(|(o, &v)| *o = sigmoid(v)),
    }
}

#[inline(always)]
fn binary(op: BinaryOp, x: &[f32], y: &[f32], r: &mut [f32]) {
    let it = r.iter_mut().zip(x).zip(y);
    match op {
        BinaryOp::Add => it.for_each(|((o, &a), &b)| *o = a + b),
        BinaryOp::Sub => it.for_each(|((o, &a), &b)| *o = a - b),
        BinaryOp::Mul => it.for_each(|((o, &a), &b)| *o = a * b),
        BinaryOp::Div => it.for_each(|((o, &a), &b)| *o = a / b),
        BinaryOp::Max => it.for_each(|((o, &a), &b)| *o = fmax(a, b)),
        BinaryOp::Min => it.for_each(|((o, &a), &b)| *o = fmin(a, b)),
        BinaryOp::Pow => unreachable!("`eligible` refuses kernels with a general power"),
    }
}

/// `x ^ p` for a whole `p`, as the JIT's multiplications.
#[inline(always)]
fn powi(x: &[f32], p: i32, r: &mut [f32]) {
    for (o, &v) in r.iter_mut().zip(x) {
        let mut acc = 1.0f32;
        for _ in 0..p.unsigned_abs() {
            acc *= v;
        }
        *o = if p < 0 { 1.0 / acc } else { acc };
    }
}

#[inline(always)]
fn compare(op: CmpOp, x: &[f32], y: &[f32], r: &mut [f32]) {
    for ((o, &a), &b) in r.iter_mut().zip(x).zip(y) {
        *o = if op.holds(a, b) { 1.0 } else { 0.0 };
    }
}

#[inline(always)]
fn select(c: &[f32], x: &[f32], y: &[f32], r: &mut [f32]) {
    for (((o, &c), &a), &b) in r.iter_mut().zip(c).zip(x).zip(y) {
        *o = if c != 0.0 { a } else { b };
    }
}

/// Cranelift's `fmax`: NaN if either is, +0 over −0.
#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    let m = if a > b { a } else { b };
    let m = if a == b {
        f32::from_bits(a.to_bits() & b.to_bits())
    } else {
        m
    };
    if a.is_nan() || b.is_nan() {
        a + b
    } else {
        m
    }
}

/// Cranelift's `fmin`: NaN if either is, −0 under +0.
#[inline(always)]
fn fmin(a: f32, b: f32) -> f32 {
    let m = if a < b { a } else { b };
    let m = if a == b {
        f32::from_bits(a.to_bits() | b.to_bits())
    } else {
        m
    };
    if a.is_nan() || b.is_nan() {
        a + b
    } else {
        m
    }
}

/// Horner's rule with fused multiply-adds, as `math::poly`.
#[inline(always)]
fn poly(x: f32, coeffs: &[f32]) -> f32 {
    let mut acc = coeffs[0];
    for &c in &coeffs[1..] {
        acc = acc.mul_add(x, c);
    }
    acc
}

/// Where `exp` takes its fast form: |x| below this (and not NaN).
const EXP_FAST: f32 = 86.0;

/// Whether every lane of a block is below `limit` in magnitude (and none
/// is NaN): then the block takes the fast forms alone, which give the
/// same bits as the full ones there. One vectorized pass, no branch per
/// lane.
#[inline(always)]
fn tame(x: &[f32], limit: f32) -> bool {
    x.iter().fold(true, |all, &v| all & (v.abs() < limit))
}

const MAGIC: f32 = 12_582_912.0;

/// `math::exp`'s reduction of `xc` (clamped): e^r as `er` and the
/// rounded 2-exponent in the low bits of `t`.
#[inline(always)]
fn exp_reduced(xc: f32) -> (f32, f32) {
    let t = xc.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let r = n.mul_add(-0.693_359_4, xc);
    let r = n.mul_add(2.121_944_4e-4, r);
    let p = poly(r, &EXP_P);
    let q = p.mul_add(r * r, r);
    (q + 1.0, t)
}

/// `math::exp`'s fast form: e^r with the exponent added to its bits.
#[inline(always)]
fn exp_scaled(er: f32, t: f32) -> f32 {
    let ti = t.to_bits() as i32;
    f32::from_bits((er.to_bits() as i32).wrapping_add(ti.wrapping_shl(23)) as u32)
}

/// `math::exp` for |x| < [`EXP_FAST`], not NaN: there the clamp leaves
/// x as it is and the fast form is the result.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    let (er, t) = exp_reduced(x);
    exp_scaled(er, t)
}

/// `math::exp`, lane by lane: the fast and the slow form are both
/// computed and the slow one kept where |x| ≥ 86 or x is NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let xc = fmax(fmin(x, 89.0), -104.0);
    let (er, t) = exp_reduced(xc);
    let fast = exp_scaled(er, t);
    let ti = t.to_bits() as i32;
    let ni = ti.wrapping_sub(MAGIC.to_bits() as i32);
    let h = ni >> 1;
    let l = ni.wrapping_sub(h);
    let scale = |k: i32| f32::from_bits((k.wrapping_add(127)).wrapping_shl(23) as u32);
    let slow = er * scale(h) * scale(l);
    // `UnorderedOrGreaterThanOrEqual`: NaN or |x| ≥ 86.
    let out = x.abs() >= 86.0 || x.is_nan();
    if out {
        slow
    } else {
        fast
    }
}

/// `math::log`, lane by lane.
#[inline(always)]
fn log(x: f32) -> f32 {
    let sub = x < f32::MIN_POSITIVE;
    let xn = if sub { x * 8_388_608.0 } else { x };
    let adj = if sub { 23.0 } else { 0.0 };
    let xi = xn.to_bits() as i32;
    let e = ((xi as u32) >> 23) as i32 - 126;
    let m = f32::from_bits(((xi & 0x007f_ffff) | 0x3f00_0000) as u32);
    let mut ef = e as f32 - adj;
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    let extra = if small { m } else { 0.0 };
    let dec = if small { 1.0 } else { 0.0 };
    ef -= dec;
    let m = (m - 1.0) + extra;
    let z = m * m;
    let p = poly(m, &LOG_P);
    let y = (m * z) * p;
    let y = ef.mul_add(-2.121_944_4e-4, y);
    let y = z.mul_add(-0.5, y);
    let r = m + y;
    let r = ef.mul_add(0.693_359_4, r);
    let r = if x == f32::INFINITY { f32::INFINITY } else { r };
    let r = if x == 0.0 { f32::NEG_INFINITY } else { r };
    let r = if x < 0.0 { f32::NAN } else { r };
    if x.is_nan() {
        x
    } else {
        r
    }
}

/// `math::tanh`, lane by lane.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    tanh_with(x, exp)
}

/// `math::tanh` for |x| < [`EXP_FAST`] / 2, not NaN (e^2|x| in its fast
/// form).
#[inline(always)]
fn tanh_fast(x: f32) -> f32 {
    tanh_with(x, exp_fast)
}

#[inline(always)]
fn tanh_with(x: f32, exp: impl Fn(f32) -> f32) -> f32 {
    let ax = x.abs();
    let e = exp(ax * 2.0);
    let q = 2.0 / (e + 1.0);
    let big = 1.0 - q;
    let big = f32::from_bits(big.to_bits() | (x.to_bits() & 0x8000_0000));
    let z = x * x;
    let p = poly(z, &TANH_P);
    let small = (x * z).mul_add(p, x);
    let r = if ax < 0.625 { small } else { big };
    if x.is_nan() {
        x
    } else {
        r
    }
}

/// `math::sigmoid`: 1 / (1 + e^(−x)).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}
