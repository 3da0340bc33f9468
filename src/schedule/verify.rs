//! The schedule verifier. The backends index their buffers without bounds
//! checks (compiled kernels, GEMMs through raw pointers), so everything
//! they rely on is checked here, once, before any of it runs:
//!
//! 1. every buffer a step names exists;
//! 2. every loop kernel's accesses (and its outputs) stay inside their
//!    buffers over the whole iteration space, with strides that are not
//!    negative; a kernel's further outputs are not buffers it reads, and
//!    write no place its output or another of them writes; a reduction
//!    has none; it reads its output's buffer only at the point it writes
//!    or at places it never writes;
//! 3. every GEMM's operands, at every offset, lie inside their buffers,
//!    its outputs fit, and the output is neither operand;
//! 4. transposes, convolutions, poolings and block copies read and write
//!    inside their buffers, never writing what they read;
//! 5. every update's buffer belongs to no input, parameter, constant or
//!    other update (it is swapped into its parameter after a step);
//! 6. a loop's body verifies, and its operands fit the body's slots;
//! 7. no step writes a leaf's buffer (an input, parameter or constant):
//!    the backends may bind those to storage outside the program, read
//!    only (a library's weights, shared by its execution contexts; a
//!    loop body's operands, the loop's own buffers).
//!
//! A failure is a compiler bug: [`build`](super::build) runs this in debug
//! builds and tests, and reports one as an internal error.

use super::{BufId, Schedule, Step};
use std::collections::HashSet;

/// What the verifier found wrong, with the step it is in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("step {step}: {message}")]
pub struct VerifyError {
    /// The index of the step (or `usize::MAX` for the leaves and updates).
    pub step: usize,
    pub message: String,
}

/// The highest element an access of `strides` reaches over `dims` from
/// offset `at`, or `None` when the space is empty (nothing is read).
fn reach(at: usize, dims: &[usize], strides: &[i64]) -> Result<Option<usize>, String> {
    if dims.contains(&0) {
        return Ok(None);
    }
    let mut hi = at as u128;
    for (&d, &s) in dims.iter().zip(strides) {
        if s < 0 {
            return Err(format!("negative stride {s}"));
        }
        hi += (d as u128 - 1) * s as u128;
    }
    Ok(Some(usize::try_from(hi).unwrap_or(usize::MAX)))
}

/// Whether two stores over `dims` (strides, first element) write no
/// element in common. Proven only where they have the same strides: the
/// dim of the largest stride `s` steps over rows, the others reach less
/// than `e <= s` elements into a row, so each store writes inside
/// `[at + k·s, at + k·s + e)`, and two of them are apart when their
/// starts are at least `e` apart modulo `s` (either way round). Anything
/// else counts as overlapping.
fn apart(dims: &[usize], (a, at_a): (&[i64], usize), (b, at_b): (&[i64], usize)) -> bool {
    if dims.contains(&0) {
        return true;
    }
    if a != b {
        return false;
    }
    let moving: Vec<(usize, u128)> = dims
        .iter()
        .zip(a)
        .filter(|&(&d, _)| d > 1)
        .map(|(&d, &s)| (d, s.max(0) as u128))
        .collect();
    let Some(outer) = (0..moving.len()).max_by_key(|&i| moving[i].1) else {
        return at_a != at_b;
    };
    let row = moving[outer].1;
    let reach: u128 = 1 + moving
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != outer)
        .map(|(_, &(d, s))| (d as u128 - 1) * s)
        .sum::<u128>();
    if row == 0 || reach > row {
        return false;
    }
    let gap = (at_b as u128 + row - at_a as u128 % row) % row;
    gap >= reach && row - gap >= reach
}

impl Schedule {
    /// Checks the invariants listed in this module's documentation.
    pub fn verify(&self) -> Result<(), VerifyError> {
        let leaves: HashSet<BufId> = self.leaves().collect();
        for (i, step) in self.steps.iter().enumerate() {
            let at = |message| VerifyError { step: i, message };
            self.verify_step(step).map_err(at)?;
            if let Some(b) = step.writes().into_iter().find(|b| leaves.contains(b)) {
                return Err(at(format!("writes {b}, the buffer of a leaf")));
            }
        }
        self.verify_updates().map_err(|message| VerifyError {
            step: usize::MAX,
            message,
        })
    }

    fn len(&self, b: BufId) -> Result<usize, String> {
        self.bufs
            .get(b)
            .copied()
            .ok_or_else(|| format!("{b} does not exist"))
    }

    /// `[at, at + count)` of `b` — or the reach of an access — inside it.
    fn inside(&self, b: BufId, last: Option<usize>, what: &str) -> Result<(), String> {
        let len = self.len(b)?;
        match last {
            Some(hi) if hi >= len => Err(format!(
                "{what} reaches element {hi} of {b}, which holds {len}"
            )),
            _ => Ok(()),
        }
    }

    fn verify_step(&self, step: &Step) -> Result<(), String> {
        let span = |at: usize, n: usize| (n > 0).then(|| at + n - 1);
        let distinct = |out: BufId, ins: &[BufId], what: &str| match ins.contains(&out) {
            true => Err(format!("{what} writes {out}, which it also reads")),
            false => Ok(()),
        };
        match step {
            Step::Loop {
                kernel,
                out,
                args,
                also,
                init,
                divisor,
            } => {
                if kernel.accesses.len() != args.len() || kernel.also.len() != also.len() {
                    return Err(format!(
                        "a loop kernel with {} accesses and {} further outputs is given {} and {} buffers",
                        kernel.accesses.len(),
                        kernel.also.len(),
                        args.len(),
                        also.len()
                    ));
                }
                let space = &kernel.dims;
                if space.is_empty()
                    || kernel.out.len() != space.len()
                    || kernel.accesses.iter().any(|a| a.len() != space.len())
                    || kernel.offsets.len() != args.len()
                    || kernel.also.iter().any(|a| a.strides.len() != space.len())
                {
                    return Err("a loop kernel's strides do not match its dimensions".into());
                }
                if !also.is_empty() && kernel.reduce.is_some() {
                    return Err("a reduction stores further values".into());
                }
                for (j, (&b, st)) in also.iter().zip(&kernel.also).enumerate() {
                    if st.expr >= kernel.exprs.len() {
                        return Err(format!(
                            "further output {j} stores a value it does not compute"
                        ));
                    }
                    distinct(b, args, "a loop kernel's further output")?;
                    // Several stores into one buffer (parts of one
                    // concatenation) write places apart.
                    let stores = std::iter::once((*out, &kernel.out, kernel.out_offset)).chain(
                        also[..j]
                            .iter()
                            .zip(&kernel.also)
                            .map(|(&b, s)| (b, &s.strides, s.offset)),
                    );
                    for (other, strides, offset) in stores {
                        if other == b && !apart(space, (&st.strides, st.offset), (strides, offset))
                        {
                            return Err(format!("a loop kernel writes a place of {b} twice"));
                        }
                    }
                    self.inside(
                        b,
                        reach(st.offset, space, &st.strides)?,
                        &format!("further output {j}"),
                    )?;
                }
                for (k, (&b, st)) in args.iter().zip(&kernel.accesses).enumerate() {
                    let at = kernel.offsets[k];
                    self.inside(b, reach(at, space, st)?, &format!("access {k}"))?;
                    // The output's buffer is read only at the point being
                    // written (a GEMM's epilogue reads its accumulator) or
                    // at places never written (another part of one
                    // concatenation): the JIT loads a value that stays put
                    // along a row once per row.
                    let same = st == &kernel.out && at == kernel.out_offset;
                    if b == *out
                        && !same
                        && !apart(space, (st, at), (&kernel.out, kernel.out_offset))
                    {
                        return Err(format!(
                            "access {k} reads places of {b} the kernel writes at other points"
                        ));
                    }
                }
                if (init.is_some() || divisor.is_some()) && kernel.out_offset != 0 {
                    // A reduction's start and its mean's division cover
                    // the whole output buffer.
                    return Err("a reduction writes its output from an offset".into());
                }
                self.inside(
                    *out,
                    reach(kernel.out_offset, space, &kernel.out)?,
                    "the output",
                )
            }
            Step::MatMul {
                a,
                b,
                out,
                a_offs,
                b_offs,
                dims,
                epilogue,
            } => {
                if a_offs.len() != b_offs.len() {
                    return Err("a GEMM's operands have different batch counts".into());
                }
                distinct(*out, &[*a, *b], "a GEMM")?;
                let (m, k, n) = (dims.m, dims.k, dims.n);
                let stride = |rc: (isize, isize)| -> Result<[i64; 2], String> {
                    Ok([rc.0 as i64, rc.1 as i64])
                };
                for (&ao, &bo) in a_offs.iter().zip(b_offs) {
                    self.inside(*a, reach(ao, &[m, k], &stride(dims.a_rc)?)?, "operand a")?;
                    self.inside(*b, reach(bo, &[k, n], &stride(dims.b_rc)?)?, "operand b")?;
                }
                self.inside(*out, span(0, a_offs.len() * m * n), "the GEMM's output")?;
                if let Some(e) = epilogue {
                    self.verify_step(&Step::Loop {
                        kernel: e.kernel.clone(),
                        out: e.out,
                        args: e.args.clone(),
                        also: Vec::new(),
                        init: None,
                        divisor: None,
                    })
                    .map_err(|m| format!("in the GEMM's epilogue: {m}"))?;
                    let total = a_offs.len() * dims.m * dims.n;
                    let whole: usize = e.kernel.dims.iter().product();
                    if e.args.get(e.acc) != Some(out)
                        || e.kernel.accesses[e.acc] != e.kernel.out
                        || e.kernel.offsets[e.acc] != 0
                        || e.kernel.out_offset != 0
                        || whole != total
                        || e.out == *a
                        || e.out == *b
                    {
                        return Err("a GEMM's epilogue does not walk its output".into());
                    }
                }
                Ok(())
            }
            Step::Transpose {
                src,
                dst,
                shape,
                perm,
            } => {
                let n: usize = shape.iter().product();
                let mut sorted = perm.clone();
                sorted.sort_unstable();
                if sorted != (0..shape.len()).collect::<Vec<_>>() || shape.len() > 8 {
                    return Err(format!("{perm:?} is not a permutation of rank ≤ 8"));
                }
                distinct(*dst, &[*src], "a transpose")?;
                self.inside(*src, span(0, n), "the transpose's input")?;
                self.inside(*dst, span(0, n), "the transpose's output")
            }
            Step::Conv {
                pass,
                geo,
                a,
                b,
                out,
            } => {
                use super::ConvPass::*;
                distinct(*out, &[*a, *b], "a convolution")?;
                let x = geo.n * geo.c * geo.h * geo.w;
                let w = geo.o * geo.c * geo.kh * geo.kw;
                let y = geo.n * geo.o * geo.oh * geo.ow;
                let (la, lb, lo) = match pass {
                    Forward => (x, w, y),
                    BackInput => (y, w, x),
                    BackWeight => (x, y, w),
                };
                let oh = (geo.h + 2 * geo.pad)
                    .checked_sub(geo.kh)
                    .map(|d| d / geo.stride.max(1) + 1);
                let ow = (geo.w + 2 * geo.pad)
                    .checked_sub(geo.kw)
                    .map(|d| d / geo.stride.max(1) + 1);
                if geo.stride == 0 || oh != Some(geo.oh) || ow != Some(geo.ow) {
                    return Err(format!("inconsistent convolution geometry {geo:?}"));
                }
                self.inside(*a, span(0, la), "the convolution's first operand")?;
                self.inside(*b, span(0, lb), "the convolution's second operand")?;
                self.inside(*out, span(0, lo), "the convolution's output")
            }
            Step::Pool { geo, x, gy, out } => {
                let (xl, yl) = (geo.planes * geo.h * geo.w, geo.planes * geo.oh * geo.ow);
                if geo.stride == 0 || geo.size == 0 {
                    return Err(format!("inconsistent pooling geometry {geo:?}"));
                }
                let fits = |o: usize, len: usize| o == 0 || (o - 1) * geo.stride + geo.size <= len;
                if !fits(geo.oh, geo.h) || !fits(geo.ow, geo.w) {
                    return Err(format!("a pooling window leaves its input: {geo:?}"));
                }
                let mut reads = vec![*x];
                reads.extend(*gy);
                distinct(*out, &reads, "a pooling")?;
                self.inside(*x, span(0, xl), "the pooling's input")?;
                match gy {
                    Some(gy) => {
                        self.inside(*gy, span(0, yl), "the pooling's gradient")?;
                        self.inside(*out, span(0, xl), "the pooling gradient's output")
                    }
                    None => self.inside(*out, span(0, yl), "the pooling's output"),
                }
            }
            Step::Copy { parts, out } => {
                for (src, bl) in parts {
                    distinct(*out, &[*src], "a block copy")?;
                    if bl.count == 0 || bl.len == 0 {
                        continue;
                    }
                    let last = |at: usize, stride: usize| at + (bl.count - 1) * stride + bl.len - 1;
                    self.inside(
                        *src,
                        Some(last(bl.src_at, bl.src_stride)),
                        "a copy's source",
                    )?;
                    self.inside(
                        *out,
                        Some(last(bl.dst_at, bl.dst_stride)),
                        "a copy's target",
                    )?;
                }
                Ok(())
            }
            Step::Random {
                key, out, count, ..
            } => {
                distinct(*out, &[*key], "a random draw")?;
                self.inside(*key, span(0, 2), "the draw's key")?;
                self.inside(*out, span(0, *count), "the draw")
            }
            Step::Rows(r) => {
                distinct(r.out, &[r.src, r.idx], "a gather or scatter")?;
                let (table, list) = (r.rows * r.width, r.count * r.width);
                let (src, out) = if r.scatter {
                    (list, table)
                } else {
                    (table, list)
                };
                self.inside(r.idx, span(0, r.count), "the indices")?;
                self.inside(r.src, span(0, src), "the rows read")?;
                self.inside(r.out, span(0, out), "the rows written")
            }
            Step::Scan(sc) => {
                sc.body
                    .verify()
                    .map_err(|e| format!("in the loop's body: {e}"))?;
                let mut reads = vec![sc.init];
                reads.extend(&sc.xs);
                reads.extend(&sc.args);
                distinct(sc.out, &reads, "a loop")?;
                if sc.slots.len() != 1 + sc.xs.len() + sc.args.len()
                    || sc.step_lens.len() != sc.xs.len()
                {
                    return Err("a loop's operands do not match its body's inputs".into());
                }
                let results = if sc.sum { 1 } else { sc.steps };
                self.inside(sc.init, span(0, sc.carry_len), "the loop's initial carry")?;
                self.inside(
                    sc.out,
                    span(0, results * sc.carry_len),
                    "the loop's results",
                )?;
                for (&x, &len) in sc.xs.iter().zip(&sc.step_lens) {
                    self.inside(x, span(0, sc.steps * len), "a loop's sequence")?;
                }
                let lens = std::iter::once(sc.carry_len)
                    .chain(sc.step_lens.iter().copied())
                    .chain(
                        sc.args
                            .iter()
                            .map(|&a| self.bufs.get(a).copied().unwrap_or(0)),
                    );
                for (slot, len) in sc.slots.iter().zip(lens) {
                    if let Some(b) = slot {
                        if sc.body.len(*b)? != len {
                            return Err(format!("the body's {b} does not hold its operand"));
                        }
                    }
                }
                let result = sc
                    .body
                    .outputs
                    .first()
                    .ok_or("a loop body without a result")?;
                if sc.body.len(*result)? != sc.carry_len {
                    return Err("the body's result is not the size of the carry".into());
                }
                Ok(())
            }
            Step::Host { node, out } => {
                let n: usize = self.shapes[*node].iter().product();
                if self.len(*out)? != n {
                    return Err(format!("a host step's output {out} does not hold {node}"));
                }
                Ok(())
            }
        }
    }

    /// The buffers of the inputs, parameters and constants.
    fn leaves(&self) -> impl Iterator<Item = BufId> + '_ {
        let inputs = self.inputs.iter().map(|&(_, b)| b);
        let params = self.params.iter().map(|&(_, b)| b);
        inputs
            .chain(params)
            .chain(self.consts.iter().map(|&(_, b)| b))
    }

    fn verify_updates(&self) -> Result<(), String> {
        let mut taken: HashSet<BufId> = self.leaves().collect();
        for &(p, b) in &self.updates {
            self.len(b)?;
            if !taken.insert(b) {
                return Err(format!(
                    "the update of parameter {p} would take {b}, which belongs to a leaf or another update"
                ));
            }
        }
        for &b in &self.outputs {
            self.len(b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::apart;

    /// Every element a store of `strides` from `at` writes over `dims`.
    fn places(dims: &[usize], strides: &[i64], at: usize) -> Vec<usize> {
        let mut out = vec![at];
        for (&d, &s) in dims.iter().zip(strides) {
            out = out
                .iter()
                .flat_map(|&p| (0..d).map(move |i| p + i * s as usize))
                .collect();
        }
        out
    }

    #[test]
    fn stores_are_apart_only_where_they_write_no_element_in_common() {
        // Columns of a [4, 9] join (parts of 3), a single point, rows in
        // reverse order of their strides, and starts a row apart.
        let cases: [(&[usize], &[i64]); 4] = [
            (&[4, 3], &[9, 1]),
            (&[1], &[1]),
            (&[3, 2], &[1, 8]),
            (&[2, 3], &[10, 2]),
        ];
        for (dims, strides) in cases {
            for a in 0..20 {
                for b in 0..20 {
                    let (pa, pb) = (places(dims, strides, a), places(dims, strides, b));
                    let disjoint = !pa.iter().any(|p| pb.contains(p));
                    if apart(dims, (strides, a), (strides, b)) {
                        assert!(disjoint, "{dims:?} {strides:?} from {a} and {b}");
                    }
                }
            }
        }
        // The join's parts are proven apart; other strides never are.
        assert!(apart(&[4, 3], (&[9, 1], 0), (&[9, 1], 3)));
        assert!(apart(&[4, 3], (&[9, 1], 6), (&[9, 1], 0)));
        assert!(!apart(&[4, 3], (&[9, 1], 0), (&[9, 1], 2)));
        assert!(!apart(&[4, 3], (&[9, 1], 0), (&[3, 1], 3)));
        assert!(apart(&[0, 3], (&[9, 1], 0), (&[9, 1], 0)));
    }
}
