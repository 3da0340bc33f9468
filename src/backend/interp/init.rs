//! Parameter initialisation. Each parameter draws from its own PCG stream,
//! seeded by its explicit `seed` or by the run's seed mixed with its name,
//! so adding a parameter does not change the others' values.
//!
//! Fan-in and fan-out follow the `x @ w` convention: a weight `[in, out]`
//! has fan-in `in` and fan-out `out`; a rank-1 tensor `[n]` has both `n`;
//! for rank > 2 (`[out_c, in_c, k…]`, convolution kernels) fan-in is
//! `in_c · Πk` and fan-out `out_c · Πk`.
//!
//! - xavier/glorot uniform: U(−a, a), a = √(6 / (fan_in + fan_out))
//! - xavier/glorot normal:  N(0, 2 / (fan_in + fan_out))
//! - he/kaiming uniform:    U(−a, a), a = √(6 / fan_in)
//! - he/kaiming normal:     N(0, 2 / fan_in)

use crate::ir::{Graph, Init, ParamId};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_pcg::Pcg64;

/// The seed a parameter's stream starts from.
pub fn param_seed(run_seed: u64, name: &str, explicit: Option<u64>) -> u64 {
    if let Some(s) = explicit {
        return s;
    }
    // FNV-1a over the name, then mixed with the run's seed (splitmix64).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ run_seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fans(shape: &[usize]) -> (f32, f32) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f32, *n as f32),
        [i, o] => (*i as f32, *o as f32),
        [o, i, rest @ ..] => {
            let r: usize = rest.iter().product();
            ((i * r) as f32, (o * r) as f32)
        }
    }
}

/// First values of every parameter of `g`.
pub fn init_params(g: &Graph, run_seed: u64) -> SecondaryMap<ParamId, Tensor> {
    let mut out = SecondaryMap::new();
    for (id, p) in g.params.iter() {
        let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
        let n: usize = shape.iter().product();
        let mut rng = Pcg64::seed_from_u64(param_seed(run_seed, &p.name, p.seed));
        let (fan_in, fan_out) = fans(&shape);
        let mut uniform =
            |a: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0f32..=1.0) * a).collect() };
        let data = match &p.init {
            Init::Constant(v) => vec![*v; n],
            Init::Tensor(c) => g.consts[*c].data.clone(),
            Init::Uniform { low, high } => (0..n)
                .map(|_| low + (high - low) * rng.gen::<f32>())
                .collect(),
            Init::Normal { mean, std } => normal(&mut rng, n, *mean, *std),
            Init::XavierUniform => uniform((6.0 / (fan_in + fan_out)).sqrt()),
            Init::HeUniform => uniform((6.0 / fan_in).sqrt()),
            Init::XavierNormal => normal(&mut rng, n, 0.0, (2.0 / (fan_in + fan_out)).sqrt()),
            Init::HeNormal => normal(&mut rng, n, 0.0, (2.0 / fan_in).sqrt()),
        };
        out[id] = Tensor::new(shape, data);
    }
    out
}

fn normal(rng: &mut Pcg64, n: usize, mean: f32, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| mean + std * rng.sample::<f32, _>(StandardNormal))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_name_and_run() {
        assert_ne!(param_seed(0, "w1", None), param_seed(0, "w2", None));
        assert_ne!(param_seed(0, "w1", None), param_seed(1, "w1", None));
        assert_eq!(param_seed(5, "w1", Some(9)), 9);
    }

    fn graph_with(init: Init, shape: Vec<u64>) -> Graph {
        let mut g = Graph::new();
        g.params.push(crate::ir::ParamInfo {
            name: "w".into(),
            role: crate::ir::Role::Trainable,
            shape,
            init,
            seed: Some(11),
            span: Default::default(),
        });
        g
    }

    fn stats(t: &Tensor) -> (f32, f32, f32, f32) {
        let n = t.data.len() as f32;
        let mean = t.data.iter().sum::<f32>() / n;
        let var = t.data.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n;
        let lo = t.data.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = t.data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (mean, var.sqrt(), lo, hi)
    }

    #[test]
    fn distributions_have_their_stated_moments_and_bounds() {
        let first = |init, shape| {
            init_params(&graph_with(init, shape), 0)
                .values()
                .next()
                .cloned()
                .expect("one param")
        };
        let (m, s, lo, hi) = stats(&first(
            Init::Uniform {
                low: -0.5,
                high: 1.5,
            },
            vec![200, 100],
        ));
        assert!(
            lo >= -0.5 && hi <= 1.5 && (m - 0.5).abs() < 0.02,
            "uniform: {m} {lo} {hi}"
        );
        assert!((s - 2.0 / 12f32.sqrt()).abs() < 0.02, "uniform std {s}");
        let (m, s, _, _) = stats(&first(
            Init::Normal {
                mean: 1.0,
                std: 0.5,
            },
            vec![200, 100],
        ));
        assert!(
            (m - 1.0).abs() < 0.02 && (s - 0.5).abs() < 0.02,
            "normal: {m} {s}"
        );
        let bound = (6.0f32 / (200.0 + 100.0)).sqrt();
        let (_, _, lo, hi) = stats(&first(Init::XavierUniform, vec![200, 100]));
        assert!(
            lo >= -bound && hi <= bound && hi > 0.9 * bound,
            "xavier: {lo} {hi} vs {bound}"
        );
        let (m, s, _, _) = stats(&first(Init::HeNormal, vec![200, 100]));
        assert!(
            m.abs() < 0.01 && (s - (2.0f32 / 200.0).sqrt()).abs() < 0.005,
            "he: {m} {s}"
        );
    }

    #[test]
    fn fans_follow_the_matmul_convention() {
        assert_eq!(fans(&[784, 128]), (784.0, 128.0));
        assert_eq!(fans(&[8, 3, 3, 3]), (27.0, 72.0));
    }
}
