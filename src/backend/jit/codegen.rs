//! Loop kernels in Cranelift IR.
//!
//! A [`LoopKernel`] is an expression over strided loads, evaluated at every
//! point of an iteration space and stored (or, for a reduction, combined)
//! into the output at a strided offset. Its function has the signature
//! `fn(args: *const *mut f32, start: i64, end: i64)`: `args[0]` is the
//! output, `args[1 + k]` the buffer of access `k`, then the buffers of the
//! kernel's further stores ([`LoopKernel::also`]); the outermost loop runs
//! `start..end`, so callers can split it over threads. The innermost loop
//! runs on `f32x4` vectors when every access moves by 0 or 1 element along
//! it, [`UNROLL`] vectors per iteration while the row lasts, then single
//! vectors, then a scalar tail finishes the row. A value that stays put
//! along the row (a broadcast) is loaded once per row.

use super::math;
use crate::ir::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::schedule::{Expr, LoopKernel};
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, ExtFuncData, ExternalName, FuncRef, InstBuilder, MemFlagsData, Signature,
    Type, UserExternalName, UserFuncName, Value,
};
use cranelift_codegen::isa::{TargetFrontendConfig, TargetIsa};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_module::{FuncId, Linkage, Module, ModuleReloc, ModuleRelocTarget};
use std::sync::Arc;

struct Ctx {
    ptrs: Vec<Value>,
    out_ptr: Value,
    /// The buffers of the further stores.
    also_ptrs: Vec<Value>,
    /// The host's `powf`, declared when the kernel has a general power.
    powf: Option<FuncRef>,
}

/// A kernel's function, declared in its module by [`declare`]; its IR is
/// built and compiled by [`define_all`].
pub struct Declared {
    pub id: FuncId,
    pub kernel: Arc<LoopKernel>,
    /// Its name, for `--emit clif`.
    pub name: String,
}

/// Declares the function of a kernel named `name` in `module`.
pub fn declare<M: Module>(module: &mut M, name: &str) -> Result<FuncId, String> {
    module
        .declare_function(name, Linkage::Local, &signature(module.isa()))
        .map_err(|e| e.to_string())
}

/// A kernel's signature: `fn(args: *const *mut f32, start: i64, end: i64)`
/// (as `Module::make_signature` starts it, from the ISA alone).
fn signature(isa: &dyn TargetIsa) -> Signature {
    let mut sig = Signature::new(isa.default_call_conv());
    sig.params
        .push(AbiParam::new(isa.frontend_config().pointer_type()));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig
}

/// The host's `powf` as a kernel imports it: its index among the
/// module's functions and its signature.
#[derive(Clone)]
struct Powf {
    index: u32,
    sig: Signature,
}

/// What a kernel's code names: its own function (a relocation into its
/// own body) and the host's `powf`. Code compiled before its module is
/// known ([`compile_apart`]) names placeholders, which [`define_all`]
/// replaces with the ids of the module it is defined in.
struct Names {
    own: FuncId,
    powf: Option<Powf>,
}

/// The placeholder of a kernel's own function in code compiled apart
/// (the largest id: `u32::MAX` itself is the entity crate's reserved
/// value).
fn own_placeholder() -> FuncId {
    FuncId::from_u32(u32::MAX - 1)
}

/// The placeholder index of `powf` in code compiled apart.
const POWF_PLACEHOLDER: u32 = u32::MAX - 2;

/// A kernel's machine code: alignment, bytes and relocations (naming
/// [`Names`]), with its Cranelift IR as text where it was asked for.
pub struct Code {
    align: u64,
    pub(super) bytes: Vec<u8>,
    relocs: Vec<ModuleReloc>,
    text: Option<String>,
}

/// Builds the IR of `kernel` (its function named by `names`): touches no
/// module, so kernels are built side by side.
fn build(
    config: TargetFrontendConfig,
    sig: &Signature,
    fctx: &mut FunctionBuilderContext,
    k: &LoopKernel,
    names: &Names,
) -> Context {
    let ptr = config.pointer_type();
    let mut ctx = Context::new();
    ctx.func.signature = sig.clone();
    ctx.func.name = UserFuncName::user(0, names.own.as_u32());
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let [args, start, end] = b.block_params(entry) else {
            unreachable!()
        };
        let (args, start, end) = (*args, *start, *end);
        let flags = MemFlagsData::trusted();
        let out_ptr = b.ins().load(ptr, flags, args, 0);
        let ptrs = (0..k.accesses.len())
            .map(|i| b.ins().load(ptr, flags, args, 8 * (i as i32 + 1)))
            .collect();
        let also_ptrs = (0..k.also.len())
            .map(|j| {
                let at = 1 + k.accesses.len() + j;
                b.ins().load(ptr, flags, args, 8 * at as i32)
            })
            .collect();
        let powf = has_power(k).then(|| import_powf(&mut b, names.powf.as_ref()));
        let cx = Ctx {
            ptrs,
            out_ptr,
            also_ptrs,
            powf,
        };
        // Each access, the output and the further stores start at their
        // offsets (a slice read in place, a part of a concatenation).
        let offs: Vec<Value> = k
            .offsets
            .iter()
            .chain(std::iter::once(&k.out_offset))
            .chain(k.also.iter().map(|a| &a.offset))
            .map(|&o| b.ins().iconst(types::I64, o as i64))
            .collect();
        emit_dims(&mut b, k, &cx, 0, start, end, &offs);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(config);
    }
    ctx
}

/// Builds and compiles `kernel` for `isa`, its function and `powf` named
/// by `names`; with `name`, keeps its IR as text under that name.
fn compile(
    isa: &dyn TargetIsa,
    kernel: &LoopKernel,
    names: &Names,
    name: Option<&str>,
) -> Result<Code, String> {
    thread_local! {
        static FCTX: std::cell::RefCell<FunctionBuilderContext> =
            std::cell::RefCell::new(FunctionBuilderContext::new());
    }
    let (config, sig) = (isa.frontend_config(), signature(isa));
    let mut ctx = FCTX.with(|f| build(config, &sig, &mut f.borrow_mut(), kernel, names));
    let text = name.map(|n| format!("; {n}\n{}", ctx.func.display()));
    let align = ctx
        .compile(isa, &mut ControlPlane::default())
        .map_err(|e| format!("{:?}", e.inner))?
        .buffer
        .alignment as u64;
    // `compile` succeeded just above, and it leaves the code in the
    // context: an invariant of Cranelift's API.
    let code = ctx
        .compiled_code()
        .expect("a context holds its code once compiled");
    let relocs = code
        .buffer
        .relocs()
        .iter()
        .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, names.own))
        .collect();
    Ok(Code {
        align,
        bytes: code.code_buffer().to_vec(),
        relocs,
        text,
    })
}

/// Compiles `kernel` for `isa` before the module it goes into is known,
/// naming placeholders ([`Names`]) that [`define_all`] replaces.
pub fn compile_apart(isa: &dyn TargetIsa, kernel: &LoopKernel) -> Result<Code, String> {
    let powf = has_power(kernel).then(|| Powf {
        index: POWF_PLACEHOLDER,
        sig: powf_signature(isa),
    });
    let names = Names {
        own: own_placeholder(),
        powf,
    };
    compile(isa, kernel, &names, None)
}

/// Builds and compiles the declared kernels on every thread of the pool
/// (each function is independent; the module's ISA is shared read-only),
/// taking the code of those `early` compiled already, then defines them
/// in `module` in their order. With `clif`, returns each function's IR as
/// built, in order (`nnc compile --emit clif`).
pub fn define_all<M: Module>(
    module: &mut M,
    funcs: Vec<Declared>,
    clif: bool,
    early: Option<&super::precompile::Precompile>,
) -> Result<Vec<String>, String> {
    use rayon::prelude::*;
    let powf = match funcs.iter().any(|d| has_power(&d.kernel)) {
        true => Some(declare_powf(module)?),
        false => None,
    };
    let isa = module.isa();
    let compiled: Vec<Result<(FuncId, Code), String>> = funcs
        .into_par_iter()
        .map(|d| {
            let taken = early.filter(|_| !clif).and_then(|e| e.take(&d.kernel));
            let code = match taken {
                Some(code) => code?,
                None => {
                    let names = Names {
                        own: d.id,
                        powf: powf.clone().filter(|_| has_power(&d.kernel)),
                    };
                    compile(isa, &d.kernel, &names, clif.then_some(&d.name[..]))?
                }
            };
            Ok((d.id, code))
        })
        .collect();
    let mut texts = Vec::new();
    for c in compiled {
        let (id, code) = c?;
        let relocs: Vec<ModuleReloc> = code
            .relocs
            .into_iter()
            .map(|r| named(r, id, powf.as_ref()))
            .collect();
        module
            .define_function_bytes(id, code.align, &code.bytes, &relocs)
            .map_err(|e| format!("{e:?}"))?;
        texts.extend(code.text);
    }
    Ok(texts)
}

/// `r` with the placeholders of code compiled apart replaced by the
/// function `own` and the module's `powf`.
fn named(mut r: ModuleReloc, own: FuncId, powf: Option<&Powf>) -> ModuleReloc {
    match &mut r.name {
        ModuleRelocTarget::FunctionOffset(f, _) if *f == own_placeholder() => *f = own,
        ModuleRelocTarget::User {
            namespace: 0,
            index,
        } if *index == POWF_PLACEHOLDER => {
            // Code that calls `powf` has a power, and `define_all`
            // declares `powf` for every such kernel.
            *index = powf
                .expect("powf is declared for kernels with a power")
                .index;
        }
        _ => {}
    }
    r
}

/// Whether `k` raises to a general power (calls the host's `powf`).
fn has_power(k: &LoopKernel) -> bool {
    k.exprs
        .iter()
        .any(|e| matches!(e, Expr::Binary(BinaryOp::Pow, ..)))
}

/// The signature of [`math::powf`]: `fn(f32, f32) -> f32`.
fn powf_signature(isa: &dyn TargetIsa) -> Signature {
    let mut sig = Signature::new(isa.default_call_conv());
    sig.params.push(AbiParam::new(types::F32));
    sig.params.push(AbiParam::new(types::F32));
    sig.returns.push(AbiParam::new(types::F32));
    sig
}

/// Declares [`math::powf`] in `module`, imported.
fn declare_powf<M: Module>(module: &mut M) -> Result<Powf, String> {
    let sig = powf_signature(module.isa());
    let id = module
        .declare_function(math::POWF_SYMBOL, Linkage::Import, &sig)
        .map_err(|e| e.to_string())?;
    Ok(Powf {
        index: id.as_u32(),
        sig,
    })
}

/// Imports the declared `powf` into the function being built (as
/// `Module::declare_func_in_func` does, without the module).
fn import_powf(b: &mut FunctionBuilder, powf: Option<&Powf>) -> FuncRef {
    // `define_all` and `compile_apart` name powf whenever a kernel has a
    // power; `build` imports it only for those kernels.
    let p = powf.expect("powf is named for kernels with a power");
    let signature = b.func.import_signature(p.sig.clone());
    let name = b.func.declare_imported_user_function(UserExternalName {
        namespace: 0,
        index: p.index,
    });
    b.func.import_function(ExtFuncData {
        name: ExternalName::user(name),
        signature,
        // An import is not final: it may lie anywhere.
        colocated: false,
        patchable: false,
    })
}

/// `for i in lo..hi step` with a variable; calls `body(i)`. Returns the
/// variable, which holds the first index not visited once the loop ends.
fn emit_for(
    b: &mut FunctionBuilder,
    lo: Value,
    hi: Value,
    step: i64,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value),
) -> Variable {
    let i = b.declare_var(types::I64);
    b.def_var(i, lo);
    let head = b.create_block();
    let body_block = b.create_block();
    let exit = b.create_block();
    b.ins().jump(head, &[]);
    b.switch_to_block(head);
    let iv = b.use_var(i);
    let next = b.ins().iadd_imm_s(iv, step);
    let go = b.ins().icmp(IntCC::SignedLessThanOrEqual, next, hi);
    b.ins().brif(go, body_block, &[], exit, &[]);
    b.switch_to_block(body_block);
    let iv = b.use_var(i);
    body(b, iv);
    let iv = b.use_var(i);
    let next = b.ins().iadd_imm_s(iv, step);
    b.def_var(i, next);
    b.ins().jump(head, &[]);
    b.switch_to_block(exit);
    i
}

/// Emits the loop over dim `d` (from `lo` to `hi`), with the element
/// offsets of each access, the output and each further store (in that
/// order) at the loop's start.
fn emit_dims(
    b: &mut FunctionBuilder,
    k: &LoopKernel,
    cx: &Ctx,
    d: usize,
    lo: Value,
    hi: Value,
    offs: &[Value],
) {
    let last = k.dims.len() - 1;
    if d == last {
        emit_inner(b, k, cx, lo, hi, offs);
        return;
    }
    let strides: Vec<i64> = k
        .accesses
        .iter()
        .map(|s| s[d])
        .chain(std::iter::once(k.out[d]))
        .chain(k.also.iter().map(|a| a.strides[d]))
        .collect();
    let n_next = k.dims[d + 1] as i64;
    emit_for(b, lo, hi, 1, &mut |b, i| {
        let offs: Vec<Value> = offs
            .iter()
            .zip(&strides)
            .map(|(&o, &s)| {
                let t = b.ins().imul_imm_s(i, s);
                b.ins().iadd(o, t)
            })
            .collect();
        let zero = b.ins().iconst(types::I64, 0);
        let n = b.ins().iconst(types::I64, n_next);
        emit_dims(b, k, cx, d + 1, zero, n, &offs);
    });
}

fn address(b: &mut FunctionBuilder, base: Value, off: Value, i: Value, stride: i64) -> Value {
    let t = b.ins().imul_imm_s(i, stride);
    let e = b.ins().iadd(off, t);
    let bytes = b.ins().ishl_imm_u(e, 2);
    b.ins().iadd(base, bytes)
}

/// Vectors per iteration of the innermost loop's unrolled part: four
/// independent chains keep the vector units busy where one would wait on
/// each result (a reduction along the row keeps four running values).
const UNROLL: i64 = 4;

fn emit_inner(
    b: &mut FunctionBuilder,
    k: &LoopKernel,
    cx: &Ctx,
    lo: Value,
    hi: Value,
    offs: &[Value],
) {
    let last = k.dims.len() - 1;
    let out_off = offs[k.accesses.len()];
    let out_stride = k.out[last];
    let flags = MemFlagsData::new().with_notrap();
    // A reduction along this loop keeps running values in variables and
    // combines them into the output once, after the loop.
    let along = k.reduce.filter(|_| out_stride == 0);
    // An access that stays put along the row (a broadcast) is loaded once
    // per row: the kernel writes no place it reads at another point (the
    // verifier's rule 2), so the value cannot change in the row. The row
    // holds at least one point, so the place is inside the buffer.
    let fixed: Vec<Option<Value>> = k
        .accesses
        .iter()
        .enumerate()
        .map(|(a, s)| {
            (s[last] == 0 && k.dims[last] > 0).then(|| {
                let addr = address(b, cx.ptrs[a], offs[a], lo, 0);
                b.ins().load(types::F32, flags, addr, 0)
            })
        })
        .collect();
    // (type, lanes, copies per iteration): unrolled vectors, then single
    // vectors, then scalars for the tail.
    let mut parts: Vec<(Type, i64, i64)> = Vec::new();
    if k.vectorizable() {
        if last == 0 || k.dims[last] as i64 >= 4 * UNROLL {
            parts.push((types::F32X4, 4, UNROLL));
        }
        parts.push((types::F32X4, 4, 1));
    }
    parts.push((types::F32, 1, 1));
    let mut from = lo;
    let mut total: Option<Value> = None;
    // The unrolled part's running vector, carried into the single vectors'.
    let mut carried: Option<Value> = None;
    // The same values in every lane, for the vector parts.
    let splats: Vec<Option<Value>> = match k.vectorizable() {
        true => fixed
            .iter()
            .map(|f| f.map(|x| b.ins().splat(types::F32X4, x)))
            .collect(),
        false => Vec::new(),
    };
    for (ty, width, copies) in parts {
        let fixed = if ty.is_vector() { &splats } else { &fixed };
        let accs: Vec<Variable> = (0..copies).map(|_| b.declare_var(ty)).collect();
        if let Some(op) = along {
            for &acc in &accs {
                let init = match carried.take() {
                    Some(v) => v,
                    None => identity(b, op, ty),
                };
                b.def_var(acc, init);
            }
        }
        let iv = emit_for(b, from, hi, width * copies, &mut |b, i| {
            for (c, &acc) in accs.iter().enumerate() {
                let at = match c {
                    0 => i,
                    _ => b.ins().iadd_imm_s(i, width * c as i64),
                };
                let vs = eval(b, k, cx, ty, at, offs, fixed);
                // A kernel's expression list always ends with its value
                // (`kernel_over` builds at least one entry).
                let v = vs[vs.len() - 1];
                let addr = address(b, cx.out_ptr, out_off, at, out_stride);
                match k.reduce {
                    None => {
                        b.ins().store(flags, v, addr, 0);
                        // Every value is computed before anything is
                        // stored: a further output never aliases a buffer
                        // the kernel reads (the verifier's rule 2), and
                        // each point is written once.
                        for (j, st) in k.also.iter().enumerate() {
                            let off = offs[k.accesses.len() + 1 + j];
                            let to = address(b, cx.also_ptrs[j], off, at, st.strides[last]);
                            b.ins().store(flags, vs[st.expr], to, 0);
                        }
                    }
                    Some(op) if along.is_some() => {
                        let a = b.use_var(acc);
                        let c = combine(b, op, a, v);
                        b.def_var(acc, c);
                    }
                    Some(op) => {
                        let old = b.ins().load(ty, flags, addr, 0);
                        let c = combine(b, op, old, v);
                        b.ins().store(flags, c, addr, 0);
                    }
                }
            }
        });
        from = b.use_var(iv);
        if let Some(op) = along {
            // The running values, pairwise.
            let mut vals: Vec<Value> = accs.iter().map(|&a| b.use_var(a)).collect();
            while vals.len() > 1 {
                let mut next = Vec::with_capacity(vals.len().div_ceil(2));
                for p in vals.chunks(2) {
                    next.push(match *p {
                        [x, y] => combine(b, op, x, y),
                        _ => p[0],
                    });
                }
                vals = next;
            }
            let a = vals[0];
            if copies > 1 {
                carried = Some(a);
                continue;
            }
            let s = if ty.is_vector() {
                horizontal(b, op, a)
            } else {
                a
            };
            total = Some(match total {
                None => s,
                Some(t) => combine(b, op, t, s),
            });
        }
    }
    if let (Some(op), Some(t)) = (along, total) {
        let addr = address(b, cx.out_ptr, out_off, lo, 0);
        let old = b.ins().load(types::F32, flags, addr, 0);
        let c = combine(b, op, old, t);
        b.ins().store(flags, c, addr, 0);
    }
}

fn identity(b: &mut FunctionBuilder, op: ReduceOp, ty: Type) -> Value {
    let v = match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Max => f32::NEG_INFINITY,
    };
    math::cst(b, ty, v)
}

fn combine(b: &mut FunctionBuilder, op: ReduceOp, a: Value, v: Value) -> Value {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => b.ins().fadd(a, v),
        ReduceOp::Max => b.ins().fmax(a, v),
    }
}

fn horizontal(b: &mut FunctionBuilder, op: ReduceOp, v: Value) -> Value {
    let l: Vec<Value> = (0..4u8).map(|i| b.ins().extractlane(v, i)).collect();
    let x = combine(b, op, l[0], l[1]);
    let y = combine(b, op, l[2], l[3]);
    combine(b, op, x, y)
}

/// Evaluates the expression DAG at point `i` of the innermost loop, with
/// `fixed` the values of the accesses loaded once per row; returns the
/// value of every entry (the last is the kernel's value).
fn eval(
    b: &mut FunctionBuilder,
    k: &LoopKernel,
    cx: &Ctx,
    ty: Type,
    i: Value,
    offs: &[Value],
    fixed: &[Option<Value>],
) -> Vec<Value> {
    let flags = MemFlagsData::new().with_notrap();
    let last = k.dims.len() - 1;
    let mut v: Vec<Value> = Vec::with_capacity(k.exprs.len());
    for e in &k.exprs {
        let x = match *e {
            Expr::Load(a) => match fixed[a] {
                Some(x) => x,
                None => {
                    let s = k.accesses[a][last];
                    let addr = address(b, cx.ptrs[a], offs[a], i, s);
                    b.ins().load(ty, flags, addr, 0)
                }
            },
            Expr::Const(c) => math::cst(b, ty, c),
            Expr::Unary(op, a) => {
                let a = v[a];
                match op {
                    UnaryOp::Neg => b.ins().fneg(a),
                    UnaryOp::Abs => b.ins().fabs(a),
                    UnaryOp::Sqrt => b.ins().sqrt(a),
                    UnaryOp::Exp => math::exp(b, ty, a),
                    UnaryOp::Log => math::log(b, ty, a),
                    UnaryOp::Tanh => math::tanh(b, ty, a),
                    UnaryOp::Sigmoid => math::sigmoid(b, ty, a),
                }
            }
            Expr::Binary(op, x, y) => {
                let (x, y) = (v[x], v[y]);
                match op {
                    BinaryOp::Add => b.ins().fadd(x, y),
                    BinaryOp::Sub => b.ins().fsub(x, y),
                    BinaryOp::Mul => b.ins().fmul(x, y),
                    BinaryOp::Div => b.ins().fdiv(x, y),
                    BinaryOp::Max => b.ins().fmax(x, y),
                    BinaryOp::Min => b.ins().fmin(x, y),
                    BinaryOp::Pow => {
                        // compile() declares it for every kernel with a Pow.
                        let f = cx.powf.expect("powf is declared for kernels with a power");
                        math::pow(b, ty, f, x, y)
                    }
                }
            }
            Expr::PowI(x, p) => {
                let x = v[x];
                let mut r = math::cst(b, ty, 1.0);
                for _ in 0..p.unsigned_abs() {
                    r = b.ins().fmul(r, x);
                }
                if p < 0 {
                    let one = math::cst(b, ty, 1.0);
                    r = b.ins().fdiv(one, r);
                }
                r
            }
            Expr::Compare(op, x, y) => {
                let cc = match op {
                    CmpOp::Eq => FloatCC::Equal,
                    CmpOp::Ne => FloatCC::NotEqual,
                    CmpOp::Lt => FloatCC::LessThan,
                    CmpOp::Le => FloatCC::LessThanOrEqual,
                    CmpOp::Gt => FloatCC::GreaterThan,
                    CmpOp::Ge => FloatCC::GreaterThanOrEqual,
                };
                let c = b.ins().fcmp(cc, v[x], v[y]);
                let one = math::cst(b, ty, 1.0);
                let zero = math::cst(b, ty, 0.0);
                math::choose(b, ty, c, one, zero)
            }
            Expr::Select(c, x, y) => {
                let zero = math::cst(b, ty, 0.0);
                let c = b.ins().fcmp(FloatCC::NotEqual, v[c], zero);
                math::choose(b, ty, c, v[x], v[y])
            }
        };
        v.push(x);
    }
    v
}

#[cfg(test)]
pub(crate) mod tests {
    //! The `expect`s and asserts below are the test's own checks, on a
    //! source it writes itself: none is reachable from user input.
    use super::*;
    use crate::pipeline;
    use crate::schedule::Step;
    use cranelift_entity::SecondaryMap;

    /// The loop kernels of `src`'s outputs at B = 3.
    pub(crate) fn kernels(src: &str) -> Vec<Arc<LoopKernel>> {
        let c = pipeline::compile("k.nn", src, pipeline::Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let f = pipeline::fuse(&c.graph.expect("a graph"));
        let mut syms = SecondaryMap::new();
        for s in f.graph.syms.keys() {
            syms[s] = Some(3);
        }
        let sched = pipeline::schedule(&f, &syms).expect("schedules");
        sched
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Loop { kernel, .. } => Some(Arc::clone(kernel)),
                _ => None,
            })
            .collect()
    }

    /// A reloc's fields, comparable.
    fn fields(r: &ModuleReloc) -> (u32, String, String, i64) {
        (
            r.offset,
            format!("{:?}", r.kind),
            format!("{:?}", r.name),
            r.addend,
        )
    }

    /// Code compiled apart, its placeholders named, is the code compiled
    /// with the names known: the same bytes, alignment and relocations
    /// (a kernel that calls `powf` included).
    #[test]
    fn code_compiled_apart_is_the_code_compiled_in_place() {
        let isa = crate::backend::jit::host_isa().expect("an ISA");
        let ks = kernels(
            "input x: [B, 5]\ninput y: [B, 5]\n\
             output p = abs(x) ^ y + 1\n\
             output q = sum(exp(x) * y, axis = 1)\n",
        );
        assert!(ks.iter().any(|k| has_power(k)), "a kernel calls powf");
        let powf = Powf {
            index: 3,
            sig: powf_signature(&*isa),
        };
        for k in &ks {
            let own = FuncId::from_u32(7);
            let names = Names {
                own,
                powf: has_power(k).then(|| powf.clone()),
            };
            let here = compile(&*isa, k, &names, None).expect("compiles");
            let apart = compile_apart(&*isa, k).expect("compiles");
            assert_eq!(apart.bytes, here.bytes);
            assert_eq!(apart.align, here.align);
            let named: Vec<_> = apart
                .relocs
                .into_iter()
                .map(|r| fields(&named(r, own, Some(&powf))))
                .collect();
            let want: Vec<_> = here.relocs.iter().map(fields).collect();
            assert_eq!(named, want);
            if has_power(k) {
                assert!(!want.is_empty(), "the call to powf is relocated");
            }
        }
    }
}
