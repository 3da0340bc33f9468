//! The random draws of `Op::Random` (dropout masks, noise), the same on
//! every backend: element `i` of a draw is a function of `i`, the draw's
//! salt and its key alone, through the counter-based generator
//! Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers:
//! as easy as 1, 2, 3", SC 2011) — the generator JAX and cuRAND use. So a
//! GPU draws element `i` in work-item `i`, and the interpreter, the JIT
//! and OpenCL give the same bits for uniform draws (and the same normal
//! draws up to the last bits of `log` and `cos`).
//!
//! Element `i` of a draw with salt `s` and key `[k0, k1]` (two whole
//! numbers, [`crate::backend::interp::rng_key`]) is Philox4x32-10 of the
//! counter `[i mod 2³², i / 2³², s, 0]` under the key `[k0, k1]`, giving
//! four words `w`:
//!
//! - uniform on [0, 1): `(w0 >> 8) · 2⁻²⁴` (24 random bits, exact in f32);
//! - normal (Box–Muller): `√(−2 ln u1) · cos(2π u2)` with
//!   `u1 = ((w0 >> 8) + 1) · 2⁻²⁴` in (0, 1] and `u2 = (w1 >> 8) · 2⁻²⁴`,
//!   in f32.
//!
//! The OpenCL C port is `nnc_philox` in `backend/opencl/codegen.rs`.

use crate::ir::Dist;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with ten rounds.
pub fn philox4x32_10(mut c: [u32; 4], mut k: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// 2⁻²⁴.
const UNIT: f32 = 1.0 / 16_777_216.0;

/// Element `i` of a draw (see the module's documentation).
pub fn draw(dist: Dist, salt: u32, key: [u32; 2], i: u64) -> f32 {
    let w = philox4x32_10([i as u32, (i >> 32) as u32, salt, 0], key);
    match dist {
        Dist::Uniform => (w[0] >> 8) as f32 * UNIT,
        Dist::Normal => {
            let u1 = ((w[0] >> 8) + 1) as f32 * UNIT;
            let u2 = (w[1] >> 8) as f32 * UNIT;
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        }
    }
}

/// A draw's key from the values of its key tensor: two whole numbers
/// (anything else, as from a key fed through the API, is truncated).
pub fn key(values: &[f32]) -> [u32; 2] {
    let k = |i: usize| values.get(i).copied().unwrap_or(0.0) as u32;
    [k(0), k(1)]
}

/// `out[i]` = element `i` of the draw.
pub fn fill(dist: Dist, salt: u32, key: [u32; 2], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = draw(dist, salt, key, i as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer vectors published with Random123 for
    /// Philox4x32-10.
    #[test]
    fn philox_matches_the_published_vectors() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn draws_have_the_right_moments() {
        let n = 200_000;
        let mut u = vec![0.0; n];
        fill(Dist::Uniform, 3, [5, 9], &mut u);
        let mean = u.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "uniform mean {mean}");
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mut z = vec![0.0; n];
        fill(Dist::Normal, 3, [5, 9], &mut z);
        let m = z.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let v = z.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / n as f64;
        assert!(
            m.abs() < 0.01 && (v - 1.0).abs() < 0.02,
            "normal mean {m}, variance {v}"
        );
        assert!(z.iter().all(|x| x.is_finite()));
        // Another salt or key: other values.
        let mut w = vec![0.0; 8];
        fill(Dist::Uniform, 4, [5, 9], &mut w);
        assert_ne!(w[..], u[..8]);
    }
}
