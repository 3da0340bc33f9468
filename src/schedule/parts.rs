//! `scan-rows`: a loop body whose steps, each cut into the same number of
//! parts, never share an element between parts, so that each part can run
//! every step of the body on its own thread, one after the other, with
//! the threads meeting once per step of the loop instead of once per step
//! of the body.
//!
//! An LSTM's body treats each row of its batch on its own: the gates'
//! product of its rows, then the cell's elementwise kernel over the same
//! rows. Cut both by rows, thread 0 computes the first half of the rows
//! from the carry's first half and thread 1 the rest: neither reads what
//! the other writes, and each row stays in the cache of the core that
//! computes it, where a split per step (the product by gates, the kernel
//! by elements) hands half of every result to the other core and waits
//! for it twice per step.
//!
//! What each step's part `t` of `parts` covers is fixed here, and used by
//! both this check and the backends that run the parts:
//!
//! - a loop kernel: its outer dim's range [`share`]`(dims[0], t, parts)`;
//! - a matrix product: the rows [`share`]`(m, t, parts)` of every product
//!   of its batch (and its epilogue over those rows, [`epilogue_range`]);
//! - a block copy: the blocks [`share`]`(count, t, parts)` of each part.
//!
//! [`independent_parts`] proves, element by element, that no element
//! one part writes is read or written by another part in the same step
//! of the loop. It runs every part of every step over the body's
//! buffers once (a body larger than [`TOUCHES_MAX`] is not checked, and
//! not cut). Buffers no step of the body writes (its carry, its step's
//! slices and the loop's invariant operands, which rule 7 of the verifier
//! keeps read only) may be read by every part. The steps of the loop stay
//! in order: the threads meet at the end of each, so a carry written by
//! one part is read by any part at the next.

use super::{BufId, Epilogue, LoopKernel, Schedule, Step};
use cranelift_entity::EntityRef;
use std::ops::Range;

/// The most element reads and writes [`independent_parts`] simulates for
/// one body, all its parts together.
pub const TOUCHES_MAX: usize = 1 << 22;

/// The most parts a body is cut into (a part is a bit of a byte below).
pub const PARTS_MAX: usize = 8;

/// Part `t` of `parts` of `0..len`: the parts cover it in order, their
/// lengths differing by at most one.
pub fn share(len: usize, t: usize, parts: usize) -> Range<usize> {
    len * t / parts..len * (t + 1) / parts
}

/// The range of an epilogue's outer dim that rows `rows` of product `bi`
/// (each of `n` columns, `m` rows per product) cover: those rows of a
/// `[rows, n]` space, or their elements of a flat one. (Also where a
/// product split over threads runs its epilogue on each block of rows.)
pub fn epilogue_range(
    kernel: &LoopKernel,
    (m, n): (usize, usize),
    bi: usize,
    rows: Range<usize>,
) -> Range<usize> {
    match kernel.dims.len() == 2 {
        true => bi * m + rows.start..bi * m + rows.end,
        false => (bi * m + rows.start) * n..(bi * m + rows.end) * n,
    }
}

/// The blocks of `b` that part `t` of `parts` copies.
pub fn copy_part(b: &super::Blocks, t: usize, parts: usize) -> super::Blocks {
    let r = share(b.count, t, parts);
    super::Blocks {
        count: r.len(),
        src_at: b.src_at + r.start * b.src_stride,
        dst_at: b.dst_at + r.start * b.dst_stride,
        ..*b
    }
}

/// Why a body cannot be cut into independent parts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotIndependent(pub String);

/// Which parts read and wrote each element of a written buffer.
struct Touched {
    read: Vec<u8>,
    written: Vec<u8>,
}

/// The simulation of one step of the loop.
struct Check {
    /// Per buffer (by index), its touches where a step of the body
    /// writes it; none for the buffers the body only reads.
    touched: Vec<Option<Touched>>,
    budget: usize,
    step: usize,
}

/// One access of a loop kernel over its iteration space: its buffer, the
/// element it reaches at the space's first point, its strides.
struct Stream<'a> {
    buf: BufId,
    at: usize,
    strides: &'a [i64],
    write: bool,
}

impl Check {
    /// Part `t` reads (or writes) element `e` of `b`.
    fn touch(&mut self, b: BufId, e: usize, t: usize, write: bool) -> Result<(), NotIndependent> {
        let Some(tb) = self.touched[b.index()].as_mut() else {
            return Ok(()); // read only in the body
        };
        let (Some(r), Some(w)) = (tb.read.get_mut(e), tb.written.get_mut(e)) else {
            return Err(NotIndependent(format!(
                "step {} reaches element {e} of {b}, past its end",
                self.step
            )));
        };
        let me = 1u8 << t;
        let others = match write {
            true => (*r | *w) & !me,
            false => *w & !me,
        };
        if others != 0 {
            return Err(NotIndependent(format!(
                "step {} part {t} {} element {e} of {b}, which another part {}",
                self.step,
                if write { "writes" } else { "reads" },
                if *w & !me != 0 { "writes" } else { "reads" },
            )));
        }
        match write {
            true => *w |= me,
            false => *r |= me,
        }
        Ok(())
    }

    /// Charges `n` touches against [`TOUCHES_MAX`].
    fn charge(&mut self, n: usize) -> Result<(), NotIndependent> {
        self.budget = self.budget.checked_sub(n).ok_or_else(|| {
            NotIndependent(format!(
                "the body is too large to check ({TOUCHES_MAX} element accesses at most)"
            ))
        })?;
        Ok(())
    }

    /// Whether buffer `b` is written in the body (its touches count).
    fn written(&self, b: BufId) -> bool {
        self.touched[b.index()].is_some()
    }

    /// Part `t` of a loop kernel over `outer` of its outer dim: its
    /// output `out` and further stores `also` written, its accesses'
    /// buffers `args` read.
    fn kernel(
        &mut self,
        k: &LoopKernel,
        (out, args, also): (BufId, &[BufId], &[BufId]),
        outer: Range<usize>,
        t: usize,
    ) -> Result<(), NotIndependent> {
        let reads = args.iter().enumerate().map(|(a, &buf)| Stream {
            buf,
            at: k.offsets[a],
            strides: &k.accesses[a],
            write: false,
        });
        let writes = std::iter::once(Stream {
            buf: out,
            at: k.out_offset,
            strides: &k.out,
            write: true,
        })
        .chain(k.also.iter().zip(also).map(|(s, &buf)| Stream {
            buf,
            at: s.offset,
            strides: &s.strides,
            write: true,
        }));
        let streams: Vec<Stream> = reads
            .chain(writes)
            .filter(|s| self.written(s.buf))
            .collect();
        let inner: usize = k.dims[1..].iter().product();
        self.charge(
            outer
                .len()
                .saturating_mul(inner)
                .saturating_mul(streams.len()),
        )?;
        // Every point, as runs along the last dim: each stream's first
        // element of the run, then its last stride.
        let last = k.dims.len() - 1;
        let mut idx = vec![0usize; k.dims.len()];
        let rows: usize = outer.len() * k.dims[1..last.max(1)].iter().product::<usize>();
        let run = if last == 0 { 1 } else { k.dims[last] };
        idx[0] = outer.start;
        for _ in 0..rows {
            for s in &streams {
                let start = idx[..last.max(1)]
                    .iter()
                    .zip(s.strides)
                    .fold(s.at as i64, |e, (&i, &st)| e + i as i64 * st);
                let step = if last == 0 { 0 } else { s.strides[last] };
                for j in 0..run as i64 {
                    self.touch(s.buf, (start + j * step) as usize, t, s.write)?;
                }
            }
            // The next run: the dims before the last, the last of them
            // fastest.
            let mut d = last.max(1);
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                if d == 0 || idx[d] < k.dims[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(())
    }
}

/// Whether each step of `body` can be cut into `parts` parts (as this
/// module's documentation says) that share no element one of them
/// writes; the reason when not.
pub fn independent_parts(body: &Schedule, parts: usize) -> Result<(), NotIndependent> {
    let fail = |m: String| Err(NotIndependent(m));
    if !(2..=PARTS_MAX).contains(&parts) {
        return fail(format!("{parts} parts (2 to {PARTS_MAX})"));
    }
    let mut touched: Vec<Option<Touched>> = (0..body.bufs.len()).map(|_| None).collect();
    for (i, step) in body.steps.iter().enumerate() {
        let writes: Vec<BufId> = match step {
            Step::Loop {
                kernel,
                out,
                also,
                init,
                divisor,
                ..
            } => {
                if kernel.reduce.is_some() || init.is_some() || divisor.is_some() {
                    return fail(format!("step {i} is a reduction"));
                }
                if !kernel.splittable() {
                    return fail(format!("step {i}'s kernel cannot be cut"));
                }
                std::iter::once(*out).chain(also.iter().copied()).collect()
            }
            Step::MatMul { out, epilogue, .. } => {
                if epilogue.as_ref().is_some_and(|e| !e.kernel.also.is_empty()) {
                    return fail(format!("step {i}'s epilogue stores further values"));
                }
                std::iter::once(*out)
                    .chain(epilogue.as_ref().map(|e| e.out))
                    .collect()
            }
            Step::Copy { out, .. } => vec![*out],
            _ => {
                return fail(format!(
                    "step {i} is neither a loop kernel, a product nor a block copy"
                ))
            }
        };
        for b in writes {
            touched[b.index()].get_or_insert_with(|| Touched {
                read: vec![0; body.bufs[b]],
                written: vec![0; body.bufs[b]],
            });
        }
    }
    let mut c = Check {
        touched,
        budget: TOUCHES_MAX,
        step: 0,
    };
    for (i, step) in body.steps.iter().enumerate() {
        c.step = i;
        for t in 0..parts {
            match step {
                Step::Loop {
                    kernel,
                    out,
                    args,
                    also,
                    ..
                } => c.kernel(
                    kernel,
                    (*out, args, also),
                    share(kernel.dims[0], t, parts),
                    t,
                )?,
                Step::MatMul {
                    a,
                    b,
                    out,
                    a_offs,
                    b_offs,
                    dims,
                    epilogue,
                } => {
                    let (m, k, n) = (dims.m, dims.k, dims.n);
                    let rows = share(m, t, parts);
                    let at = |base: usize, (r, c): (usize, usize), (rs, cs): (isize, isize)| {
                        (base as isize + r as isize * rs + c as isize * cs) as usize
                    };
                    for (bi, (&ao, &bo)) in a_offs.iter().zip(b_offs).enumerate() {
                        let b_read = if c.written(*b) { k * n } else { 0 };
                        let a_read = if c.written(*a) { rows.len() * k } else { 0 };
                        c.charge(rows.len() * n + a_read + b_read)?;
                        for r in rows.clone() {
                            if a_read > 0 {
                                for kk in 0..k {
                                    c.touch(*a, at(ao, (r, kk), dims.a_rc), t, false)?;
                                }
                            }
                            for j in 0..n {
                                c.touch(*out, bi * m * n + r * n + j, t, true)?;
                            }
                        }
                        if b_read > 0 {
                            for kk in 0..k {
                                for j in 0..n {
                                    c.touch(*b, at(bo, (kk, j), dims.b_rc), t, false)?;
                                }
                            }
                        }
                        if let Some(e) = epilogue {
                            let Epilogue {
                                kernel, out, args, ..
                            } = &**e;
                            let range = epilogue_range(kernel, (m, n), bi, rows.clone());
                            c.kernel(kernel, (*out, args, &[]), range, t)?;
                        }
                    }
                }
                Step::Copy { parts: cp, out } => {
                    for (src, blocks) in cp {
                        let p = copy_part(blocks, t, parts);
                        let streams = if c.written(*src) { 2 } else { 1 };
                        c.charge(p.count * p.len * streams)?;
                        for bl in 0..p.count {
                            for j in 0..p.len {
                                c.touch(*src, p.src_at + bl * p.src_stride + j, t, false)?;
                                c.touch(*out, p.dst_at + bl * p.dst_stride + j, t, true)?;
                            }
                        }
                    }
                }
                _ => return fail(format!("step {i} cannot be cut")),
            }
        }
    }
    Ok(())
}
