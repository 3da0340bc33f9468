//! The interpreter's kernels for the neural-network primitives: window ops
//! on `[N, C, H, W]` tensors (convolution, pooling and their gradients),
//! slicing and concatenation, and row gathers and scatters. Plain loop
//! nests, like [`super::kernels`]; each takes the output shape the node's
//! type gives (with symbols bound), which the typing rules make consistent
//! with the operands. The convolutions run their nest for each sample (the
//! weight gradient: each output channel) on a thread of rayon's pool: the
//! results are those of one thread, bit for bit (see [`by_slices`]).

use crate::ir::PoolOp;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::ops::Range;

/// An index that names no row: not a whole number, or outside `0..len`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BadIndex {
    pub value: f32,
    pub len: usize,
}

/// The row an index names.
fn row(value: f32, len: usize) -> Result<usize, BadIndex> {
    // NaN and ±∞ have a NaN fractional part, so they fail the first test.
    if value.fract() == 0.0 && value >= 0.0 && (value as usize) < len {
        Ok(value as usize)
    } else {
        Err(BadIndex { value, len })
    }
}

fn dims4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

/// The flat offset of `[a, b, c, d]` in a row-major tensor of shape `s`.
fn at(s: [usize; 4], a: usize, b: usize, c: usize, d: usize) -> usize {
    ((a * s[1] + b) * s[2] + c) * s[3] + d
}

/// The input coordinate that output position `o` reads at window offset
/// `k`, or `None` where that falls in the zero padding.
fn src(o: usize, k: usize, stride: usize, padding: usize, len: usize) -> Option<usize> {
    (o * stride + k).checked_sub(padding).filter(|&i| i < len)
}

/// Calls `f(y, x, w)` with the flat offsets of every tap of a convolution
/// — output `[n, o, i, j]`, input `[n, c, i·s + kh − p, j·s + kw − p]`,
/// weight `[o, c, kh, kw]` — skipping taps that fall in the padding, in
/// the order n, o, i, j, c, kh, kw, for the `n` in `ns` and the `o` in
/// `os`. `xs`, `ws` and `ys` are the shapes.
#[allow(clippy::too_many_arguments)]
fn for_each_tap(
    xs: [usize; 4],
    ws: [usize; 4],
    ys: [usize; 4],
    s: usize,
    p: usize,
    ns: Range<usize>,
    os: Range<usize>,
    mut f: impl FnMut(usize, usize, usize),
) {
    for n in ns {
        for o in os.clone() {
            for i in 0..ys[2] {
                for j in 0..ys[3] {
                    let y = at(ys, n, o, i, j);
                    for c in 0..ws[1] {
                        for kh in 0..ws[2] {
                            let Some(h) = src(i, kh, s, p, xs[2]) else {
                                continue;
                            };
                            for kw in 0..ws[3] {
                                if let Some(v) = src(j, kw, s, p, xs[3]) {
                                    f(y, at(xs, n, c, h, v), at(ws, o, c, kh, kw));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y[n, o, i, j] = Σ_{c, kh, kw} x[n, c, i·s + kh − p, j·s + kw − p] ·
/// w[o, c, kh, kw]`, the padding reading as zeros.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: u64, padding: u64, out: &[usize]) -> Tensor {
    let (xs, ws, ys) = (dims4(&x.shape), dims4(&w.shape), dims4(out));
    let (s, p) = (stride as usize, padding as usize);
    let y = by_slices(out, |n, y, base| {
        for_each_tap(xs, ws, ys, s, p, n..n + 1, 0..ys[1], |yi, xi, wi| {
            y[yi - base] += x.data[xi] * w.data[wi];
        });
    });
    Tensor::new(out.to_vec(), y)
}

/// A tensor of shape `out` whose slices along the leading axis are
/// filled independently, in parallel: `fill(k, slice, base)` adds into
/// `slice` the elements whose leading index is `k`, the first of which has
/// the flat offset `base` in the whole tensor.
///
/// Each element is in one slice, and the call that fills it adds its terms
/// in the order the whole loop nest would: the result is the same, bit for
/// bit, as one thread's.
fn by_slices(out: &[usize], fill: impl Fn(usize, &mut [f32], usize) + Sync) -> Vec<f32> {
    let mut t = vec![0.0f32; out.iter().product()];
    let len = out[1..].iter().product::<usize>().max(1);
    t.par_chunks_mut(len)
        .enumerate()
        .for_each(|(k, slice)| fill(k, slice, k * len));
    t
}

/// The gradient of [`conv2d`] with respect to `x`: each `gy[n, o, i, j]`
/// sent back along the weights it was computed with,
/// `gx[n, c, i·s + kh − p, j·s + kw − p] += gy[n, o, i, j] · w[o, c, kh, kw]`.
pub fn conv2d_backward_input(
    gy: &Tensor,
    w: &Tensor,
    stride: u64,
    padding: u64,
    out: &[usize],
) -> Tensor {
    let (xs, ws, ys) = (dims4(out), dims4(&w.shape), dims4(&gy.shape));
    // Sample n of gx takes gradient from sample n of gy alone.
    let (s, p) = (stride as usize, padding as usize);
    let gx = by_slices(out, |n, gx, base| {
        for_each_tap(xs, ws, ys, s, p, n..n + 1, 0..ys[1], |yi, xi, wi| {
            gx[xi - base] += gy.data[yi] * w.data[wi];
        });
    });
    Tensor::new(out.to_vec(), gx)
}

/// The gradient of [`conv2d`] with respect to `w`:
/// `gw[o, c, kh, kw] = Σ_{n, i, j} gy[n, o, i, j] · x[n, c, i·s + kh − p, j·s + kw − p]`.
pub fn conv2d_backward_weight(
    x: &Tensor,
    gy: &Tensor,
    stride: u64,
    padding: u64,
    out: &[usize],
) -> Tensor {
    let (xs, ws, ys) = (dims4(&x.shape), dims4(out), dims4(&gy.shape));
    // Output channel o of gw sums over every sample, in sample order.
    let (s, p) = (stride as usize, padding as usize);
    let gw = by_slices(out, |o, gw, base| {
        for_each_tap(xs, ws, ys, s, p, 0..ys[0], o..o + 1, |yi, xi, wi| {
            gw[wi - base] += gy.data[yi] * x.data[xi];
        });
    });
    Tensor::new(out.to_vec(), gw)
}

/// The flat offset of the first maximal element of window `(i, j)` of
/// channel `(n, c)`; a NaN counts as the maximum, so it propagates (as in
/// `reduce.max`).
fn window_argmax(
    x: &Tensor,
    n: usize,
    c: usize,
    i: usize,
    j: usize,
    size: usize,
    stride: usize,
) -> usize {
    let xs = dims4(&x.shape);
    let mut best = at(xs, n, c, i * stride, j * stride);
    for a in 0..size {
        for b in 0..size {
            let k = at(xs, n, c, i * stride + a, j * stride + b);
            let (v, b) = (x.data[k], x.data[best]);
            if !b.is_nan() && (v > b || v.is_nan()) {
                best = k;
            }
        }
    }
    best
}

/// Max or average over `size × size` windows moved by `stride`.
pub fn pool2d(op: PoolOp, x: &Tensor, size: u64, stride: u64, out: &[usize]) -> Tensor {
    let (xs, os) = (dims4(&x.shape), dims4(out));
    let (k, s) = (size as usize, stride as usize);
    let mut y = vec![0.0f32; out.iter().product()];
    for n in 0..os[0] {
        for c in 0..os[1] {
            for i in 0..os[2] {
                for j in 0..os[3] {
                    y[at(os, n, c, i, j)] = match op {
                        PoolOp::Max => x.data[window_argmax(x, n, c, i, j, k, s)],
                        PoolOp::Avg => {
                            let mut acc = 0.0f32;
                            for a in 0..k {
                                for b in 0..k {
                                    acc += x.data[at(xs, n, c, i * s + a, j * s + b)];
                                }
                            }
                            acc / (k * k) as f32
                        }
                    };
                }
            }
        }
    }
    Tensor::new(out.to_vec(), y)
}

/// The gradient of [`pool2d`] with respect to `x`: max sends each window's
/// `gy` to the window's first maximal element; average spreads `gy / size²`
/// over the window. Overlapping windows add up.
pub fn pool2d_backward(op: PoolOp, x: &Tensor, gy: &Tensor, size: u64, stride: u64) -> Tensor {
    let (xs, gs) = (dims4(&x.shape), dims4(&gy.shape));
    let (k, s) = (size as usize, stride as usize);
    let mut gx = vec![0.0f32; x.len()];
    for n in 0..gs[0] {
        for c in 0..gs[1] {
            for i in 0..gs[2] {
                for j in 0..gs[3] {
                    let g = gy.data[at(gs, n, c, i, j)];
                    match op {
                        PoolOp::Max => gx[window_argmax(x, n, c, i, j, k, s)] += g,
                        PoolOp::Avg => {
                            let share = g / (k * k) as f32;
                            for a in 0..k {
                                for b in 0..k {
                                    gx[at(xs, n, c, i * s + a, j * s + b)] += share;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::new(x.shape.clone(), gx)
}

/// The product of the dims before `axis` and of those after it.
fn outer_inner(shape: &[usize], axis: usize) -> (usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis + 1..].iter().product(),
    )
}

/// Elements `start..end` along `axis`.
pub fn slice(a: &Tensor, axis: usize, start: u64, end: u64) -> Tensor {
    let (outer, inner) = outer_inner(&a.shape, axis);
    let (d, start, end) = (a.shape[axis], start as usize, end as usize);
    let mut out = Vec::with_capacity(outer * (end - start) * inner);
    for o in 0..outer {
        let base = o * d * inner;
        out.extend_from_slice(&a.data[base + start * inner..base + end * inner]);
    }
    let mut shape = a.shape.clone();
    shape[axis] = end - start;
    Tensor::new(shape, out)
}

/// `a` then `b` along `axis`.
pub fn concat(a: &Tensor, b: &Tensor, axis: usize) -> Tensor {
    let (outer, inner) = outer_inner(&a.shape, axis);
    let (ra, rb) = (a.shape[axis] * inner, b.shape[axis] * inner);
    let mut out = Vec::with_capacity(a.len() + b.len());
    for o in 0..outer {
        out.extend_from_slice(&a.data[o * ra..(o + 1) * ra]);
        out.extend_from_slice(&b.data[o * rb..(o + 1) * rb]);
    }
    let mut shape = a.shape.clone();
    shape[axis] += b.shape[axis];
    Tensor::new(shape, out)
}

/// `out[s.., :] = table[indices[s..], :]`.
pub fn gather(table: &Tensor, indices: &Tensor) -> Result<Tensor, BadIndex> {
    let (v, d) = (table.shape[0], table.shape[1]);
    let mut out = Vec::with_capacity(indices.len() * d);
    for &x in &indices.data {
        let r = row(x, v)?;
        out.extend_from_slice(&table.data[r * d..(r + 1) * d]);
    }
    let mut shape = indices.shape.clone();
    shape.push(d);
    Ok(Tensor::new(shape, out))
}

/// `out[indices[s..], :] += values[s.., :]`, into `out` of shape `[n, D]`.
pub fn scatter_add(values: &Tensor, indices: &Tensor, out: &[usize]) -> Result<Tensor, BadIndex> {
    let (n, d) = (out[0], out[1]);
    let mut acc = vec![0.0f32; n * d];
    for (e, &x) in indices.data.iter().enumerate() {
        let r = row(x, n)?;
        for k in 0..d {
            acc[r * d + k] += values.data[e * d + k];
        }
    }
    Ok(Tensor::new(out.to_vec(), acc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::new(shape.to_vec(), data.to_vec())
    }

    fn iota(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::new(shape.to_vec(), (1..=n).map(|i| i as f32).collect())
    }

    #[test]
    fn conv2d_cross_correlates_without_flipping() {
        // x = [[1,2,3],[4,5,6],[7,8,9]], a 2×2 kernel [[1,0],[0,-1]]:
        // y[i][j] = x[i][j] − x[i+1][j+1] = −4 everywhere.
        let x = iota(&[1, 1, 3, 3]);
        let w = t(&[1, 1, 2, 2], &[1., 0., 0., -1.]);
        assert_eq!(conv2d(&x, &w, 1, 0, &[1, 1, 2, 2]).data, vec![-4.; 4]);
        // Stride 2, padding 1: y[i][j] = x[2i−1][2j−1] − x[2i][2j], the
        // padding reading as 0.
        let y = conv2d(&x, &w, 2, 1, &[1, 1, 2, 2]);
        assert_eq!(y.data, vec![-1., -3., -7., 5. - 9.]);
    }

    #[test]
    fn conv2d_sums_over_channels_and_maps_to_outputs() {
        // Two input channels of ones, two 1×1 kernels [1, 2] and [3, −1].
        let x = t(&[1, 2, 1, 2], &[1., 1., 1., 1.]);
        let w = t(&[2, 2, 1, 1], &[1., 2., 3., -1.]);
        assert_eq!(
            conv2d(&x, &w, 1, 0, &[1, 2, 1, 2]).data,
            vec![3., 3., 2., 2.]
        );
    }

    #[test]
    fn conv2d_gradients_are_adjoint_to_the_convolution() {
        // ⟨conv(x, w), gy⟩ = ⟨x, backward_input(gy, w)⟩ = ⟨w, backward_weight(x, gy)⟩
        let x = iota(&[2, 2, 5, 4]);
        let w = Tensor::new(
            vec![3, 2, 3, 2],
            (0..36).map(|i| (i % 7) as f32 - 3.).collect(),
        );
        let out = [2, 3, 3, 3];
        let y = conv2d(&x, &w, 2, 1, &out);
        let gy = Tensor::new(out.to_vec(), (0..54).map(|i| (i % 5) as f32 - 2.).collect());
        let dot = |a: &Tensor, b: &Tensor| -> f32 {
            a.data.iter().zip(&b.data).map(|(p, q)| p * q).sum()
        };
        let gx = conv2d_backward_input(&gy, &w, 2, 1, &[2, 2, 5, 4]);
        let gw = conv2d_backward_weight(&x, &gy, 2, 1, &[3, 2, 3, 2]);
        assert_eq!(dot(&y, &gy), dot(&x, &gx));
        assert_eq!(dot(&y, &gy), dot(&w, &gw));
    }

    #[test]
    fn pooling_and_its_gradient() {
        let x = t(&[1, 1, 2, 4], &[1., 5., 2., 2., 3., 4., 0., -1.]);
        assert_eq!(
            pool2d(PoolOp::Max, &x, 2, 2, &[1, 1, 1, 2]).data,
            vec![5., 2.]
        );
        assert_eq!(
            pool2d(PoolOp::Avg, &x, 2, 2, &[1, 1, 1, 2]).data,
            vec![3.25, 0.75]
        );
        let gy = t(&[1, 1, 1, 2], &[10., 20.]);
        // The second window ties between its two 2s: the first one wins.
        assert_eq!(
            pool2d_backward(PoolOp::Max, &x, &gy, 2, 2).data,
            vec![0., 10., 20., 0., 0., 0., 0., 0.]
        );
        assert_eq!(
            pool2d_backward(PoolOp::Avg, &x, &gy, 2, 2).data,
            vec![2.5, 2.5, 5., 5., 2.5, 2.5, 5., 5.]
        );
        // Overlapping windows (stride 1) add up.
        let g = pool2d_backward(PoolOp::Max, &x, &t(&[1, 1, 1, 3], &[1., 1., 1.]), 2, 1);
        assert_eq!(g.data, vec![0., 2., 1., 0., 0., 0., 0., 0.]);
    }

    #[test]
    fn max_pooling_propagates_nan() {
        let x = t(&[1, 1, 1, 2], &[1., f32::NAN]);
        assert!(pool2d(PoolOp::Max, &x, 1, 1, &[1, 1, 1, 2]).data[1].is_nan());
        let x = t(&[1, 1, 2, 2], &[1., f32::NAN, 3., 2.]);
        assert!(pool2d(PoolOp::Max, &x, 2, 2, &[1, 1, 1, 1]).data[0].is_nan());
    }

    #[test]
    fn slice_and_concat_undo_each_other() {
        let a = iota(&[2, 3, 2]);
        let left = slice(&a, 1, 0, 1);
        let right = slice(&a, 1, 1, 3);
        assert_eq!(left, t(&[2, 1, 2], &[1., 2., 7., 8.]));
        assert_eq!(right.shape, vec![2, 2, 2]);
        assert_eq!(concat(&left, &right, 1), a);
        assert_eq!(concat(&a, &a, 0).data[12..], a.data[..]);
    }

    #[test]
    fn gather_and_scatter_add_move_rows() {
        let table = t(&[3, 2], &[1., 2., 3., 4., 5., 6.]);
        let idx = t(&[2, 2], &[2., 0., 0., 1.]);
        let g = gather(&table, &idx).expect("indices in range");
        assert_eq!(g, t(&[2, 2, 2], &[5., 6., 1., 2., 1., 2., 3., 4.]));
        let s = scatter_add(&g, &idx, &[3, 2]).expect("indices in range");
        assert_eq!(s.data, vec![2., 4., 3., 4., 5., 6.]);
    }

    #[test]
    fn bad_indices_are_errors() {
        let table = t(&[3, 1], &[1., 2., 3.]);
        for bad in [3., -1., 0.5, f32::NAN, f32::INFINITY] {
            let e = gather(&table, &t(&[1], &[bad])).expect_err("a bad index");
            assert_eq!(e.len, 3);
            let e = scatter_add(&table, &t(&[3], &[0., bad, 1.]), &[3, 1]).expect_err("bad");
            assert_eq!(e.len, 3);
        }
    }
}
