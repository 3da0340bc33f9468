//! Polynomial `exp`, `log` and `tanh` in Cranelift IR, for `f32` and
//! `f32x4` alike (the same instructions; constants are splatted).
//!
//! The coefficients are Cephes' single-precision ones (`expf`, `logf`,
//! `tanhf`). Measured against the host's libm over a sweep of inputs
//! (`tests/jit_math.rs`, 100k–200k points each): the largest relative
//! errors seen are between 7e-8 and 1.4e-7 (one to two ulp) for `exp` on
//! [-87, 88], `log` on normal positive floats, `tanh` and the stdlib's
//! `sigmoid`; the test asserts 2e-7, 2e-7, 3e-7 and 5e-7.
//! Out of range: `exp` saturates (inputs are clamped to [-87.3, 88.0], so
//! `exp(-100)` gives 1.2e-38 instead of 0 and `exp(100)` gives 1.65e38
//! instead of inf); `log` gives -inf at 0 and NaN below; subnormal inputs
//! to `log` are treated as 0.

// The coefficients are written as published, with more digits than f32
// keeps.
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// A constant of type `ty` (a scalar or a splat).
pub fn cst(b: &mut FunctionBuilder, ty: Type, v: f32) -> Value {
    let s = b.ins().f32const(v);
    if ty.is_vector() {
        b.ins().splat(ty, s)
    } else {
        s
    }
}

fn icst(b: &mut FunctionBuilder, ity: Type, v: i32) -> Value {
    if ity.is_vector() {
        let s = b.ins().iconst(types::I32, v as i64);
        b.ins().splat(ity, s)
    } else {
        b.ins().iconst(types::I32, v as i64)
    }
}

fn int_ty(ty: Type) -> Type {
    if ty.is_vector() {
        types::I32X4
    } else {
        types::I32
    }
}

fn bits(b: &mut FunctionBuilder, to: Type, x: Value) -> Value {
    b.ins().bitcast(to, MemFlagsData::new(), x)
}

/// `c ? x : y` where `c` is the result of an `fcmp` on values of type `ty`.
pub fn choose(b: &mut FunctionBuilder, ty: Type, c: Value, x: Value, y: Value) -> Value {
    if ty.is_vector() {
        let m = bits(b, ty, c);
        b.ins().bitselect(m, x, y)
    } else {
        b.ins().select(c, x, y)
    }
}

/// Horner's rule: `((c0·x + c1)·x + c2)…`, with fused multiply-adds.
fn poly(b: &mut FunctionBuilder, ty: Type, x: Value, coeffs: &[f32]) -> Value {
    let mut acc = cst(b, ty, coeffs[0]);
    for &c in &coeffs[1..] {
        let c = cst(b, ty, c);
        acc = b.ins().fma(acc, x, c);
    }
    acc
}

/// e^x = 2^n · e^r with n = round(x·log2 e), r = x − n·ln 2 (in two parts,
/// so r is exact), e^r from a degree-7 polynomial.
pub fn exp(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    let hi = cst(b, ty, 88.0);
    let lo = cst(b, ty, -87.3);
    let x = b.ins().fmin(x, hi);
    let x = b.ins().fmax(x, lo);
    // n = round(x·log2 e) by the magic-number trick: adding 1.5·2^23
    // (+127, the exponent bias) rounds to an integer held in the low
    // mantissa bits, so the same value gives both n (as a float, after
    // subtracting the magic) and 2^n (its bits shifted into the exponent).
    let log2e = cst(b, ty, std::f32::consts::LOG2_E);
    let magic = cst(b, ty, 12_583_039.0);
    let t = b.ins().fma(x, log2e, magic);
    let n = b.ins().fsub(t, magic);
    let c1 = cst(b, ty, -0.693_359_4);
    let c2 = cst(b, ty, 2.121_944_4e-4);
    let r = b.ins().fma(n, c1, x);
    let r = b.ins().fma(n, c2, r);
    let p = poly(
        b,
        ty,
        r,
        &[
            1.987_569_2e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5.000_000_1e-1,
        ],
    );
    let r2 = b.ins().fmul(r, r);
    let one = cst(b, ty, 1.0);
    let q = b.ins().fma(p, r2, r);
    let er = b.ins().fadd(q, one);
    // 2^n from the exponent bits.
    let ity = int_ty(ty);
    let ti = bits(b, ity, t);
    let e = b.ins().ishl_imm_u(ti, 23);
    let scale = bits(b, ty, e);
    b.ins().fmul(er, scale)
}

/// ln x = ln m + e·ln 2 with x = m·2^e, m in [√½, √2), ln m from
/// m − m²/2 + m³·P(m).
pub fn log(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    let ity = int_ty(ty);
    let xi = bits(b, ity, x);
    let ex = b.ins().ushr_imm_u(xi, 23);
    let bias = icst(b, ity, 126);
    let e = b.ins().isub(ex, bias);
    let mant_mask = icst(b, ity, 0x007f_ffff);
    let half_bits = icst(b, ity, 0x3f00_0000);
    let mi = b.ins().band(xi, mant_mask);
    let mi = b.ins().bor(mi, half_bits);
    let m = bits(b, ty, mi); // in [0.5, 1)
    let mut ef = b.ins().fcvt_from_sint(ty, e);
    let sqrth = cst(b, ty, std::f32::consts::FRAC_1_SQRT_2);
    let small = b.ins().fcmp(FloatCC::LessThan, m, sqrth);
    let one = cst(b, ty, 1.0);
    let zero = cst(b, ty, 0.0);
    // m < √½: m = 2m − 1, e −= 1; else m = m − 1.
    let extra = choose(b, ty, small, m, zero);
    let dec = choose(b, ty, small, one, zero);
    ef = b.ins().fsub(ef, dec);
    let m1 = b.ins().fsub(m, one);
    let m = b.ins().fadd(m1, extra);
    let z = b.ins().fmul(m, m);
    let p = poly(
        b,
        ty,
        m,
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_4e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ],
    );
    let mz = b.ins().fmul(m, z);
    let y = b.ins().fmul(mz, p);
    let q1 = cst(b, ty, -2.121_944_4e-4);
    let y = b.ins().fma(ef, q1, y);
    let mhalf = cst(b, ty, -0.5);
    let y = b.ins().fma(z, mhalf, y);
    let r = b.ins().fadd(m, y);
    let q2 = cst(b, ty, 0.693_359_4);
    let r = b.ins().fma(ef, q2, r);
    // Special values: log(+inf) = inf, log(0) = −inf, log(x < 0) = NaN
    // (as does a NaN input, which fails every comparison below).
    let inf = cst(b, ty, f32::INFINITY);
    let is_inf = b.ins().fcmp(FloatCC::Equal, x, inf);
    let r = choose(b, ty, is_inf, inf, r);
    let tiny = cst(b, ty, f32::MIN_POSITIVE);
    let is_zero = b.ins().fcmp(FloatCC::LessThan, x, tiny);
    let ninf = cst(b, ty, f32::NEG_INFINITY);
    let r = choose(b, ty, is_zero, ninf, r);
    let is_neg = b.ins().fcmp(FloatCC::LessThan, x, zero);
    let nan = cst(b, ty, f32::NAN);
    let r = choose(b, ty, is_neg, nan, r);
    let is_nan = b.ins().fcmp(FloatCC::Unordered, x, x);
    choose(b, ty, is_nan, x, r)
}

/// tanh x: x + x³·P(x²) for |x| < 0.625, else sign(x)·(1 − 2/(e^{2|x|} + 1)).
pub fn tanh(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    let ax = b.ins().fabs(x);
    let two = cst(b, ty, 2.0);
    let one = cst(b, ty, 1.0);
    let t = b.ins().fmul(ax, two);
    let e = exp(b, ty, t);
    let d = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, d);
    let big = b.ins().fsub(one, q);
    // Copy x's sign bit onto `big` (which is ≥ 0), in the integer domain.
    let ity = int_ty(ty);
    let xi = bits(b, ity, x);
    let sign_mask = icst(b, ity, i32::MIN);
    let sign = b.ins().band(xi, sign_mask);
    let bi = bits(b, ity, big);
    let bi = b.ins().bor(bi, sign);
    let big = bits(b, ty, bi);
    let z = b.ins().fmul(x, x);
    let p = poly(
        b,
        ty,
        z,
        &[
            -5.704_988_7e-3,
            2.063_908_9e-2,
            -5.373_971_6e-2,
            1.333_144_2e-1,
            -3.333_328_2e-1,
        ],
    );
    let xz = b.ins().fmul(x, z);
    let small = b.ins().fma(xz, p, x);
    let lim = cst(b, ty, 0.625);
    let is_small = b.ins().fcmp(FloatCC::LessThan, ax, lim);
    let r = choose(b, ty, is_small, small, big);
    // NaN in, NaN out (the comparisons above send it to `big`, which is
    // already NaN; kept explicit for clarity).
    let is_nan = b.ins().fcmp(FloatCC::Unordered, x, x);
    choose(b, ty, is_nan, x, r)
}

/// x^y as C's `powf` defines it, from exp(y·ln|x|): a negative x gives
/// ±|x|^y for a whole y (odd: negative) and NaN otherwise; x = 0 gives
/// 0, 1 or inf as y is positive, 0 or negative. The relative error grows
/// with |y·ln x| (about 1e-7 · (1 + |y·ln x|)).
pub fn pow(b: &mut FunctionBuilder, ty: Type, x: Value, y: Value) -> Value {
    let ax = b.ins().fabs(x);
    let l = log(b, ty, ax);
    let t = b.ins().fmul(y, l);
    let mag = exp_full(b, ty, t);
    let zero = cst(b, ty, 0.0);
    let one = cst(b, ty, 1.0);
    let half = cst(b, ty, 0.5);
    // y whole? odd?
    let yr = b.ins().nearest(y);
    let whole = b.ins().fcmp(FloatCC::Equal, yr, y);
    let yh = b.ins().fmul(y, half);
    let yhr = b.ins().nearest(yh);
    let even = b.ins().fcmp(FloatCC::Equal, yhr, yh);
    let neg_mag = b.ins().fneg(mag);
    let signed = choose(b, ty, even, mag, neg_mag);
    let nan = cst(b, ty, f32::NAN);
    let negative = choose(b, ty, whole, signed, nan);
    let is_neg = b.ins().fcmp(FloatCC::LessThan, x, zero);
    let r = choose(b, ty, is_neg, negative, mag);
    // x = ±0: exp(y·(−inf)) already gives 0 (y > 0) or inf (y < 0); y = 0
    // gives 1 whatever x (NaN included), as powf does.
    let y0 = b.ins().fcmp(FloatCC::Equal, y, zero);
    choose(b, ty, y0, one, r)
}

/// exp without the input clamp: exact 0 and inf at the ends (for pow).
fn exp_full(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    let e = exp(b, ty, x);
    let lo = cst(b, ty, -103.0);
    let hi = cst(b, ty, 88.7);
    let zero = cst(b, ty, 0.0);
    let inf = cst(b, ty, f32::INFINITY);
    let under = b.ins().fcmp(FloatCC::LessThan, x, lo);
    let e = choose(b, ty, under, zero, e);
    let over = b.ins().fcmp(FloatCC::GreaterThan, x, hi);
    let e = choose(b, ty, over, inf, e);
    // NaN stays NaN.
    let is_nan = b.ins().fcmp(FloatCC::Unordered, x, x);
    choose(b, ty, is_nan, x, e)
}
