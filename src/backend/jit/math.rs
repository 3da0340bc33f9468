//! Polynomial `exp`, `log` and `tanh` in Cranelift IR, for `f32` and
//! `f32x4` alike (the same instructions; constants are splatted).
//!
//! The coefficients are Cephes' single-precision ones (`expf`, `logf`,
//! `tanhf`). Measured against the host's libm over a sweep of inputs
//! (`tests/jit_math.rs`, 100k–200k points each): the largest relative
//! errors seen are between 7e-8 and 1.4e-7 (one to two ulp) for `exp` on
//! [-87, 88], `log` on normal positive floats, `tanh` and the stdlib's
//! `sigmoid`; the test asserts 2e-7, 2e-7, 3e-7 and 5e-7.
//! Over the whole float range they meet libm's special values: `exp`
//! overflows to inf above ln(f32::MAX) and underflows through the
//! subnormals to 0 (so a −inf mask gives exactly 0); `log` takes
//! subnormal inputs at their value, gives −inf at ±0, NaN below 0 and
//! inf at inf; NaN stays NaN. Subnormals are not flushed on either
//! backend, unless the user asks the JIT to (`--flush-subnormals`,
//! [`super::subnormal`]). `tests/jit_math.rs` checks these ends too. A general power
//! calls the host's `powf` ([`powf`]).

// The coefficients are written as published, with more digits than f32
// keeps.
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, BlockArg, FuncRef, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// The polynomials' coefficients (highest degree first), shared with the
/// full-width kernels (`wide.rs`), which must compute the same values:
/// e^r's on the reduced range, ln m's, and tanh's odd part in x².
pub const EXP_P: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];
pub const LOG_P: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];
pub const TANH_P: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_908_9e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328_2e-1,
];

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
///
/// Where |x| < 86 (every lane of a vector), 2^n is applied by adding n to
/// e^r's exponent bits: the result is a normal float. Otherwise (a lane
/// near or past the ends, or NaN) a second block applies 2^n as two
/// normal factors 2^⌊n/2⌋ · 2^(n−⌊n/2⌋), so the result overflows to inf
/// above ln(f32::MAX) ≈ 88.72 and goes through the subnormals down to 0
/// below about −103.97, as libm's `expf` does; the fast lanes keep their
/// value.
pub fn exp(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    // Past these bounds the result is inf or 0 whatever x is; clamping
    // keeps n within [−150, 129]. NaN passes through fmin/fmax (Cranelift
    // propagates it) and the arithmetic below.
    let hi = cst(b, ty, 89.0);
    let lo = cst(b, ty, -104.0);
    let xc = b.ins().fmin(x, hi);
    let xc = b.ins().fmax(xc, lo);
    // n = round(x·log2 e) by the magic-number trick: adding 1.5·2^23
    // rounds to an integer held in the low mantissa bits, so the same
    // value gives n as a float (subtracting the magic) and n·2^23 as an
    // integer (its bits shifted left by 23: the magic's own bits leave).
    let log2e = cst(b, ty, std::f32::consts::LOG2_E);
    let magic = cst(b, ty, 12_582_912.0);
    let t = b.ins().fma(xc, log2e, magic);
    let n = b.ins().fsub(t, magic);
    let c1 = cst(b, ty, -0.693_359_4);
    let c2 = cst(b, ty, 2.121_944_4e-4);
    let r = b.ins().fma(n, c1, xc);
    let r = b.ins().fma(n, c2, r);
    let p = poly(b, ty, r, &EXP_P);
    let r2 = b.ins().fmul(r, r);
    let one = cst(b, ty, 1.0);
    let q = b.ins().fma(p, r2, r);
    let er = b.ins().fadd(q, one);
    let ity = int_ty(ty);
    let ti = bits(b, ity, t);
    let nsh = b.ins().ishl_imm_u(ti, 23);
    let erb = bits(b, ity, er);
    let yb = b.ins().iadd(erb, nsh);
    let fast = bits(b, ty, yb);
    // Every lane inside the fast range (not NaN)? Asked as `|x| < 86` in
    // all lanes rather than "unordered or ≥" in any: AArch64's vector
    // compares have no unordered-or-≥ form.
    let ax = b.ins().fabs(x);
    let limit = cst(b, ty, 86.0);
    let inside = b.ins().fcmp(FloatCC::LessThan, ax, limit);
    let all = if ty.is_vector() {
        b.ins().vall_true(inside)
    } else {
        inside
    };
    let slow = b.create_block();
    let join = b.create_block();
    let result = b.append_block_param(join, ty);
    b.ins().brif(all, join, &[BlockArg::Value(fast)], slow, &[]);
    b.switch_to_block(slow);
    // 2^n = 2^h · 2^(n−h), h = n >> 1 (arithmetic), each from its
    // exponent bits: (k + 127) << 23.
    let magic_bits = icst(b, ity, 12_582_912f32.to_bits() as i32);
    let ni = b.ins().isub(ti, magic_bits);
    let h = b.ins().sshr_imm_u(ni, 1);
    let l = b.ins().isub(ni, h);
    let bias = icst(b, ity, 127);
    let scale = |b: &mut FunctionBuilder, k: Value| {
        let k = b.ins().iadd(k, bias);
        let e = b.ins().ishl_imm_u(k, 23);
        bits(b, ty, e)
    };
    let s1 = scale(b, h);
    let s2 = scale(b, l);
    // er·2^h is exact (a normal float); the second product rounds once,
    // into the subnormals or to inf where the result lies there.
    let y = b.ins().fmul(er, s1);
    let y = b.ins().fmul(y, s2);
    let merged = choose(b, ty, inside, fast, y);
    b.ins().jump(join, &[BlockArg::Value(merged)]);
    b.switch_to_block(join);
    result
}

/// ln x = ln m + e·ln 2 with x = m·2^e, m in [√½, √2), ln m from
/// m − m²/2 + m³·P(m).
pub fn log(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    let ity = int_ty(ty);
    // A subnormal x is scaled by 2^23 into the normal range first (and
    // 23 taken off its exponent below).
    let tiny = cst(b, ty, f32::MIN_POSITIVE);
    let sub = b.ins().fcmp(FloatCC::LessThan, x, tiny);
    let two23 = cst(b, ty, 8_388_608.0);
    let scaled = b.ins().fmul(x, two23);
    let xn = choose(b, ty, sub, scaled, x);
    let zero = cst(b, ty, 0.0);
    let shift = cst(b, ty, 23.0);
    let adj = choose(b, ty, sub, shift, zero);
    let xi = bits(b, ity, xn);
    let ex = b.ins().ushr_imm_u(xi, 23);
    let bias = icst(b, ity, 126);
    let e = b.ins().isub(ex, bias);
    let mant_mask = icst(b, ity, 0x007f_ffff);
    let half_bits = icst(b, ity, 0x3f00_0000);
    let mi = b.ins().band(xi, mant_mask);
    let mi = b.ins().bor(mi, half_bits);
    let m = bits(b, ty, mi); // in [0.5, 1)
    let mut ef = b.ins().fcvt_from_sint(ty, e);
    ef = b.ins().fsub(ef, adj);
    let sqrth = cst(b, ty, std::f32::consts::FRAC_1_SQRT_2);
    let small = b.ins().fcmp(FloatCC::LessThan, m, sqrth);
    let one = cst(b, ty, 1.0);
    // m < √½: m = 2m − 1, e −= 1; else m = m − 1.
    let extra = choose(b, ty, small, m, zero);
    let dec = choose(b, ty, small, one, zero);
    ef = b.ins().fsub(ef, dec);
    let m1 = b.ins().fsub(m, one);
    let m = b.ins().fadd(m1, extra);
    let z = b.ins().fmul(m, m);
    let p = poly(b, ty, m, &LOG_P);
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
    let is_zero = b.ins().fcmp(FloatCC::Equal, x, zero);
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
    let p = poly(b, ty, z, &TANH_P);
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

/// The symbol compiled kernels call for `x ^ y` with a non-constant or
/// fractional exponent.
pub const POWF_SYMBOL: &str = "nnc_powf";

/// σ(x) = 1 / (1 + e^(−x)), from [`exp`]: for x < −88.7 e^(−x) is inf
/// and σ exactly 0, where e^(−x) underflows σ is 1; NaN stays NaN. The
/// interpreter computes the same expression.
pub fn sigmoid(b: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
    let nx = b.ins().fneg(x);
    let e = exp(b, ty, nx);
    let one = cst(b, ty, 1.0);
    let d = b.ins().fadd(one, e);
    b.ins().fdiv(one, d)
}

/// x^y as the host's `powf` computes it, the function the interpreter
/// calls: a polynomial `exp(y·ln x)` in f32 loses about |y·ln x| ulp (27
/// ulp at 2^−87), and doing better needs a double-length logarithm. A
/// general power is rare in a model (whole exponents up to 4 become
/// products; Adam's bias correction is one scalar per step), so kernels
/// call this per element and agree with the interpreter bit for bit.
pub extern "C" fn powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}

/// `x ^ y` through [`powf`] (`f` is its reference in the function being
/// built), lane by lane for a vector.
pub fn pow(b: &mut FunctionBuilder, ty: Type, f: FuncRef, x: Value, y: Value) -> Value {
    if !ty.is_vector() {
        let call = b.ins().call(f, &[x, y]);
        return b.inst_results(call)[0];
    }
    let mut r = x;
    for lane in 0..ty.lane_count() as u8 {
        let xl = b.ins().extractlane(x, lane);
        let yl = b.ins().extractlane(y, lane);
        let call = b.ins().call(f, &[xl, yl]);
        let v = b.inst_results(call)[0];
        r = b.ins().insertlane(r, v, lane);
    }
    r
}
