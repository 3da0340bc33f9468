//! OpenCL C for a [`Schedule`]: one kernel per loop step (its expression
//! tree and iteration space written out with the sizes as constants), and
//! a fixed library of kernels taking their sizes as arguments for the
//! other steps (tiled GEMM, block copies, convolutions and poolings and
//! their gradients, the loop's accumulation). The whole program is one
//! source string, so it is snapshot-tested without a device
//! (`nnc compile --emit opencl`), and the runtime (`runtime.rs`, behind
//! the `opencl` feature) launches each kernel as [`loop_launch`] says.
//!
//! The arithmetic is the interpreter's: no fast-math options, floating-
//! point contraction off (`a * b + c` is two roundings, as in Rust), the
//! interpreter's NaN-propagating `max` and `min`, `x ^ k` for a whole `k`
//! as the JIT's repeated products, OpenCL's `exp`, `log`, `tanh` and `pow`
//! (within a few ulps, as the JIT's) elsewhere. Sums add their terms in a
//! fixed order (a work-group's tree, a work-item's loop): a program gives
//! the same bits on every run.

use crate::ir::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::schedule::{Expr, LoopKernel, Schedule, Step};
use std::collections::HashMap;
use std::fmt::Write as _;

/// Work-items per work-group of a tree reduction (a power of two every
/// OpenCL device supports).
pub const GROUP: usize = 128;

/// Work-items per work-group of the one-item-per-element kernels.
pub const ITEMS: usize = 64;

/// GEMM tiling: a work-group of `GEMM_LOCAL`² items computes a
/// `GEMM_TILE`² block of the output, each item `GEMM_WORK`² of it
/// (`GEMM_TILE = GEMM_LOCAL * GEMM_WORK`).
pub const GEMM_LOCAL: usize = 16;
pub const GEMM_TILE: usize = 64;

/// How a loop kernel is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// One work-item per element (or per output of a reduction that each
    /// item sums alone), `n` of them, in work-groups of [`ITEMS`].
    Items(usize),
    /// One work-group of [`GROUP`] items per output of a reduction, `n`
    /// of them: a tree in local memory.
    Groups(usize),
}

impl Launch {
    /// The global and local work sizes.
    pub fn sizes(self) -> (usize, usize) {
        match self {
            Launch::Items(n) => (n.div_ceil(ITEMS).max(1) * ITEMS, ITEMS),
            Launch::Groups(n) => (n.max(1) * GROUP, GROUP),
        }
    }
}

/// The kernel name of step `path` (its index, and the indices of the
/// loops it sits in, outermost first).
pub fn kernel_name(path: &[usize]) -> String {
    let mut s = String::from("k");
    for (i, p) in path.iter().enumerate() {
        if i > 0 {
            s.push('_');
        }
        let _ = write!(s, "{p}");
    }
    s
}

/// The program of `sched`'s generated kernels: the shared helpers, then a
/// kernel for every loop step, loop bodies included. (The library is a
/// program of its own, built once per process: [`library`].)
pub fn program_source(sched: &Schedule) -> String {
    program(sched).0
}

/// The kernel each step runs, by its path: structurally identical steps
/// (a stack of equal layers) share one kernel, emitted once.
#[derive(Default)]
pub struct Names(HashMap<Vec<usize>, String>);

impl Names {
    /// The kernel of step `path`.
    pub fn of(&self, path: &[usize]) -> String {
        self.0
            .get(path)
            .cloned()
            .unwrap_or_else(|| kernel_name(path))
    }
}

/// [`program_source`], and the kernel each step runs.
pub fn program(sched: &Schedule) -> (String, Names) {
    let mut s = String::from(PRELUDE);
    let mut names = Names::default();
    emit_steps(
        sched,
        &mut Vec::new(),
        &mut s,
        &mut HashMap::new(),
        &mut names,
    );
    (s, names)
}

/// The kernels generated for `sched`'s loop steps (the program without
/// its library).
pub fn generated(sched: &Schedule) -> String {
    let mut s = String::new();
    emit_steps(
        sched,
        &mut Vec::new(),
        &mut s,
        &mut HashMap::new(),
        &mut Names::default(),
    );
    s
}

/// The name a kernel's source is generated with before it gets its own.
const PLACEHOLDER: &str = "NNC_THIS_KERNEL";

fn emit_steps(
    sched: &Schedule,
    path: &mut Vec<usize>,
    s: &mut String,
    seen: &mut HashMap<String, String>,
    names: &mut Names,
) {
    for (i, step) in sched.steps.iter().enumerate() {
        path.push(i);
        let source = match step {
            Step::Loop {
                kernel,
                init,
                divisor,
                ..
            } => Some(loop_source(PLACEHOLDER, kernel, *init, *divisor)),
            Step::Transpose { shape, perm, .. } => {
                let k = transpose_kernel(shape, perm);
                Some(loop_source(PLACEHOLDER, &k, None, None))
            }
            Step::MatMul {
                epilogue: Some(e), ..
            } => Some(epilogue_gemm(PLACEHOLDER, e)),
            Step::Scan(sc) => {
                emit_steps(&sc.body, path, s, seen, names);
                None
            }
            _ => None,
        };
        if let Some(source) = source {
            let _ = writeln!(s, "\n// step {}", step.describe(&sched.graph));
            match seen.get(&source) {
                Some(name) => {
                    let _ = writeln!(s, "// runs {name}, above");
                    names.0.insert(path.clone(), name.clone());
                }
                None => {
                    let name = kernel_name(path);
                    s.push_str(&source.replace(PLACEHOLDER, &name));
                    seen.insert(source, name.clone());
                    names.0.insert(path.clone(), name);
                }
            }
        }
        path.pop();
    }
}

/// A transpose as a loop kernel: the output walked in order, the source
/// read through its permuted strides.
pub fn transpose_kernel(shape: &[usize], perm: &[usize]) -> LoopKernel {
    let src = crate::tensor::strides(shape);
    let dims: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out = crate::tensor::strides(&dims);
    let mut k = LoopKernel {
        accesses: vec![perm.iter().map(|&p| src[p] as i64).collect()],
        offsets: vec![0],
        out: out.iter().map(|&x| x as i64).collect(),
        out_offset: 0,
        dims,
        exprs: vec![Expr::Load(0)],
        reduce: None,
        also: Vec::new(),
    };
    if k.dims.is_empty() {
        k.dims.push(1);
        k.accesses[0].push(0);
        k.out.push(0);
    }
    k.simplify();
    k
}

/// Reduced and kept iteration dims of a kernel: a dim is reduced where
/// the output does not move along it.
fn split_dims(k: &LoopKernel) -> (Vec<usize>, Vec<usize>) {
    let (mut kept, mut reduced) = (Vec::new(), Vec::new());
    for d in 0..k.dims.len() {
        if k.reduce.is_some() && k.out[d] == 0 {
            reduced.push(d);
        } else {
            kept.push(d);
        }
    }
    (kept, reduced)
}

/// How [`loop_source`] lays out kernel `k`: elementwise kernels and
/// reductions with few terms per output, or with many outputs side by side
/// along the innermost dim (a bias gradient's column sums: neighbouring
/// items then read neighbouring floats), take one item per output; other
/// reductions a work-group per output.
pub fn loop_launch(k: &LoopKernel) -> Launch {
    let (kept, reduced) = split_dims(k);
    let outs: usize = kept.iter().map(|&d| k.dims[d]).product();
    let terms: usize = reduced.iter().map(|&d| k.dims[d]).product();
    let inner_kept = kept.last() == Some(&(k.dims.len() - 1));
    if reduced.is_empty() || terms < GROUP || (inner_kept && outs >= 1024) {
        Launch::Items(outs)
    } else {
        Launch::Groups(outs)
    }
}

/// A float literal that reads back as exactly `v`.
fn float(v: f32) -> String {
    if v.is_nan() {
        "NAN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "INFINITY" } else { "(-INFINITY)" }.into()
    } else {
        // Rust's shortest round-trip form; OpenCL C reads it to the same
        // float.
        let s = format!("{v:?}");
        let s = if s.contains(['.', 'e', 'E']) {
            s
        } else {
            s + ".0"
        };
        format!("{s}f")
    }
}

/// The index type of a kernel: `int` when every index and offset fits.
fn index_type(k: &LoopKernel) -> &'static str {
    let reach = |s: &Vec<i64>| -> i128 {
        s.iter()
            .zip(&k.dims)
            .map(|(&st, &d)| i128::from(st).abs() * (d as i128 - 1).max(0))
            .sum()
    };
    let total: i128 = k.dims.iter().map(|&d| d as i128).product();
    let widest = k
        .accesses
        .iter()
        .zip(&k.offsets)
        .map(|(s, &o)| reach(s) + o as i128)
        .chain(std::iter::once(reach(&k.out) + k.out_offset as i128))
        .max()
        .unwrap_or(0)
        .max(total + GROUP as i128);
    if widest < i128::from(i32::MAX) {
        "int"
    } else {
        "long"
    }
}

/// Writes `i{d} = …` for the dims `ds` (outermost first) from the flat
/// index held in variable `flat`.
fn decompose(s: &mut String, ty: &str, k: &LoopKernel, ds: &[usize], flat: &str, indent: &str) {
    if ds.is_empty() {
        return;
    }
    let _ = writeln!(s, "{indent}{ty} r_{flat} = {flat};");
    for (j, &d) in ds.iter().enumerate().rev() {
        if j == 0 {
            let _ = writeln!(s, "{indent}const {ty} i{d} = r_{flat};");
        } else {
            let n = k.dims[d];
            let _ = writeln!(
                s,
                "{indent}const {ty} i{d} = r_{flat} % {n}; r_{flat} /= {n};"
            );
        }
    }
}

/// `Σ i_d · stride_d` over the dims `ds`.
fn offset(strides: &[i64], ds: &[usize]) -> String {
    let terms: Vec<String> = ds
        .iter()
        .filter(|&&d| strides[d] != 0)
        .map(|&d| match strides[d] {
            1 => format!("i{d}"),
            s => format!("i{d} * {s}"),
        })
        .collect();
    if terms.is_empty() {
        "0".into()
    } else {
        terms.join(" + ")
    }
}

/// The statements computing the kernel's value into `e{last}`, with the
/// loads at the offsets the dims in `ds` give.
fn expressions(s: &mut String, k: &LoopKernel, ds: &[usize], indent: &str) -> String {
    expressions_with(s, k, ds, indent, None)
}

/// [`expressions`] where access `acc`, if any, is the value `v` in hand
/// (a GEMM's product, in its epilogue) instead of a load.
fn expressions_with(
    s: &mut String,
    k: &LoopKernel,
    ds: &[usize],
    indent: &str,
    acc: Option<usize>,
) -> String {
    let mut name = String::new();
    for (j, e) in k.exprs.iter().enumerate() {
        let v = |i: usize| format!("e{i}");
        let rhs = match *e {
            Expr::Load(a) if Some(a) == acc => "v".into(),
            Expr::Load(a) => match (k.offsets[a], offset(&k.accesses[a], ds)) {
                (0, at) => format!("a{a}[{at}]"),
                (o, at) if at == "0" => format!("a{a}[{o}]"),
                (o, at) => format!("a{a}[{o} + {at}]"),
            },
            Expr::Const(c) => float(c),
            Expr::Unary(op, a) => {
                let a = v(a);
                match op {
                    UnaryOp::Neg => format!("-{a}"),
                    UnaryOp::Exp => format!("exp({a})"),
                    UnaryOp::Log => format!("log({a})"),
                    UnaryOp::Sqrt => format!("sqrt({a})"),
                    UnaryOp::Abs => format!("fabs({a})"),
                    UnaryOp::Tanh => format!("tanh({a})"),
                    UnaryOp::Sigmoid => format!("1.0f / (1.0f + exp(-{a}))"),
                }
            }
            Expr::Binary(op, x, y) => {
                let (x, y) = (v(x), v(y));
                match op {
                    BinaryOp::Add => format!("{x} + {y}"),
                    BinaryOp::Sub => format!("{x} - {y}"),
                    BinaryOp::Mul => format!("{x} * {y}"),
                    BinaryOp::Div => format!("{x} / {y}"),
                    BinaryOp::Pow => format!("pow({x}, {y})"),
                    BinaryOp::Max => format!("nnc_max({x}, {y})"),
                    BinaryOp::Min => format!("nnc_min({x}, {y})"),
                }
            }
            Expr::PowI(x, p) => {
                // The JIT's products, in its order.
                let mut r = String::from("1.0f");
                for _ in 0..p.unsigned_abs() {
                    r = format!("({r} * {})", v(x));
                }
                if p < 0 {
                    format!("1.0f / {r}")
                } else {
                    r
                }
            }
            Expr::Compare(op, x, y) => {
                let c = match op {
                    CmpOp::Eq => "==",
                    CmpOp::Ne => "!=",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                };
                format!("{} {c} {} ? 1.0f : 0.0f", v(x), v(y))
            }
            Expr::Select(c, x, y) => format!("{} != 0.0f ? {} : {}", v(c), v(x), v(y)),
        };
        let _ = writeln!(s, "{indent}const float e{j} = {rhs};");
        name = v(j);
    }
    name
}

fn combine(op: ReduceOp, acc: &str, v: &str) -> String {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => format!("{acc} + {v}"),
        ReduceOp::Max => format!("nnc_max({acc}, {v})"),
    }
}

fn identity(op: ReduceOp) -> f32 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Max => f32::NEG_INFINITY,
    }
}

/// The OpenCL C kernel `name` computing loop kernel `k`: arguments
/// `out, a0, a1, …, o0, o1, …` (the output, each access's buffer, then
/// each further store's, [`LoopKernel::also`]). A reduction
/// starts from `init` (else from what `out` holds) and its result is
/// divided by `divisor` (a mean), as [`Step::Loop`] says.
pub fn loop_source(name: &str, k: &LoopKernel, init: Option<f32>, divisor: Option<f32>) -> String {
    let ty = index_type(k);
    let launch = loop_launch(k);
    let (kept, reduced) = split_dims(k);
    let mut s = String::new();
    let attr = match launch {
        Launch::Items(_) => format!("__attribute__((reqd_work_group_size({ITEMS}, 1, 1)))"),
        Launch::Groups(_) => format!("__attribute__((reqd_work_group_size({GROUP}, 1, 1)))"),
    };
    let mut args = vec!["__global float *out".to_string()];
    args.extend((0..k.accesses.len()).map(|a| format!("__global const float *a{a}")));
    args.extend((0..k.also.len()).map(|j| format!("__global float *o{j}")));
    let _ = writeln!(s, "__kernel {attr}\nvoid {name}({}) {{", args.join(", "));
    let outs: usize = kept.iter().map(|&d| k.dims[d]).product();
    let terms: usize = reduced.iter().map(|&d| k.dims[d]).product();
    let at = |o: usize, strides: &[i64]| match (o, offset(strides, &kept)) {
        (0, at) => at,
        (o, at) if at == "0" => o.to_string(),
        (o, at) => format!("{o} + {at}"),
    };
    let out_at = at(k.out_offset, &k.out);
    let finish = |acc: &str| match divisor {
        Some(d) => format!("{acc} / {}", float(d)),
        None => acc.to_string(),
    };
    match (k.reduce, launch) {
        (None, _) => {
            let _ = writeln!(s, "    const {ty} g = get_global_id(0);");
            let _ = writeln!(s, "    if (g >= {outs}) return;");
            decompose(&mut s, ty, k, &kept, "g", "    ");
            let v = expressions(&mut s, k, &kept, "    ");
            let _ = writeln!(s, "    out[{out_at}] = {v};");
            for (j, st) in k.also.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "    o{j}[{}] = e{};",
                    at(st.offset, &st.strides),
                    st.expr
                );
            }
        }
        (Some(op), Launch::Items(_)) => {
            let _ = writeln!(s, "    const {ty} g = get_global_id(0);");
            let _ = writeln!(s, "    if (g >= {outs}) return;");
            decompose(&mut s, ty, k, &kept, "g", "    ");
            let start = init.map_or_else(|| format!("out[{out_at}]"), float);
            let _ = writeln!(s, "    float acc = {start};");
            let _ = writeln!(s, "    for ({ty} t = 0; t < {terms}; t++) {{");
            decompose(&mut s, ty, k, &reduced, "t", "        ");
            let v = expressions(&mut s, k, &k_all(k), "        ");
            let _ = writeln!(s, "        acc = {};", combine(op, "acc", &v));
            let _ = writeln!(s, "    }}");
            let _ = writeln!(s, "    out[{out_at}] = {};", finish("acc"));
        }
        (Some(op), Launch::Groups(_)) => {
            let _ = writeln!(s, "    __local float part[{GROUP}];");
            let _ = writeln!(s, "    const {ty} g = get_group_id(0);");
            let _ = writeln!(s, "    const int l = get_local_id(0);");
            decompose(&mut s, ty, k, &kept, "g", "    ");
            let _ = writeln!(s, "    float acc = {};", float(identity(op)));
            let _ = writeln!(s, "    for ({ty} t = l; t < {terms}; t += {GROUP}) {{");
            decompose(&mut s, ty, k, &reduced, "t", "        ");
            let v = expressions(&mut s, k, &k_all(k), "        ");
            let _ = writeln!(s, "        acc = {};", combine(op, "acc", &v));
            let _ = writeln!(s, "    }}");
            let _ = writeln!(s, "    part[l] = acc;");
            let _ = writeln!(s, "    barrier(CLK_LOCAL_MEM_FENCE);");
            let _ = writeln!(s, "    for (int w = {}; w > 0; w >>= 1) {{", GROUP / 2);
            let _ = writeln!(
                s,
                "        if (l < w) part[l] = {};",
                combine(op, "part[l]", "part[l + w]")
            );
            let _ = writeln!(s, "        barrier(CLK_LOCAL_MEM_FENCE);");
            let _ = writeln!(s, "    }}");
            let start = init.map_or_else(|| format!("out[{out_at}]"), float);
            let _ = writeln!(
                s,
                "    if (l == 0) out[{out_at}] = {};",
                finish(&format!("({})", combine(op, &start, "part[0]")))
            );
        }
    }
    s.push_str("}\n");
    s
}

/// Every dim of `k`.
fn k_all(k: &LoopKernel) -> Vec<usize> {
    (0..k.dims.len()).collect()
}

/// Where a GEMM kernel stores its 4×4 block: `v` is the product at row
/// `r` (of this batch `z`) and column `cc`.
const GEMM_STORE: &str = "c[(long)r * n + cc] = v;";

/// The tiled GEMM kernel `name`: batched `C = A @ B`, `A` m×k and `B` k×n
/// with (row, column) strides at offsets `a_offs[z]` and `b_offs[z]`, `C`
/// the z-th row-major m×n matrix. A work-group of 16×16 items computes a
/// 64×64 tile of C, each item 4×4 of it, through 64×16 and 16×64 tiles of
/// A and B in local memory; each output is one fma chain over k in order.
/// `extra` adds arguments after the GEMM's; `store` is the statement that
/// stores each output `v` (at row `r`, column `cc` of batch `z`).
fn gemm_kernel(name: &str, extra: &str, store: &str) -> String {
    format!(
        r#"__kernel __attribute__((reqd_work_group_size(16, 16, 1)))
void {name}(__global float *c, __global const float *a, __global const float *b,
              __global const long *a_offs, __global const long *b_offs,
              const int m, const int n, const int k,
              const int a_r, const int a_c, const int b_r, const int b_c{extra}) {{
    __local float as[16][65];
    __local float bs[16][65];
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int row0 = get_group_id(1) * 64, col0 = get_group_id(0) * 64;
    const int z = get_group_id(2);
    a += a_offs[z];
    b += b_offs[z];
    c += (long)z * m * n;
    const int id = ty * 16 + tx;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < k; k0 += 16) {{
        for (int l = 0; l < 4; l++) {{
            const int e = id + l * 256;
            const int ar = e / 16, ak = e % 16;
            const int gr = row0 + ar, gk = k0 + ak;
            as[ak][ar] = (gr < m && gk < k) ? a[(long)gr * a_r + (long)gk * a_c] : 0.0f;
            const int bk = e / 64, bc = e % 64;
            const int hk = k0 + bk, gc = col0 + bc;
            bs[bk][bc] = (hk < k && gc < n) ? b[(long)hk * b_r + (long)gc * b_c] : 0.0f;
        }}
        barrier(CLK_LOCAL_MEM_FENCE);
        const int kk_end = min(16, k - k0);
        for (int kk = 0; kk < kk_end; kk++) {{
            float av[4], bv[4];
            for (int i = 0; i < 4; i++) av[i] = as[kk][ty + 16 * i];
            for (int j = 0; j < 4; j++) bv[j] = bs[kk][tx + 16 * j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
        }}
        barrier(CLK_LOCAL_MEM_FENCE);
    }}
    for (int i = 0; i < 4; i++) {{
        const int r = row0 + ty + 16 * i;
        for (int j = 0; j < 4; j++) {{
            const int cc = col0 + tx + 16 * j;
            if (r < m && cc < n) {{
                const float v = acc[i][j];
                {store}
            }}
        }}
    }}
}}
"#
    )
}

/// The GEMM kernel `name` with epilogue `e` in its store: its arguments
/// are the library GEMM's, then the epilogue's output and its accesses'
/// buffers (`out, a0, a1, …`; the product's access is not read, its value
/// is in hand).
pub fn epilogue_gemm(name: &str, e: &crate::schedule::Epilogue) -> String {
    let k = &e.kernel;
    let mut extra = String::from(",\n              __global float *out");
    for a in 0..k.accesses.len() {
        let _ = write!(extra, ", __global const float *a{a}");
    }
    let indent = "                ";
    let mut store = String::from(GEMM_STORE);
    store.push('\n');
    // The point of the epilogue's space this output is.
    if k.dims.len() == 2 {
        let _ = writeln!(store, "{indent}const long i0 = (long)z * m + r, i1 = cc;");
    } else {
        let _ = writeln!(store, "{indent}const long i0 = ((long)z * m + r) * n + cc;");
    }
    let all: Vec<usize> = (0..k.dims.len()).collect();
    let value = expressions_with(&mut store, k, &all, indent, Some(e.acc));
    let _ = write!(store, "{indent}out[{}] = {value};", offset(&k.out, &all));
    gemm_kernel(name, &extra, &store)
}

/// What every generated program starts with.
pub const PRELUDE: &str = r#"// nnc: OpenCL C generated from a schedule
#pragma OPENCL FP_CONTRACT OFF

// The interpreter's maximum and minimum: a NaN operand wins.
inline float nnc_max(float a, float b) { return (isnan(a) || a > b) ? a : b; }
inline float nnc_min(float a, float b) { return (isnan(a) || a < b) ? a : b; }
"#;

/// The kernels the steps other than loops call, their sizes as
/// arguments: one program for the whole process.
pub fn library() -> String {
    LIBRARY.replace("{GEMM}\n", &gemm_kernel("nnc_gemm", "", GEMM_STORE))
}

/// [`library`] with its GEMM kernel left out.
const LIBRARY: &str = r#"// nnc: the library kernels
#pragma OPENCL FP_CONTRACT OFF

{GEMM}
// count blocks of len floats from src to dst (a slice, or one part of a
// concatenation).
__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void nnc_copy(__global float *dst, __global const float *src, const long count, const long len,
              const long src_at, const long src_stride, const long dst_at, const long dst_stride) {
    const long g = get_global_id(0);
    if (g >= count * len) return;
    const long i = g / len, j = g % len;
    dst[dst_at + i * dst_stride + j] = src[src_at + i * src_stride + j];
}

// The row an index names: a whole number in 0..rows (the interpreter's
// rule); else -1, and the first bad index is recorded in status (the
// step's number + 1, then the index's bits) for the host to report.
inline int nnc_row(float x, int rows, __global volatile int *status, int step) {
    if (x >= 0.0f && x < (float)rows && x == floor(x)) return (int)x;
    if (atomic_cmpxchg(&status[0], 0, step + 1) == 0) status[1] = as_int(x);
    return -1;
}

// out[k, :] = src[idx[k], :]: one item per output element.
__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void nnc_gather(__global float *out, __global const float *src, __global const float *idx,
                const long count, const long width, const int rows,
                __global volatile int *status, const int step) {
    const long g = get_global_id(0);
    if (g >= count * width) return;
    const long k = g / width, j = g % width;
    const int r = nnc_row(idx[k], rows, status, step);
    out[g] = r < 0 ? 0.0f : src[(long)r * width + j];
}

// out[idx[k], :] += src[k, :] into zeros: one item per column, adding
// the rows in the indices' order (deterministic, the interpreter's sums).
__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void nnc_scatter_add(__global float *out, __global const float *src, __global const float *idx,
                     const long count, const long width, const int rows,
                     __global volatile int *status, const int step) {
    const long j = get_global_id(0);
    if (j >= width) return;
    for (long r = 0; r < rows; r++) out[r * width + j] = 0.0f;
    for (long k = 0; k < count; k++) {
        const int r = nnc_row(idx[k], rows, status, step);
        if (r >= 0) out[(long)r * width + j] = out[(long)r * width + j] + src[k * width + j];
    }
}

// Philox4x32-10 (crate::rng has the reference and its description).
inline uint4 nnc_philox(uint4 c, uint2 k) {
    for (int r = 0; r < 10; r++) {
        if (r > 0) { k.x += 0x9E3779B9u; k.y += 0xBB67AE85u; }
        const uint lo0 = 0xD2511F53u * c.x, hi0 = mul_hi(0xD2511F53u, c.x);
        const uint lo1 = 0xCD9E8D57u * c.z, hi1 = mul_hi(0xCD9E8D57u, c.z);
        c = (uint4)(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// out[i] = element i of a random draw: uniform (dist 1) or normal
// (dist 0), from the key's two whole numbers and the draw's salt.
__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void nnc_random(__global float *out, __global const float *key, const long count,
                const int dist, const uint salt) {
    const long i = get_global_id(0);
    if (i >= count) return;
    const uint2 k = (uint2)((uint)key[0], (uint)key[1]);
    const uint4 w = nnc_philox((uint4)((uint)i, (uint)(i >> 32), salt, 0u), k);
    const float unit = 1.0f / 16777216.0f;
    if (dist == 1) {
        out[i] = (float)(w.x >> 8) * unit;
    } else {
        const float u1 = (float)((w.x >> 8) + 1u) * unit;
        const float u2 = (float)(w.y >> 8) * unit;
        out[i] = sqrt(-2.0f * log(u1)) * cos(6.2831855f * u2);
    }
}

// dst[dst_at + i] += src[i]: a loop adding up its steps' results.
__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void nnc_add_into(__global float *dst, __global const float *src, const long dst_at, const long len) {
    const long g = get_global_id(0);
    if (g < len) dst[dst_at + g] = dst[dst_at + g] + src[g];
}

// The convolution's geometry: input [n, c, h, w], kernel [o, c, kh, kw],
// output [n, o, oh, ow], one stride and one zero padding.
#define NNC_CONV_ARGS const int n, const int c, const int h, const int w, const int o, \
    const int kh, const int kw, const int oh, const int ow, const int stride, const int pad

// y = conv(x, wt): one item per output, summing over (channel, row, column).
__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void nnc_conv_forward(__global float *y, __global const float *x, __global const float *wt,
                      NNC_CONV_ARGS) {
    const long g = get_global_id(0);
    if (g >= (long)n * o * oh * ow) return;
    const int ox = g % ow, oy = (g / ow) % oh, oc = (g / ((long)ow * oh)) % o;
    const int s = g / ((long)ow * oh * o);
    float acc = 0.0f;
    for (int ci = 0; ci < c; ci++)
        for (int ky = 0; ky < kh; ky++) {
            const int iy = oy * stride - pad + ky;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < kw; kx++) {
                const int ix = ox * stride - pad + kx;
                if (ix < 0 || ix >= w) continue;
                acc = fma(x[(((long)s * c + ci) * h + iy) * w + ix],
                          wt[(((long)oc * c + ci) * kh + ky) * kw + kx], acc);
            }
        }
    y[g] = acc;
}

// gx from (gy, wt): one item per input element, summing over the outputs
// whose window covers it.
__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void nnc_conv_back_input(__global float *gx, __global const float *gy, __global const float *wt,
                         NNC_CONV_ARGS) {
    const long g = get_global_id(0);
    if (g >= (long)n * c * h * w) return;
    const int ix = g % w, iy = (g / w) % h, ci = (g / ((long)w * h)) % c;
    const int s = g / ((long)w * h * c);
    float acc = 0.0f;
    for (int oc = 0; oc < o; oc++)
        for (int ky = 0; ky < kh; ky++) {
            const int ty = iy + pad - ky;
            if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
            for (int kx = 0; kx < kw; kx++) {
                const int tx = ix + pad - kx;
                if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
                acc = fma(gy[(((long)s * o + oc) * oh + ty / stride) * ow + tx / stride],
                          wt[(((long)oc * c + ci) * kh + ky) * kw + kx], acc);
            }
        }
    gx[g] = acc;
}

// gw from (x, gy): a work-group of 128 items per kernel weight, a tree
// over the samples and output positions.
__kernel __attribute__((reqd_work_group_size(128, 1, 1)))
void nnc_conv_back_weight(__global float *gw, __global const float *x, __global const float *gy,
                          NNC_CONV_ARGS) {
    __local float part[128];
    const long g = get_group_id(0);
    const int l = get_local_id(0);
    const int kx = g % kw, ky = (g / kw) % kh, ci = (g / ((long)kw * kh)) % c;
    const int oc = g / ((long)kw * kh * c);
    const long terms = (long)n * oh * ow;
    float acc = 0.0f;
    for (long t = l; t < terms; t += 128) {
        const int ox = t % ow, oy = (t / ow) % oh, s = t / ((long)ow * oh);
        const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
        if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
        acc = fma(x[(((long)s * c + ci) * h + iy) * w + ix],
                  gy[(((long)s * o + oc) * oh + oy) * ow + ox], acc);
    }
    part[l] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int v = 64; v > 0; v >>= 1) {
        if (l < v) part[l] = part[l] + part[l + v];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (l == 0) gw[g] = part[0];
}

// Pooling of planes of h×w by size×size windows moved by stride (no
// padding). Max: the first largest element of a window wins, a NaN
// counts as the largest (the interpreter's rule).
inline int nnc_beats(float v, float m) { return !isnan(m) && (v > m || isnan(v)); }

// One item per output: 0 for max, 1 for average.
__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void nnc_pool_forward(__global float *y, __global const float *x, const int op, const int planes,
                      const int h, const int w, const int oh, const int ow,
                      const int size, const int stride) {
    const long g = get_global_id(0);
    if (g >= (long)planes * oh * ow) return;
    const int j = g % ow, i = (g / ow) % oh;
    const long p = g / ((long)ow * oh);
    __global const float *win = x + p * h * w + (long)i * stride * w + (long)j * stride;
    float r;
    if (op == 0) {
        r = win[0];
        for (int a = 0; a < size; a++)
            for (int b = 0; b < size; b++)
                if (nnc_beats(win[a * w + b], r)) r = win[a * w + b];
    } else {
        r = 0.0f;
        for (int a = 0; a < size; a++)
            for (int b = 0; b < size; b++) r = r + win[a * w + b];
        r = r / (float)(size * size);
    }
    y[g] = r;
}

// gx from (x, gy): one item per input element, adding the gradients of
// the windows that cover it in row-major order (max: those it wins).
__kernel __attribute__((reqd_work_group_size(64, 1, 1)))
void nnc_pool_backward(__global float *gx, __global const float *x, __global const float *gy,
                       const int op, const int planes, const int h, const int w,
                       const int oh, const int ow, const int size, const int stride) {
    const long g = get_global_id(0);
    if (g >= (long)planes * h * w) return;
    const int xc = g % w, xr = (g / w) % h;
    const long p = g / ((long)w * h);
    __global const float *xp = x + p * h * w;
    __global const float *gyp = gy + p * oh * ow;
    const int i_lo = xr < size ? 0 : (xr - size) / stride + 1;
    const int j_lo = xc < size ? 0 : (xc - size) / stride + 1;
    const int i_hi = min(oh - 1, xr / stride), j_hi = min(ow - 1, xc / stride);
    const float area = (float)(size * size);
    float acc = 0.0f;
    for (int i = i_lo; i <= i_hi; i++)
        for (int j = j_lo; j <= j_hi; j++) {
            const int top = i * stride * w + j * stride;
            if (op == 0) {
                int best = top;
                for (int a = 0; a < size; a++)
                    for (int b = 0; b < size; b++)
                        if (nnc_beats(xp[top + a * w + b], xp[best])) best = top + a * w + b;
                if (best == xr * w + xc) acc = acc + gyp[i * ow + j];
            } else {
                acc = acc + gyp[i * ow + j] / area;
            }
        }
    gx[g] = acc;
}
"#;
