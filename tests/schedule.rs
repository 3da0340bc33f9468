//! The schedule verifier rejects a deliberately corrupted schedule of each
//! kind it guards against, and accepts what the scheduler builds.

mod common;

use cranelift_entity::SecondaryMap;
use nnc::pipeline::{self, Stage};
use nnc::schedule::{Schedule, Step};
use std::sync::Arc;

/// A matmul, an elementwise chain and a state update, for B = 4.
fn schedule() -> Schedule {
    let src = "input x: [B, 3]\n\
               param w: [3, 5] = uniform(-1, 1, seed = 1)\n\
               state s: [5] = zeros()\n\
               output y = tanh(x @ w + 1)\n\
               output m = sum(assign(s, mean(x @ w, axis = 0)))\n";
    schedule_of("sched.nn", src)
}

/// The schedule of `src` (one symbolic dimension, B) for B = 4, verified.
fn schedule_of(name: &str, src: &str) -> Schedule {
    let c = pipeline::compile(name, src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let mut syms = SecondaryMap::new();
    syms[g.syms.keys().next().expect("B")] = Some(4);
    let s = pipeline::schedule(&pipeline::fuse(&g), &syms).expect("schedules");
    s.verify().expect("verifies");
    s
}

fn rejects(s: &Schedule, what: &str) -> String {
    let e = s.verify().expect_err(what).to_string();
    eprintln!("{what}: {e}");
    e
}

#[test]
fn a_built_schedule_verifies() {
    let s = schedule();
    s.verify().expect("verifies");
    assert!(s.steps.iter().any(|st| matches!(st, Step::MatMul { .. })));
    assert!(s.steps.iter().any(|st| matches!(st, Step::Loop { .. })));
    assert_eq!(s.updates.len(), 1);
}

#[test]
fn an_access_out_of_its_buffer_is_rejected() {
    let mut s = schedule();
    let step = s
        .steps
        .iter_mut()
        .find_map(|st| match st {
            Step::Loop { kernel, .. } => Some(Arc::make_mut(kernel)),
            _ => None,
        })
        .expect("a loop kernel");
    step.dims[0] += 1;
    let e = rejects(&s, "an iteration space one row too long");
    assert!(e.contains("reaches element"), "{e}");
}

#[test]
fn an_output_offset_past_its_buffer_or_under_a_reduction_is_rejected() {
    // The first loop kernel of `s` that is (or is not) a reduction.
    fn first_loop(s: &mut Schedule, reduction: bool) -> &mut nnc::schedule::LoopKernel {
        s.steps
            .iter_mut()
            .find_map(|st| match st {
                Step::Loop { kernel, init, .. } if init.is_some() == reduction => {
                    Some(Arc::make_mut(kernel))
                }
                _ => None,
            })
            .expect("a loop kernel of that kind")
    }
    let src = "input x: [B, 3]\noutput y = tanh(x) * 2\noutput m = sum(x, axis = 0)\n";
    let mut s = schedule_of("offsets.nn", src);
    first_loop(&mut s, false).out_offset = 1;
    let e = rejects(&s, "an elementwise output one element too far");
    assert!(e.contains("the output reaches element"), "{e}");
    let mut s = schedule_of("offsets.nn", src);
    first_loop(&mut s, true).out_offset = 1;
    let e = rejects(&s, "a reduction from an offset");
    assert!(e.contains("from an offset"), "{e}");
}

#[test]
fn an_access_offset_past_its_buffer_is_rejected() {
    let mut s = schedule();
    let (kernel, args) = s
        .steps
        .iter_mut()
        .find_map(|st| match st {
            Step::Loop { kernel, args, .. } if !args.is_empty() => {
                Some((Arc::make_mut(kernel), args.clone()))
            }
            _ => None,
        })
        .expect("a loop kernel that reads a buffer");
    kernel.offsets[0] += 1;
    let e = rejects(&s, "a slice read one element past its operand");
    assert!(e.contains("access 0 reaches element"), "{e}");
    assert!(e.contains(&args[0].to_string()), "{e}");
}

/// A loop kernel reads its output's buffer only at the point it writes:
/// the JIT loads a value broadcast along a row once per row, which would
/// miss the kernel's own writes to that place.
#[test]
fn a_loop_reading_its_output_at_other_points_is_rejected() {
    let src = "input x: [B, 3]\noutput y = x - mean(x, axis = -1, keepdims = true)\n";
    // The subtraction: an access broadcast along the row, the output not.
    let broadcast = |s: &Schedule| -> Option<(usize, usize)> {
        s.steps.iter().enumerate().find_map(|(i, st)| match st {
            Step::Loop { kernel, .. } => {
                let last = kernel.dims.len() - 1;
                let k = kernel.accesses.iter().position(|a| a[last] == 0)?;
                (kernel.out[last] != 0).then_some((i, k))
            }
            _ => None,
        })
    };
    let mut s = schedule_of("self.nn", src);
    let (i, k) = broadcast(&s).expect("a kernel reading a broadcast");
    if let Step::Loop { args, out, .. } = &mut s.steps[i] {
        args[k] = *out;
    }
    let e = rejects(&s, "a broadcast read of the kernel's own output");
    assert!(e.contains(&format!("access {k} reads places")), "{e}");
    // Read at the very point written (a GEMM epilogue's accumulator): fine.
    let mut s = schedule_of("self.nn", src);
    let (i, _) = broadcast(&s).expect("a kernel reading a broadcast");
    if let Step::Loop {
        kernel, args, out, ..
    } = &mut s.steps[i]
    {
        let kernel = Arc::make_mut(kernel);
        let k = kernel
            .accesses
            .iter()
            .position(|a| *a == kernel.out)
            .expect("an access walking as the output does");
        kernel.offsets[k] = kernel.out_offset;
        args[k] = *out;
    }
    s.verify().expect("a read at the point written verifies");
}

#[test]
fn a_gemm_writing_its_operand_is_rejected() {
    let mut s = schedule();
    for st in s.steps.iter_mut() {
        if let Step::MatMul { a, out, .. } = st {
            *out = *a;
        }
    }
    let e = rejects(&s, "a GEMM whose output is its left operand");
    assert!(
        e.contains("writes") && e.contains("which it also reads"),
        "{e}"
    );
}

#[test]
fn a_gemm_operand_out_of_range_is_rejected() {
    let mut s = schedule();
    for st in s.steps.iter_mut() {
        if let Step::MatMul { b_offs, .. } = st {
            b_offs[0] += 1;
        }
    }
    let e = rejects(&s, "a GEMM reading one float past its operand");
    assert!(e.contains("operand b reaches element"), "{e}");
}

#[test]
fn an_update_aliasing_a_parameter_is_rejected() {
    let mut s = schedule();
    let w = s.params[0].1;
    s.updates[0].1 = w;
    let e = rejects(&s, "an update taking a parameter's buffer");
    assert!(e.contains("belongs to a leaf or another update"), "{e}");
}

/// Rule 7: leaves' buffers are read only (a library's execution contexts
/// share the weights by binding them; a loop binds its operands).
#[test]
fn a_step_writing_a_parameter_is_rejected() {
    let src = "input x: [B, 5]\n\
               param w: [5] = uniform(-1, 1, seed = 1)\n\
               output y = tanh(w) * 2\n";
    let mut s = schedule_of("leaf.nn", src);
    // A loop whose output has the length of a parameter writes that
    // parameter instead.
    let lens = s.bufs.clone();
    let (out, p) = s
        .steps
        .iter_mut()
        .find_map(|st| match st {
            Step::Loop { out, .. } => {
                let p = s.params.iter().find(|&&(_, b)| lens[b] == lens[*out])?;
                Some((out, p.1))
            }
            _ => None,
        })
        .expect("a loop of a parameter's length");
    *out = p;
    let e = rejects(&s, "a loop writing a parameter");
    assert!(e.contains("the buffer of a leaf"), "{e}");
}

#[test]
fn a_missing_buffer_is_rejected() {
    let mut s = schedule();
    let bogus = cranelift_entity::EntityRef::new(s.bufs.len() + 3);
    if let Some(Step::Loop { out, .. }) = s
        .steps
        .iter_mut()
        .find(|st| matches!(st, Step::Loop { .. }))
    {
        *out = bogus;
    }
    let e = rejects(&s, "a step writing a buffer that does not exist");
    assert!(e.contains("does not exist"), "{e}");
}

/// `gemm-epilogue`: a dense layer's bias (the sum its activation reads)
/// becomes the product's epilogue, and an epilogue that writes one of the
/// product's operands is rejected.
#[test]
fn a_dense_layer_gets_an_epilogue_and_a_bad_one_is_rejected() {
    let src = "input x: [B, 3]\n\
               param w: [3, 5] = uniform(-1, 1, seed = 1)\n\
               param b: [5] = uniform(-1, 1, seed = 2)\n\
               output y = relu(x @ w + b)\n";
    let mut s = schedule_of("dense.nn", src);
    let Step::MatMul {
        a,
        epilogue: Some(e),
        ..
    } = &mut s.steps[0]
    else {
        panic!("a GEMM with an epilogue: {:?}", s.steps)
    };
    e.out = *a;
    let e = rejects(&s, "an epilogue writing the GEMM's left operand");
    assert!(e.contains("epilogue"), "{e}");
}

/// Layers of one width stacked: the second layer's activation could reuse
/// the buffer of the first layer's output, which its product reads, and
/// the epilogue would then write the GEMM's operand. The buffer plan keeps
/// a product's operands live through the elementwise kernel after it, so
/// every layer's bias and activation is its product's epilogue.
#[test]
fn stacked_layers_of_one_width_each_get_an_epilogue() {
    let src = "input x: [B, 6]\n\
               param w1: [6, 6] = uniform(-1, 1, seed = 1)\n\
               param b1: [6] = uniform(-1, 1, seed = 2)\n\
               param w2: [6, 6] = uniform(-1, 1, seed = 3)\n\
               param b2: [6] = uniform(-1, 1, seed = 4)\n\
               param w3: [6, 6] = uniform(-1, 1, seed = 5)\n\
               param b3: [6] = uniform(-1, 1, seed = 6)\n\
               let h1 = relu(x @ w1 + b1)\n\
               let h2 = relu(h1 @ w2 + b2)\n\
               output y = tanh(h2 @ w3 + b3)\n";
    let s = schedule_of("stack.nn", src);
    let epilogues = s
        .steps
        .iter()
        .filter(|st| {
            matches!(
                st,
                Step::MatMul {
                    epilogue: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!((epilogues, s.steps.len()), (3, 3), "{:?}", s.steps);
}

#[test]
fn a_chain_of_joins_along_one_axis_writes_each_part_once() {
    // concat(concat(x, tanh(x)), x · 2) along the columns: fusion's
    // `concat-chain` writes the inner join's parts straight into the outer
    // one, and `concat-in-place` has the kernels of tanh(x) and x · 2
    // write their values into their columns: one step copies x, the
    // input, and the values are written from columns 3 and 6, both by
    // one loop kernel (`sibling-loops`: the two are over one shape, and
    // nothing reads tanh(x) before x · 2 is computed).
    let src = "input x: [B, 3]\n\
               output y = concat(concat(x, tanh(x), axis = 1), x * 2, axis = 1)\n";
    let c = pipeline::compile("chain.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let mut syms = SecondaryMap::new();
    syms[g.syms.keys().next().expect("B")] = Some(4);
    let s = pipeline::schedule(&pipeline::fuse(&g), &syms).expect("schedules");
    s.verify().expect("verifies");
    let copies: Vec<usize> = s
        .steps
        .iter()
        .filter_map(|st| match st {
            Step::Copy { parts, .. } => Some(parts.len()),
            _ => None,
        })
        .collect();
    assert_eq!(copies, vec![1]);
    let loops: Vec<_> = s
        .steps
        .iter()
        .filter_map(|st| match st {
            Step::Loop { kernel, .. } => Some(kernel),
            _ => None,
        })
        .collect();
    assert_eq!(loops.len(), 1, "{:?}", s.steps);
    let mut placed: Vec<(usize, Vec<i64>)> =
        std::iter::once((loops[0].out_offset, loops[0].out.clone()))
            .chain(loops[0].also.iter().map(|a| (a.offset, a.strides.clone())))
            .collect();
    placed.sort();
    assert_eq!(placed, vec![(3, vec![9, 1]), (6, vec![9, 1])]);
    // The JIT runs those steps; the interpreter (the oracle) joins node by
    // node.
    let mut inputs = SecondaryMap::new();
    inputs[g.inputs.keys().next().expect("x")] = Some(nnc::tensor::Tensor::new(
        vec![4, 3],
        (0..12).map(|i| i as f32 - 5.5).collect(),
    ));
    let run = |kind| {
        let mut params = nnc::backend::interp::init_params(&g, 0);
        nnc::backend::Engine::new(kind, &g)
            .run(&mut params, &inputs)
            .expect("runs")[0]
            .clone()
    };
    let (jit, oracle) = (
        run(nnc::backend::BackendKind::Jit),
        run(nnc::backend::BackendKind::Interp),
    );
    assert_eq!(jit.shape, vec![4, 9]);
    assert_eq!(jit.data, oracle.data);
}

#[test]
fn slices_read_by_loop_kernels_are_read_in_place_and_agree_with_the_interpreter() {
    // `t` is stored (slices are not loop kernels); its slices are read by
    // elementwise kernels and a reduction, directly, through a reshape
    // that splits a dim, through one that drops a unit dim, through a
    // slice of a slice, along the first axis and broadcast, and joined
    // by concatenations: fusion's `slice-in-place` reads them all from t's
    // buffer at their offsets, and the joins copy the slices into their
    // parts row by row (block copies: `LoopKernel::as_blocks`; q's second
    // part, a product, is written there by its own kernel:
    // `concat-in-place`). `r`, a root, is copied by a block copy too.
    let src = "input x: [4, 12]\n\
               let t = x * 2 - 1\n\
               let a = slice(t, 1, 2, 8)\n\
               let b = reshape(slice(t, 1, 0, 6), [4, 2, 3])\n\
               let c = reshape(slice(slice(b, 1, 1, 2), 0, 1, 3), [2, 3])\n\
               output y = a * 3 + reshape(reshape(slice(t, 1, 6, 12), [4, 1, 6]), [4, 6])\n\
               output z = sum(c, axis = 0) + slice(t, 1, 9, 12)\n\
               output w = mean(slice(t, 0, 1, 3), axis = 0)\n\
               output r = slice(t, 1, 3, 5)\n\
               output q = concat(slice(t, 1, 0, 2), slice(t, 1, 10, 12) * 2, 1)\n\
               output p = concat(slice(t, 0, 0, 1), slice(t, 0, 2, 4), 0)\n";
    let c = pipeline::compile("slices.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let s = pipeline::schedule(&pipeline::fuse(&g), &SecondaryMap::new()).expect("schedules");
    s.verify().expect("verifies");
    let copies = s
        .steps
        .iter()
        .filter(|st| matches!(st, Step::Copy { .. }))
        .count();
    // r; q's first part; p's two parts.
    assert_eq!(copies, 4, "{:?}", s.steps);
    let blocks: Vec<(usize, usize, usize, usize, usize, usize)> = s
        .steps
        .iter()
        .flat_map(|st| match st {
            Step::Copy { parts, .. } => parts.clone(),
            _ => Vec::new(),
        })
        .map(|(_, b)| {
            (
                b.count,
                b.len,
                b.src_at,
                b.src_stride,
                b.dst_at,
                b.dst_stride,
            )
        })
        .collect();
    // q's first part: columns 0..2 of t's 4 rows into columns 0..2 of q's.
    assert!(blocks.contains(&(4, 2, 0, 12, 0, 4)), "{blocks:?}");
    // p's second part: t's rows 2..4, whole, after p's first row.
    assert!(blocks.contains(&(1, 24, 24, 24, 12, 24)), "{blocks:?}");
    let into_parts = s
        .steps
        .iter()
        .filter(|st| matches!(st, Step::Loop { kernel, .. } if kernel.out_offset > 0))
        .count();
    // q's second part, at offset 2.
    assert_eq!(into_parts, 1, "{:?}", s.steps);
    let offsets: Vec<usize> = s
        .steps
        .iter()
        .flat_map(|st| match st {
            Step::Loop { kernel, .. } => kernel.offsets.clone(),
            _ => Vec::new(),
        })
        .filter(|&o| o > 0)
        .collect();
    assert!(offsets.contains(&2) && offsets.contains(&15), "{offsets:?}");
    agrees_with_the_interpreter(
        &g,
        nnc::tensor::Tensor::new(
            vec![4, 12],
            (0..48).map(|i| (i as f32 * 0.37).sin()).collect(),
        ),
    );
}

/// Every compiled backend's outputs of `g`, fed `x` as its one input,
/// agree with the interpreter's to 1e-6 (relative where above 1).
/// [`agrees_with_the_interpreter`] on a [4, 6] input whose `i`-th
/// element is `f(i)`.
fn agrees_on_4x6(g: &nnc::ir::Graph, f: impl Fn(f32) -> f32) {
    let x = nnc::tensor::Tensor::new(vec![4, 6], (0..24).map(|i| f(i as f32)).collect());
    agrees_with_the_interpreter(g, x);
}

fn agrees_with_the_interpreter(g: &nnc::ir::Graph, x: nnc::tensor::Tensor) {
    let mut inputs = SecondaryMap::new();
    inputs[g.inputs.keys().next().expect("x")] = Some(x);
    let run = |kind| {
        let mut params = nnc::backend::interp::init_params(g, 0);
        nnc::backend::Engine::new(kind, g)
            .run(&mut params, &inputs)
            .expect("runs")
    };
    let oracle = run(nnc::backend::BackendKind::Interp);
    for kind in common::compiled_backends() {
        let got = run(kind);
        assert_eq!(got.len(), oracle.len());
        for (o, (x, want)) in got.iter().zip(&oracle).enumerate() {
            assert_eq!(x.shape, want.shape, "{kind:?} output {o}");
            for (i, (p, q)) in x.data.iter().zip(&want.data).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-6 * q.abs().max(1.0),
                    "{kind:?} output {o}[{i}]: {p}, the interpreter {q}"
                );
            }
        }
    }
}

/// The JIT compiles each distinct loop kernel once, keyed by the kernel:
/// equal kernels (over other buffers) are one key, and kernels that differ
/// in anything, a constant's sign included, are two.
#[test]
fn loop_kernels_are_equal_when_every_part_is_constants_bit_for_bit() {
    use nnc::ir::BinaryOp;
    use nnc::schedule::{Expr, LoopKernel, Store};
    use std::hash::{BuildHasher, RandomState};
    let kernel = |c: f32, out_offset: usize| LoopKernel {
        dims: vec![4, 8],
        accesses: vec![vec![8, 1]],
        offsets: vec![0],
        out: vec![8, 1],
        out_offset,
        exprs: vec![
            Expr::Load(0),
            Expr::Const(c),
            Expr::Binary(BinaryOp::Mul, 0, 1),
        ],
        reduce: None,
        also: Vec::new(),
    };
    let hasher = RandomState::new();
    let (a, b) = (kernel(0.0, 0), kernel(0.0, 0));
    assert!(a == b && hasher.hash_one(&a) == hasher.hash_one(&b));
    assert!(a != kernel(-0.0, 0), "x * 0.0 and x * -0.0 differ in sign");
    assert!(a != kernel(0.0, 3), "another output offset");
    let mut storing = kernel(0.0, 0);
    storing.also.push(Store {
        expr: 0,
        strides: vec![8, 1],
        offset: 0,
    });
    assert!(a != storing, "a further store");
    let mut placed = storing.clone();
    placed.also[0].offset = 4;
    assert!(placed != storing, "a further store from another element");
    let nan = kernel(f32::NAN, 0);
    assert!(
        nan == nan.clone(),
        "the same NaN constant is the same kernel"
    );
}

#[test]
fn values_stored_alongside_a_later_kernel_agree_with_the_interpreter() {
    // m and v are roots (an optimizer's moments) that the update u reads
    // at its own index: fusion's `store-alongside` computes both in u's
    // kernel, which stores them as further outputs; the sum over m runs
    // after it and reads m's buffer. n, which u does not read and nothing
    // reads before u, is computed there too (`sibling-loops`), and so is
    // t, which reads n, although the sums come between u and t (the
    // rule's other way).
    let src = "input x: [4, 6]\n\
               param w: [4, 6] = uniform(-1, 1, seed = 1)\n\
               let m = x * 0.9 + w\n\
               let v = x * x * 0.5 - w\n\
               let n = x - 1\n\
               output mo = m\n\
               output vo = v\n\
               output u = w - m / (sqrt(v * v) + 0.001)\n\
               output r = sum(m, axis = 0)\n\
               output no = n\n\
               output s = sum(n, axis = 1)\n\
               output t = n * 3\n";
    let c = pipeline::compile("alongside.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let fused = pipeline::fuse(&g);
    // (Fusion keeps its log only under NNC_LOG=fusion: the rule's
    // decisions are read from the carriers it records.)
    let carried: Vec<_> = fused
        .fusion
        .carrier
        .iter()
        .filter_map(|(a, c)| c.map(|c| (a, c)))
        .collect();
    assert_eq!(carried.len(), 4, "{carried:?}");
    assert!(
        carried.iter().all(|&(_, c)| c == carried[0].1),
        "{carried:?}"
    );
    let s = pipeline::schedule(&fused, &SecondaryMap::new()).expect("schedules");
    s.verify().expect("verifies");
    let alongside: Vec<usize> = s
        .steps
        .iter()
        .filter_map(|st| match st {
            Step::Loop { also, kernel, .. } if !also.is_empty() => {
                assert_eq!(kernel.also.len(), also.len());
                Some(also.len())
            }
            _ => None,
        })
        .collect();
    assert_eq!(alongside, vec![4], "{:?}", s.steps);
    agrees_on_4x6(&g, |i| (i * 0.61).cos());
    // A further output that is a buffer the kernel reads, or its own
    // output, is rejected.
    let at = s
        .steps
        .iter()
        .position(|st| matches!(st, Step::Loop { also, .. } if !also.is_empty()))
        .expect("the carrying step");
    for corrupt in ["read", "out"] {
        let mut bad = s.clone();
        let Step::Loop {
            also, args, out, ..
        } = &mut bad.steps[at]
        else {
            unreachable!()
        };
        also[0] = if corrupt == "read" { args[0] } else { *out };
        let e = rejects(&bad, corrupt);
        assert!(e.contains("also reads") || e.contains("twice"), "{e}");
    }
}

#[test]
fn sibling_loops_join_only_where_no_reader_comes_between() {
    // a, b and c are independent loops over one shape. A reduction reads
    // a before b's kernel: a keeps its own kernel. b, which nothing reads
    // before c runs, is computed and stored in one kernel with c
    // (`sibling-loops`). Ten more independent values over one shape
    // share kernels of at most eight stores each.
    let mut src = String::from(
        "input x: [4, 6]\n\
         let a = x * 2 + 1\n\
         output s = sum(a, axis = 1)\n\
         output ao = a\n\
         let b = x * x - 3\n\
         let c = sigmoid(x) * 0.5\n\
         output bo = b\n\
         output co = c\n",
    );
    for k in 0..10 {
        src.push_str(&format!("output p{k} = x * {k}.5 + x\n"));
    }
    let c = pipeline::compile("siblings.nn", &src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let fused = pipeline::fuse(&g);
    let node = |name: &str| {
        g.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.node)
            .expect("an output")
    };
    let carrier = &fused.fusion.carrier;
    assert_eq!(carrier[node("ao")], None, "a reduction reads a before b");
    // (c, and b with it, join the later values in turn.)
    assert!(carrier[node("bo")].is_some());
    assert_eq!(carrier[node("bo")], carrier[node("co")]);
    let s = pipeline::schedule(&fused, &SecondaryMap::new()).expect("schedules");
    s.verify().expect("verifies");
    let stores: Vec<usize> = s
        .steps
        .iter()
        .filter_map(|st| match st {
            Step::Loop {
                also, init: None, ..
            } => Some(1 + also.len()),
            _ => None,
        })
        .collect();
    assert!(stores.iter().all(|&n| n <= 8), "{stores:?}");
    assert_eq!(stores.iter().sum::<usize>(), 13, "{stores:?}");
    agrees_on_4x6(&g, |i| (i * 0.37).sin() * 2.0);
}

#[test]
fn a_sibling_joins_an_earlier_kernel_only_when_what_it_reads_is_ready() {
    // b reads x and d (computed in a's kernel, which a reduction reads
    // too); a reduction of a comes between a and b, so a cannot move to
    // b: b is computed by a's kernel instead (`sibling-loops`, the other
    // way). c reads the reduction, which is not ready when a's kernel
    // runs, and e reads a itself, which a's kernel computes last: both
    // keep their own kernels.
    for (src, joins) in [
        ("output bo = d * 3 - x\n", true),
        ("output c = x / (s + 10)\n", false),
        ("output e = a * 3 - x\n", false),
    ] {
        let src = format!(
            "input x: [4, 6]\n\
             let d = x * x\n\
             let a = d * 2 + 1\n\
             let s = sum(a, axis = 0)\n\
             output so = s\n\
             output r = sum(d, axis = 1)\n\
             output ao = a\n\
             {src}"
        );
        let c = pipeline::compile("earlier.nn", &src, Stage::Ir);
        assert!(!c.diags.has_errors(), "{}", c.render(false));
        let g = c.graph.expect("graph");
        let fused = pipeline::fuse(&g);
        let last = g.outputs.last().expect("an output").node;
        let a = g.outputs[2].node;
        let want = if joins { Some(a) } else { None };
        assert_eq!(fused.fusion.carrier[last], want, "{src}");
        let s = pipeline::schedule(&fused, &SecondaryMap::new()).expect("schedules");
        s.verify().expect("verifies");
        agrees_on_4x6(&g, |i| (i * 0.53).cos() * 2.0);
    }
}

#[test]
fn a_part_written_by_an_earlier_kernel_has_its_concatenation_s_buffer_from_there() {
    // The part d · 3 − x of y is computed by the kernel of x · 3 (which
    // v's join writes in place), earlier than its own place in the
    // order (`sibling-loops`, the other way). y must take its buffer
    // there: at the part's own place, v's buffer (as long as y, read last
    // by the sum vs before it) is free and would be taken, though the
    // earlier kernel wrote into it while v was live.
    let src = "input x: [4, 6]\n\
               param w: [6, 6] = uniform(-1, 1, seed = 1)\n\
               let d = x * x\n\
               let a = d * 2 + 1\n\
               let v = concat(x, x * 3, axis = 1)\n\
               output so = sum(a, axis = 0)\n\
               output r = sum(d, axis = 1)\n\
               output ao = a\n\
               output vs = sum(v, axis = 1)\n\
               let y = concat(d * 3 - x, x @ w, axis = 1)\n\
               output ys = sum(y, axis = 1)\n";
    let c = pipeline::compile("part.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let fused = pipeline::fuse(&g);
    let hoisted = g
        .nodes
        .keys()
        .filter(|&n| fused.fusion.carrier[n].is_some() && fused.fusion.placed[n].is_some())
        .count();
    assert!(hoisted >= 1, "a placed part is computed by another kernel");
    let s = pipeline::schedule(&fused, &SecondaryMap::new()).expect("schedules");
    s.verify().expect("verifies");
    agrees_on_4x6(&g, |i| (i * 0.41).sin() + 0.5);
}

#[test]
fn a_value_stored_alongside_into_a_concatenation_is_written_in_its_place() {
    // s = sigmoid(x) is read by u's kernel and by the join: stored, and
    // computed in u's kernel (`store-alongside`). u, read by the join
    // alone, is written into its columns (`concat-in-place`), and so is
    // s, whose buffer no kernel but the join reads: the one loop kernel
    // writes both halves of y, and no copy is left. (300 columns: the
    // JIT runs it as a wide kernel, in blocks.)
    let src = "input x: [B, 300]\n\
               let s = sigmoid(x)\n\
               output y = concat(s * 2 + x, s, axis = 1)\n";
    let s = schedule_of("placed.nn", src);
    let [Step::Loop {
        kernel, out, also, ..
    }] = &s.steps[..]
    else {
        panic!("one loop kernel: {:?}", s.steps)
    };
    assert_eq!(also[..], [*out]);
    assert_eq!((kernel.out_offset, kernel.also[0].offset), (0, 300));
    assert_eq!(kernel.out, [600, 1]);
    assert_eq!(kernel.also[0].strides, [600, 1]);
    let c = pipeline::compile("placed.nn", src, Stage::Ir);
    let g = c.graph.expect("graph");
    agrees_with_the_interpreter(
        &g,
        nnc::tensor::Tensor::new(
            vec![4, 300],
            (0..1200).map(|i| (i as f32 * 0.83).sin() * 3.0).collect(),
        ),
    );
    // Two stores into one place of the buffer, or places that a row of
    // one reaches into the other's, are rejected.
    for (offset, strides) in [(0, vec![600, 1]), (2, vec![600, 1]), (300, vec![300, 1])] {
        let mut bad = s.clone();
        let Step::Loop { kernel, .. } = &mut bad.steps[0] else {
            unreachable!()
        };
        let kernel = Arc::make_mut(kernel);
        kernel.also[0].offset = offset;
        kernel.also[0].strides = strides;
        let e = rejects(&bad, "overlapping stores");
        assert!(e.contains("twice") || e.contains("reaches"), "{e}");
    }
}

/// Every element `kernel` (a copy of its one access) writes, as
/// (output index, source index), walked point by point.
fn copied_elements(k: &nnc::schedule::LoopKernel) -> Vec<(usize, usize)> {
    let points: usize = k.dims.iter().product();
    (0..points)
        .map(|mut p| {
            let (mut o, mut a) = (k.out_offset as i64, k.offsets[0] as i64);
            for d in (0..k.dims.len()).rev() {
                let i = (p % k.dims[d]) as i64;
                p /= k.dims[d];
                o += i * k.out[d];
                a += i * k.accesses[0][d];
            }
            (o as usize, a as usize)
        })
        .collect()
}

#[test]
fn a_copy_kernel_is_a_block_copy_where_its_rows_are_contiguous() {
    use nnc::schedule::{Expr, LoopKernel};
    let copy = |dims: Vec<usize>, out: Vec<i64>, acc: Vec<i64>, exprs: Vec<Expr>| LoopKernel {
        dims,
        accesses: vec![acc],
        offsets: vec![3],
        out,
        out_offset: 5,
        exprs,
        reduce: None,
        also: Vec::new(),
    };
    // [2, 3, 4] read from rows 8 apart into rows 4 apart: the two outer
    // dims walk on as one (6 rows), the inner one is each row.
    let k = copy(
        vec![2, 3, 4],
        vec![12, 4, 1],
        vec![24, 8, 1],
        vec![Expr::Load(0)],
    );
    let b = k.as_blocks().expect("rows of 4, 8 apart");
    assert_eq!(
        (
            b.count,
            b.len,
            b.src_at,
            b.src_stride,
            b.dst_at,
            b.dst_stride
        ),
        (6, 4, 3, 8, 5, 4)
    );
    let mut blocks = Vec::new();
    for i in 0..b.count {
        for j in 0..b.len {
            blocks.push((
                b.dst_at + i * b.dst_stride + j,
                b.src_at + i * b.src_stride + j,
            ));
        }
    }
    assert_eq!(blocks, copied_elements(&k));
    // A unit dim is no dim; a whole buffer is one block.
    let k = copy(vec![1, 10], vec![10, 1], vec![10, 1], vec![Expr::Load(0)]);
    let b = k.as_blocks().expect("one block");
    assert_eq!((b.count, b.len), (1, 10));
    // Not rows: three dims that do not merge, an inner stride of 2, an
    // expression that is not a load.
    assert!(copy(
        vec![2, 3, 4],
        vec![12, 4, 1],
        vec![25, 8, 1],
        vec![Expr::Load(0)]
    )
    .as_blocks()
    .is_none());
    assert!(
        copy(vec![3, 4], vec![4, 1], vec![8, 2], vec![Expr::Load(0)])
            .as_blocks()
            .is_none()
    );
    let scaled = vec![
        Expr::Load(0),
        Expr::Const(2.0),
        Expr::Binary(nnc::ir::BinaryOp::Mul, 0, 1),
    ];
    assert!(copy(vec![3, 4], vec![4, 1], vec![8, 1], scaled)
        .as_blocks()
        .is_none());
}

#[test]
fn a_product_summed_over_its_batch_reads_a_slice_in_place_only_where_its_rows_keep_one_stride() {
    // Σₜ hₜᵀ gₜ (`matmul-batch-sum`: one GEMM over the 3·2 rows of all
    // steps) where `h` is one of two [B, 4] halves of each step's state,
    // as an LSTM's `h` beside its `c`: its rows (t, b) follow one another
    // 8 floats apart, so the GEMM reads it in t's buffer. `u` takes rows
    // 0..2 of 4 of each step: step t+1's rows do not follow step t's at
    // that stride, so it is copied first.
    let src = "input x: [48]\n\
               let t = reshape(x * 2 - 1, [3, 2, 2, 4])\n\
               let h = reshape(slice(t, 2, 0, 1), [3, 2, 4])\n\
               let g = tanh(reshape(slice(t, 2, 1, 2), [3, 2, 4])) * 3\n\
               output w = sum(transpose(h) @ g, axis = 0)\n\
               let s = reshape(x + 1, [3, 4, 4])\n\
               let u = slice(s, 1, 0, 2)\n\
               output v = sum(transpose(u) @ g, axis = 0)\n";
    let c = pipeline::compile("stacked.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = c.graph.expect("graph");
    let fu = pipeline::fuse(&g);
    let slices = |axis: usize| -> Vec<bool> {
        fu.graph
            .nodes
            .iter()
            .filter(|(_, d)| matches!(d.op, nnc::ir::Op::Slice { axis: a, .. } if a == axis))
            .map(|(n, _)| fu.fusion.fused.contains(n))
            .collect()
    };
    // h's slice (and g's, read by an elementwise kernel) in place; u's
    // slice of the row axis stored.
    assert_eq!(slices(2), vec![true, true]);
    assert_eq!(slices(1), vec![false]);
    let s = pipeline::schedule(&fu, &SecondaryMap::new()).expect("schedules");
    s.verify().expect("verifies");
    // Both sums are one GEMM over the 6 stacked rows.
    let stacked = s
        .steps
        .iter()
        .filter(|st| matches!(st, Step::MatMul { dims, .. } if dims.k == 6 && dims.m == 4))
        .count();
    assert_eq!(stacked, 2, "{:?}", s.steps);
    agrees_with_the_interpreter(
        &g,
        nnc::tensor::Tensor::new(vec![48], (0..48).map(|i| (i as f32 * 0.61).cos()).collect()),
    );
}

/// The loop steps of `s`, each with its body.
fn scans(s: &Schedule) -> Vec<&nnc::schedule::ScanStep> {
    s.steps
        .iter()
        .filter_map(|st| match st {
            Step::Scan(sc) => Some(&**sc),
            _ => None,
        })
        .collect()
}

#[test]
fn a_body_treating_each_row_alone_is_cut_into_parts_by_rows() {
    // An RNN's training step for B = 4: the forward loop's body (the
    // product of the carry's rows, then tanh over the same rows) and the
    // derivative loop's each split into parts that share no element one
    // of them writes (`scan-rows`), for 2 and 4 parts.
    use nnc::schedule::parts::independent_parts;
    let src = "param w: [3, 3] = uniform(-1, 1, seed = 1)\n\
               input xs: [5, B, 3]\n\
               fn step(h: [N, 3], x: [N, 3]) -> [N, 3] { tanh(h @ w + x) }\n\
               let y = sum(last(scan(step, zeros([B, 3]), xs)))\n\
               train { loss = y\n optimizer = sgd(lr = 0.1)\n batch = 4 }\n";
    let s = training_schedule_of(src);
    let loops = scans(&s);
    assert_eq!(loops.len(), 2, "{:?}", s.steps);
    // The forward body's epilogue (tanh over the product's rows) made to
    // read the product's first element at every point (stride 0): the
    // second part reads what the first writes.
    let mut body = loops[0].body.clone();
    let broadcast = body.steps.iter_mut().find_map(|st| match st {
        Step::MatMul {
            out,
            epilogue: Some(e),
            ..
        } => {
            let a = e.args.iter().position(|b| b == out)?;
            Arc::make_mut(&mut e.kernel).accesses[a][0] = 0;
            Some(())
        }
        _ => None,
    });
    assert_eq!(broadcast, Some(()), "{:?}", body.steps);
    let e = independent_parts(&body, 2).expect_err("rows read across parts");
    assert!(
        e.0.contains("part 1 reads") && e.0.contains("another part writes"),
        "{e}"
    );
    for sc in loops {
        assert_eq!(
            independent_parts(&sc.body, 2),
            Ok(()),
            "{:?}",
            sc.body.steps
        );
        assert_eq!(
            independent_parts(&sc.body, 4),
            Ok(()),
            "{:?}",
            sc.body.steps
        );
    }
}

#[test]
fn a_body_mixing_rows_it_computed_is_not_cut() {
    // `m @ tanh(h)`: each row of the result reads every row of tanh(h),
    // which the body computes, half of it in each part.
    use nnc::schedule::parts::independent_parts;
    let src = "input m: [B, B]\n\
               input xs: [5, B, 3]\n\
               fn step(h: [B, 3], x: [B, 3]) -> [B, 3] { m @ tanh(h + x) }\n\
               output y = sum(last(scan(step, zeros([B, 3]), xs)))\n";
    let s = schedule_of("mix.nn", src);
    let loops = scans(&s);
    assert_eq!(loops.len(), 1, "{:?}", s.steps);
    let e = independent_parts(&loops[0].body, 2).expect_err("rows mixed");
    assert!(e.0.contains("another part writes"), "{e}");
}

/// The schedule of `src`'s training step (its `train` block's batch for
/// B), verified.
fn training_schedule_of(src: &str) -> Schedule {
    let c = pipeline::compile("train.nn", src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let (g, train) = (c.graph.expect("graph"), c.train.expect("a train block"));
    let step = pipeline::step_graph(&g, &train).expect("step graph").graph;
    let mut syms = SecondaryMap::new();
    for (s, _) in step.syms.iter() {
        syms[s] = Some(4);
    }
    let s = pipeline::schedule(&pipeline::fuse(&step), &syms).expect("schedules");
    s.verify().expect("verifies");
    s
}
