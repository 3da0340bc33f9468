//! A graph as Graphviz `dot` text, for `--emit dot-ir` and `--emit
//! dot-grad` (and, through [`Dot`], the fused graph of
//! [`crate::schedule::dot`]).
//!
//! Every node is labelled with its op (and the op's settings: axes, a
//! permutation, a stride) over its type; inputs, parameters, constants,
//! outputs and updates each have a shape and colour of their own, with
//! the names the `.nn` file gave them. An edge runs from an operand to
//! its reader; where the operands' order matters it is labelled with the
//! operand's role (`lhs`, `cond`, `indices`, …). A loop body is a dashed
//! cluster whose output feeds the `scan` node that runs it.
//!
//! The text is deterministic: nodes in arena order, bodies in handle
//! order. Node ids are `nN` (`%N` in `--emit ir`), prefixed inside a body
//! (`b0_n3`) or a phase, so that one file can hold several graphs.
//!
//! ```text
//! digraph nnc {
//!   label="xor.nn: IR"
//!   ...
//!   n0 [label="input x\nf32[B, 2]" shape=invhouse ...]
//!   n4 [label="matmul\nf32[B, 4]"]
//!   n0 -> n4 [label="lhs"]
//! }
//! ```

use super::{Graph, Node, Op, Role};
use crate::tensor::format_f32;
use cranelift_entity::EntityRef;
use std::fmt::Write;

/// A `dot` file being written: a `digraph` and its clusters.
pub struct Dot {
    out: String,
    depth: usize,
}

impl Dot {
    /// A `digraph` with `title` as its label.
    pub fn new(title: &str) -> Dot {
        let mut out = String::from("digraph nnc {\n");
        let _ = writeln!(out, "  label=\"{}\"", escape(title));
        out.push_str(concat!(
            "  labelloc=t\n",
            // The ranking that copes with edges between clusters (dot's
            // older one stops with "trouble in init_rank" on LeNet's).
            "  newrank=true\n",
            "  fontname=\"Helvetica\"\n",
            "  node [fontname=\"Helvetica\" fontsize=10 shape=ellipse]\n",
            "  edge [fontname=\"Helvetica\" fontsize=8 color=\"#555555\"]\n",
        ));
        Dot { out, depth: 1 }
    }

    /// A line of `dot` at the current depth.
    pub fn line(&mut self, text: &str) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    /// Opens `subgraph cluster_ID` with a label; [`Dot::close`] ends it.
    /// `dashed` draws its border dashed (a loop body, a phase).
    pub fn open_cluster(&mut self, id: &str, label: &str, dashed: bool) {
        self.line(&format!("subgraph cluster_{id} {{"));
        self.depth += 1;
        self.line(&format!("label=\"{}\"", escape(label)));
        self.line(if dashed {
            "style=\"rounded,dashed\" color=\"#64748b\""
        } else {
            "style=\"rounded,filled\" fillcolor=\"#f1f5f9\" color=\"#94a3b8\""
        });
    }

    pub fn close(&mut self) {
        self.depth -= 1;
        self.line("}");
    }

    /// Node `n` of `g` under the id `id`: its label and its look.
    pub fn node(&mut self, id: &str, g: &Graph, n: Node) {
        let d = &g.nodes[n];
        let ty = format!("{}{}", d.ty.dtype, g.shape_str(&d.ty.shape));
        let (head, look) = match &d.op {
            Op::Input(i) => (
                format!("input {}", g.inputs[*i].name),
                "shape=invhouse style=filled fillcolor=\"#dbeafe\"",
            ),
            Op::Param(p) if g.params[*p].role == Role::State => (
                format!("state {}", g.params[*p].name),
                "shape=box style=\"rounded,filled,dashed\" fillcolor=\"#fef3c7\"",
            ),
            Op::Param(p) => (
                format!("param {}", g.params[*p].name),
                "shape=box style=\"rounded,filled\" fillcolor=\"#fde68a\"",
            ),
            Op::Const(c) => {
                let t = &g.consts[*c];
                let head = match t.data.as_slice() {
                    [v] => format!("{c} = {}", format_f32(*v)),
                    _ => c.to_string(),
                };
                (head, "shape=box style=filled fillcolor=\"#e5e7eb\"")
            }
            op => (format!("{n} {}", op_label(g, op)), ""),
        };
        let label = escape(&format!("{head}\n{ty}"));
        match look {
            "" => self.line(&format!("{id} [label=\"{label}\"]")),
            _ => self.line(&format!("{id} [label=\"{label}\" {look}]")),
        }
    }

    /// An edge from an operand to its reader, labelled with the operand's
    /// role where there is one.
    pub fn edge(&mut self, from: &str, to: &str, role: Option<&str>) {
        match role {
            Some(r) => self.line(&format!("{from} -> {to} [label=\"{}\"]", escape(r))),
            None => self.line(&format!("{from} -> {to}")),
        }
    }

    /// The graph's outputs and updates as nodes of their own, each with an
    /// edge from the value it takes; `id(node)` names the value's node.
    pub fn sinks(&mut self, g: &Graph, prefix: &str, id: &dyn Fn(Node) -> String) {
        for (k, o) in g.outputs.iter().enumerate() {
            let sink = format!("{prefix}out{k}");
            self.line(&format!(
                "{sink} [label=\"output {}\" shape=house style=filled fillcolor=\"#bbf7d0\"]",
                escape(&o.name)
            ));
            self.line(&format!("{} -> {sink} [style=bold]", id(o.node)));
        }
        for (k, u) in g.updates.iter().enumerate() {
            let sink = format!("{prefix}upd{k}");
            self.line(&format!(
                "{sink} [label=\"update {}\" shape=house style=filled fillcolor=\"#fecaca\"]",
                escape(&g.params[u.param].name)
            ));
            self.line(&format!("{} -> {sink} [style=bold]", id(u.node)));
        }
    }

    /// The finished text.
    pub fn finish(mut self) -> String {
        self.out.push_str("}\n");
        self.out
    }
}

/// The `dot` text of a graph (`--emit dot-ir`, `--emit dot-grad`).
pub fn graph(g: &Graph, title: &str) -> String {
    let mut dot = Dot::new(title);
    write_graph(&mut dot, g, "");
    dot.finish()
}

/// Writes every node of `g`, its edges, outputs and updates, then its loop
/// bodies as clusters; ids start with `prefix`.
pub fn write_graph(dot: &mut Dot, g: &Graph, prefix: &str) {
    let id = |n: Node| format!("{prefix}n{}", n.index());
    for (n, d) in g.nodes.iter() {
        dot.node(&id(n), g, n);
        for (k, a) in d.op.args().into_iter().enumerate() {
            dot.edge(&id(a), &id(n), arg_role(&d.op, k).as_deref());
        }
    }
    dot.sinks(g, prefix, &id);
    for (b, body) in g.bodies.iter() {
        let cluster = format!("{prefix}b{}", b.index());
        let inner = format!("{cluster}_");
        dot.open_cluster(&cluster, &format!("{b} (loop body)"), true);
        write_graph(dot, body, &inner);
        dot.close();
        for (n, d) in g.nodes.iter() {
            if matches!(d.op, Op::Scan { body, .. } if body == b) {
                body_edge(dot, body, &inner, &id(n), &b.to_string());
            }
        }
    }
}

/// The dashed edge from a loop body's output to the `scan` that runs it.
pub fn body_edge(dot: &mut Dot, body: &Graph, prefix: &str, scan: &str, name: &str) {
    if !body.outputs.is_empty() {
        dot.line(&format!(
            "{prefix}out0 -> {scan} [style=dashed label=\"{}\"]",
            escape(name)
        ));
    }
}

/// The op and its settings, without its operands (they are the edges).
pub fn op_label(g: &Graph, op: &Op) -> String {
    let list = |v: &[usize]| {
        let parts: Vec<String> = v.iter().map(|a| a.to_string()).collect();
        format!("[{}]", parts.join(", "))
    };
    match op {
        Op::Input(i) => format!("input {}", g.inputs[*i].name),
        Op::Param(p) => format!("param {}", g.params[*p].name),
        Op::Const(c) => c.to_string(),
        Op::Fill { value, .. } => format!("fill {}", format_f32(*value)),
        Op::Random { dist, salt, .. } => format!("random.{dist} salt={salt}"),
        Op::Unary(u, _) => u.to_string(),
        Op::Binary(b, ..) => b.to_string(),
        Op::Compare(c, ..) => format!("cmp.{c}"),
        Op::Select(..) => "select".into(),
        Op::AdamMoment { beta, square, .. } => {
            let sq = if *square { ".square" } else { "" };
            format!("adam.moment{sq} beta={}", format_f32(*beta))
        }
        Op::AdamStep { eps, .. } => format!("adam.step eps={}", format_f32(*eps)),
        Op::Reduce { op, axes, .. } => format!("reduce.{op} axes={}", list(axes)),
        Op::MatMul(..) => "matmul".into(),
        Op::Reshape(..) => "reshape".into(),
        Op::Transpose(_, perm) => format!("transpose perm={}", list(perm)),
        Op::Broadcast(..) => "broadcast".into(),
        Op::Conv2d {
            stride, padding, ..
        } => format!("conv2d stride={stride} padding={padding}"),
        Op::Conv2dBackwardInput {
            stride, padding, ..
        } => format!("conv2d.backward_input stride={stride} padding={padding}"),
        Op::Conv2dBackwardWeight {
            stride, padding, ..
        } => format!("conv2d.backward_weight stride={stride} padding={padding}"),
        Op::Pool2d {
            op, size, stride, ..
        } => format!("pool2d.{op} size={size} stride={stride}"),
        Op::Pool2dBackward {
            op, size, stride, ..
        } => format!("pool2d.{op}.backward size={size} stride={stride}"),
        Op::Slice {
            axis, start, end, ..
        } => format!("slice axis={axis} {start}..{end}"),
        Op::Concat { axis, .. } => format!("concat axis={axis}"),
        Op::Gather { .. } => "gather".into(),
        Op::ScatterAdd { n, .. } => format!("scatter_add n={}", g.dim_str(*n)),
        Op::Scan { body, reverse, .. } => {
            format!("scan{} {body}", if *reverse { ".reverse" } else { "" })
        }
    }
}

/// The role of operand `k` of `op` where the order of the operands
/// matters (`None` where it does not: one operand, or `add`, `mul`,
/// `max`, `min`).
pub fn arg_role(op: &Op, k: usize) -> Option<String> {
    use super::BinaryOp;
    let pick = |names: &[&str]| names.get(k).map(|s| s.to_string());
    match op {
        Op::Input(_)
        | Op::Param(_)
        | Op::Const(_)
        | Op::Fill { .. }
        | Op::Unary(..)
        | Op::Reduce { .. }
        | Op::Reshape(..)
        | Op::Transpose(..)
        | Op::Broadcast(..)
        | Op::Pool2d { .. }
        | Op::Slice { .. } => None,
        Op::Binary(BinaryOp::Add | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min, ..) => None,
        Op::Random { .. } => pick(&["key"]),
        Op::Binary(..) | Op::Compare(..) | Op::MatMul(..) | Op::Concat { .. } => {
            pick(&["lhs", "rhs"])
        }
        Op::Select(..) => pick(&["cond", "then", "else"]),
        Op::AdamMoment { .. } => pick(&["old", "new"]),
        Op::AdamStep { .. } => pick(&["w", "m", "v", "lr", "c1", "c2"]),
        Op::Conv2d { .. } => pick(&["x", "w"]),
        Op::Conv2dBackwardInput { .. } => pick(&["gy", "w"]),
        Op::Conv2dBackwardWeight { .. } | Op::Pool2dBackward { .. } => pick(&["x", "gy"]),
        Op::Gather { .. } => pick(&["table", "indices"]),
        Op::ScatterAdd { .. } => pick(&["values", "indices"]),
        Op::Scan { xs, .. } => Some(match k {
            0 => "init".to_string(),
            k if k <= xs.len() => format!("xs[{}]", k - 1),
            k => format!("args[{}]", k - 1 - xs.len()),
        }),
    }
}

/// `s` as the inside of a `dot` string: quotes and backslashes escaped,
/// a line break as `\n` (which `dot` centres).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Init, ParamInfo};

    #[test]
    fn escape_keeps_quotes_and_backslashes_inside_the_string() {
        assert_eq!(escape(r#"a "b" \c"#), r#"a \"b\" \\c"#);
        assert_eq!(escape("two\nlines"), "two\\nlines");
    }

    #[test]
    fn a_parameter_initialised_from_a_tensor_is_labelled_by_its_name() {
        let mut g = Graph::new();
        let c = g.consts.push(crate::tensor::Tensor::scalar(0.5));
        let p = g.params.push(ParamInfo {
            name: "Net.\"w\"".into(),
            role: Role::Trainable,
            shape: vec![],
            init: Init::Tensor(c),
            seed: None,
            span: Default::default(),
        });
        let n = g.add(Op::Param(p), Default::default()).expect("typed");
        let mut dot = Dot::new("t");
        dot.node("n0", &g, n);
        let text = dot.finish();
        assert!(
            text.contains(r#"n0 [label="param Net.\"w\"\nf32[]" shape=box"#),
            "{text}"
        );
    }
}
