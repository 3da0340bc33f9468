//! The stable text form of a graph, for `--emit ir` and the IR snapshots.
//!
//! ```text
//! sym B
//! const0: f32[3] = [0.5, 0.8, 0.2]
//! input x: f32[B, 3]
//! param w: f32[3] = xavier_uniform
//!
//! %0: f32[B, 3] = input x
//! %1: f32[3] = param w
//! ...
//! output z = %5
//! ```

use super::*;
use crate::tensor::{format_f32, format_tensor};
use std::fmt::Write;

pub fn print_graph(g: &Graph) -> String {
    let mut out = String::new();
    for (_, s) in g.syms.iter() {
        let _ = writeln!(out, "sym {}", s.name);
    }
    for (id, t) in g.consts.iter() {
        let shape: Vec<Dim> = t.shape.iter().map(|&d| Dim::Known(d as u64)).collect();
        let _ = writeln!(
            out,
            "{id}: f32{} = {}",
            g.shape_str(&shape),
            format_tensor(t, 6).replace('\n', "")
        );
    }
    for (_, i) in g.inputs.iter() {
        let _ = write!(
            out,
            "input {}: {}{}",
            i.name,
            i.ty.dtype,
            g.shape_str(&i.ty.shape)
        );
        if let Some(c) = i.default {
            let _ = write!(out, " = {c}");
        }
        out.push('\n');
    }
    for (_, p) in g.params.iter() {
        let shape: Vec<Dim> = p.shape.iter().map(|&d| Dim::Known(d)).collect();
        let _ = write!(
            out,
            "param {}: f32{} = {}",
            p.name,
            g.shape_str(&shape),
            init_str(&p.init)
        );
        if let Some(s) = p.seed {
            let _ = write!(out, " seed={s}");
        }
        out.push('\n');
    }
    if !out.is_empty() {
        out.push('\n');
    }
    for (n, d) in g.nodes.iter() {
        let _ = writeln!(
            out,
            "{n}: {}{} = {}",
            d.ty.dtype,
            g.shape_str(&d.ty.shape),
            op_str(g, &d.op)
        );
    }
    for o in &g.outputs {
        let _ = writeln!(out, "output {} = {}", o.name, o.node);
    }
    for u in &g.updates {
        let _ = writeln!(out, "update {} <- {}", g.params[u.param].name, u.node);
    }
    for (id, b) in g.bodies.iter() {
        let _ = writeln!(out, "\n{id} {{");
        for line in print_graph(b).lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                let _ = writeln!(out, "  {line}");
            }
        }
        out.push_str("}\n");
    }
    out
}

fn init_str(init: &Init) -> String {
    match init {
        Init::Constant(v) => format!("constant({})", format_f32(*v)),
        Init::Uniform { low, high } => {
            format!("uniform({}, {})", format_f32(*low), format_f32(*high))
        }
        Init::Normal { mean, std } => {
            format!("normal({}, {})", format_f32(*mean), format_f32(*std))
        }
        Init::XavierUniform => "xavier_uniform".into(),
        Init::XavierNormal => "xavier_normal".into(),
        Init::HeUniform => "he_uniform".into(),
        Init::HeNormal => "he_normal".into(),
        Init::Tensor(c) => c.to_string(),
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

pub(crate) fn op_str(g: &Graph, op: &Op) -> String {
    match op {
        Op::Scan {
            body,
            init,
            xs,
            args,
            reverse,
        } => {
            let dir = if *reverse { ".reverse" } else { "" };
            format!(
                "scan{dir} {body}, init={init}, xs={}, args={}",
                list(xs),
                list(args)
            )
        }
        Op::Input(i) => format!("input {}", g.inputs[*i].name),
        Op::Param(p) => format!("param {}", g.params[*p].name),
        Op::Const(c) => format!("const {c}"),
        Op::Fill { value, shape } => format!("fill {} {}", format_f32(*value), g.shape_str(shape)),
        Op::Unary(u, a) => format!("{u} {a}"),
        Op::Binary(b, x, y) => format!("{b} {x}, {y}"),
        Op::Compare(c, x, y) => format!("cmp.{c} {x}, {y}"),
        Op::Select(c, x, y) => format!("select {c}, {x}, {y}"),
        Op::AdamMoment {
            beta,
            square,
            old,
            new,
        } => {
            let sq = if *square { ".square" } else { "" };
            format!("adam.moment{sq} {old}, {new}, beta={}", format_f32(*beta))
        }
        Op::AdamStep {
            w,
            m,
            v,
            lr,
            correction,
            eps,
        } => {
            let c = match correction {
                Some((c1, c2)) => format!(", correction=({c1}, {c2})"),
                None => String::new(),
            };
            format!(
                "adam.step {w}, {m}, {v}, lr={lr}{c}, eps={}",
                format_f32(*eps)
            )
        }
        Op::Reduce { op, arg, axes } => format!("reduce.{op} {arg}, axes={}", list(axes)),
        Op::MatMul(a, b) => format!("matmul {a}, {b}"),
        Op::Reshape(a, s) => format!("reshape {a}, {}", g.shape_str(s)),
        Op::Transpose(a, p) => format!("transpose {a}, perm={}", list(p)),
        Op::Broadcast(a, s) => format!("broadcast {a}, {}", g.shape_str(s)),
        Op::Conv2d {
            x,
            w,
            stride,
            padding,
        } => format!("conv2d {x}, {w}, stride={stride}, padding={padding}"),
        Op::Conv2dBackwardInput {
            gy,
            w,
            stride,
            padding,
            size,
        } => format!(
            "conv2d.backward_input {gy}, {w}, stride={stride}, padding={padding}, size={}",
            list(size)
        ),
        Op::Conv2dBackwardWeight {
            x,
            gy,
            stride,
            padding,
            kernel,
        } => format!(
            "conv2d.backward_weight {x}, {gy}, stride={stride}, padding={padding}, kernel={}",
            list(kernel)
        ),
        Op::Pool2d {
            op,
            arg,
            size,
            stride,
        } => format!("pool2d.{op} {arg}, size={size}, stride={stride}"),
        Op::Pool2dBackward {
            op,
            x,
            gy,
            size,
            stride,
        } => format!("pool2d.{op}.backward {x}, {gy}, size={size}, stride={stride}"),
        Op::Slice {
            arg,
            axis,
            start,
            end,
        } => format!("slice {arg}, axis={axis}, range={start}..{end}"),
        Op::Concat { a, b, axis } => format!("concat {a}, {b}, axis={axis}"),
        Op::Gather { table, indices } => format!("gather {table}, {indices}"),
        Op::Random {
            dist, salt, key, ..
        } => format!("random.{dist} {key}, salt={salt}"),
        Op::ScatterAdd { values, indices, n } => {
            format!("scatter_add {values}, {indices}, n={}", g.dim_str(*n))
        }
    }
}
