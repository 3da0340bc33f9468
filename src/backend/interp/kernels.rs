//! The interpreter's kernels: one plain loop nest per primitive.

use crate::ir::{BinaryOp, CmpOp, Dist, ReduceOp, UnaryOp};
use crate::tensor::{strides, Tensor};

/// splitmix64's finaliser: a well-mixed 64-bit hash of `z`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of the random draws ([`crate::ir::RNG_KEY_INPUT`]) for a run's
/// `seed` and a `counter` (training's step): the seed folded to 24 bits
/// and the counter modulo 2²⁴, so both are exact in f32.
pub fn rng_key(seed: u64, counter: u64) -> Tensor {
    const MASK: u64 = (1 << 24) - 1;
    Tensor::new(
        vec![2],
        vec![(mix(seed) & MASK) as f32, (counter & MASK) as f32],
    )
}

/// The values of a random draw: Philox4x32-10 of each element's index
/// under the draw's salt and key ([`crate::rng`], the same on every
/// backend).
pub fn random(dist: Dist, salt: u32, key: &Tensor, out_shape: &[usize]) -> Tensor {
    let n: usize = out_shape.iter().product();
    let mut data = vec![0.0; n];
    crate::rng::fill(dist, salt, crate::rng::key(&key.data), &mut data);
    Tensor::new(out_shape.to_vec(), data)
}

pub fn unary(op: UnaryOp, a: &Tensor) -> Tensor {
    let f = |x: f32| match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Tanh => x.tanh(),
        // 1/(1 + inf) = 0 and 1/(1 + 0) = 1 at the ends.
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    };
    Tensor::new(a.shape.clone(), a.data.iter().map(|&x| f(x)).collect())
}

/// NaN-propagating maximum and minimum (f32::max would drop a NaN).
fn max_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

fn min_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || a < b {
        a
    } else {
        b
    }
}

pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Tensor {
    let f = |x: f32, y: f32| match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Pow => x.powf(y),
        BinaryOp::Max => max_nan(x, y),
        BinaryOp::Min => min_nan(x, y),
    };
    Tensor::new(
        a.shape.clone(),
        a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect(),
    )
}

/// [`Op::AdamMoment`](crate::ir::Op::AdamMoment): `β·old + (1 − β)·new`
/// (`new` squared first when `square`), rounded op by op.
pub fn adam_moment(beta: f32, square: bool, old: &Tensor, new: &Tensor) -> Tensor {
    let kept = 1.0 - beta;
    let data = old
        .data
        .iter()
        .zip(&new.data)
        .map(|(&o, &n)| {
            let n = if square { n * n } else { n };
            beta * o + kept * n
        })
        .collect();
    Tensor::new(old.shape.clone(), data)
}

/// [`Op::AdamStep`](crate::ir::Op::AdamStep): `w − lr·(m̂ / (√v̂ + ε))`,
/// `m̂ = m / c₁` and `v̂ = v / c₂` with `correction`, rounded op by op.
pub fn adam_step(
    w: &Tensor,
    m: &Tensor,
    v: &Tensor,
    lr: &Tensor,
    correction: Option<(&Tensor, &Tensor)>,
    eps: f32,
) -> Tensor {
    let data = (0..w.data.len())
        .map(|i| {
            let (mh, vh) = match correction {
                Some((c1, c2)) => (m.data[i] / c1.data[i], v.data[i] / c2.data[i]),
                None => (m.data[i], v.data[i]),
            };
            w.data[i] - lr.data[i] * (mh / (vh.sqrt() + eps))
        })
        .collect();
    Tensor::new(w.shape.clone(), data)
}

pub fn compare(op: CmpOp, a: &Tensor, b: &Tensor) -> Tensor {
    let data = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| if op.holds(x, y) { 1.0 } else { 0.0 })
        .collect();
    Tensor::new(a.shape.clone(), data)
}

pub fn select(c: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
    let data = c
        .data
        .iter()
        .zip(a.data.iter().zip(&b.data))
        .map(|(&c, (&x, &y))| if c != 0.0 { x } else { y })
        .collect();
    Tensor::new(a.shape.clone(), data)
}

/// Calls `f(flat_index, multi_index)` for every element of `shape`, in
/// row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let total: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..total {
        f(flat, &idx);
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

pub fn reduce(op: ReduceOp, a: &Tensor, axes: &[usize]) -> Tensor {
    let out_shape: Vec<usize> = a
        .shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect();
    let out_strides = strides(&out_shape);
    let start = if op == ReduceOp::Max {
        f32::NEG_INFINITY
    } else {
        0.0
    };
    let mut out = vec![start; out_shape.iter().product()];
    for_each_index(&a.shape, |flat, idx| {
        let mut o = 0;
        let mut k = 0;
        for (ax, &i) in idx.iter().enumerate() {
            if !axes.contains(&ax) {
                o += i * out_strides[k];
                k += 1;
            }
        }
        let x = a.data[flat];
        out[o] = match op {
            ReduceOp::Sum | ReduceOp::Mean => out[o] + x,
            ReduceOp::Max => max_nan(x, out[o]),
        };
    });
    if op == ReduceOp::Mean {
        let count: usize = axes.iter().map(|&ax| a.shape[ax]).product();
        for v in &mut out {
            *v /= count as f32;
        }
    }
    Tensor::new(out_shape, out)
}

pub fn matmul(a: &Tensor, b: &Tensor) -> Tensor {
    let r = a.shape.len();
    let (m, k, n) = (a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]);
    let batch: usize = a.shape[..r - 2].iter().product();
    let mut out = vec![0.0f32; batch * m * n];
    for bi in 0..batch {
        let (ao, bo, oo) = (bi * m * k, bi * k * n, bi * m * n);
        // i-p-j order: the inner loop walks rows of `b` and `out`
        // contiguously. Each out[i][j] still sums over p in order.
        for i in 0..m {
            let row = &mut out[oo + i * n..oo + (i + 1) * n];
            for p in 0..k {
                let x = a.data[ao + i * k + p];
                let brow = &b.data[bo + p * n..bo + (p + 1) * n];
                for (o, &y) in row.iter_mut().zip(brow) {
                    *o += x * y;
                }
            }
        }
    }
    let mut shape = a.shape[..r - 1].to_vec();
    shape.push(n);
    Tensor::new(shape, out)
}

pub fn transpose(a: &Tensor, perm: &[usize]) -> Tensor {
    let out_shape: Vec<usize> = perm.iter().map(|&p| a.shape[p]).collect();
    let in_strides = strides(&a.shape);
    let mut out = Vec::with_capacity(a.len());
    for_each_index(&out_shape, |_, idx| {
        let src: usize = idx.iter().zip(perm).map(|(&i, &p)| i * in_strides[p]).sum();
        out.push(a.data[src]);
    });
    Tensor::new(out_shape, out)
}

pub fn broadcast(a: &Tensor, out_shape: &[usize]) -> Tensor {
    let offset = out_shape.len() - a.shape.len();
    let in_strides = strides(&a.shape);
    let mut out = Vec::with_capacity(out_shape.iter().product());
    for_each_index(out_shape, |_, idx| {
        let mut src = 0;
        for (ax, &d) in a.shape.iter().enumerate() {
            if d != 1 {
                src += idx[ax + offset] * in_strides[ax];
            }
        }
        out.push(a.data[src]);
    });
    Tensor::new(out_shape.to_vec(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::new(shape.to_vec(), data.to_vec())
    }

    #[test]
    fn matmul_multiplies_batches() {
        let a = t(&[2, 1, 2], &[1., 2., 3., 4.]);
        let b = t(&[2, 2, 1], &[5., 6., 7., 8.]);
        assert_eq!(matmul(&a, &b), t(&[2, 1, 1], &[17., 53.]));
    }

    #[test]
    fn reduce_over_each_axis() {
        let a = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(reduce(ReduceOp::Sum, &a, &[0]), t(&[3], &[5., 7., 9.]));
        assert_eq!(reduce(ReduceOp::Max, &a, &[1]), t(&[2], &[3., 6.]));
        assert_eq!(reduce(ReduceOp::Mean, &a, &[0, 1]), t(&[], &[3.5]));
    }

    #[test]
    fn broadcast_and_transpose_move_elements() {
        let a = t(&[2, 1], &[1., 2.]);
        assert_eq!(
            broadcast(&a, &[2, 2, 3]).data,
            vec![1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2.]
        );
        let m = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(
            transpose(&m, &[1, 0]),
            t(&[3, 2], &[1., 4., 2., 5., 3., 6.])
        );
    }

    #[test]
    fn max_propagates_nan() {
        let a = t(&[2], &[f32::NAN, 1.0]);
        assert!(reduce(ReduceOp::Max, &a, &[0]).data[0].is_nan());
    }
}
