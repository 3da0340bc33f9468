//! `scan(f, init, xs, extra…)`: a loop over the leading axis of `xs`.
//!
//! `f(carry, x_t, extra…)` must return the carry's shape. Its body is
//! lowered once, into a graph of its own whose inputs are the carry, one
//! step of the sequence and the extra arguments; values the body reads
//! from outside (parameters, `let`s) become further inputs, fed by the
//! `Scan` node. The result is every step's carry, `[T, ..C]`; the last is
//! `last(...)` in the stdlib. `reverse = true` runs from the end.

use super::*;
use crate::ir::{InputInfo, Type};

impl<'a> Lowerer<'_, 'a, '_> {
    pub(super) fn scan(
        &mut self,
        env: &mut Env<'a>,
        args: &'a [ast::Arg],
        span: Span,
    ) -> Value<'a> {
        let usage = || {
            diag::error(code::ARITY, "`scan` takes a function, an initial carry and a sequence, then the function's other arguments")
                .with_labels(vec![span.primary("in this scan")])
                .with_notes(vec!["help: for example `scan(cell, h0, xs, w)` calls `cell(h, xs[t], w)` for each t".into()])
        };
        let mut reverse = false;
        let mut positional = Vec::new();
        for a in args {
            match &a.name {
                None => positional.push(&a.value),
                Some(n) if n.name == "reverse" => match a.value.kind {
                    ExprKind::Bool(b) => reverse = b,
                    _ => {
                        self.diags.push(
                            diag::error(
                                code::CONST_ARG,
                                "`reverse` must be written as `true` or `false`",
                            )
                            .with_labels(vec![a.value.span.primary("not a constant")]),
                        );
                        return Value::Poison;
                    }
                },
                Some(n) => {
                    self.diags.push(
                        diag::error(
                            code::NAMED_ARG,
                            format!("`scan` has no parameter named `{}`", n.name),
                        )
                        .with_labels(vec![n.span.primary("unknown parameter")]),
                    );
                    return Value::Poison;
                }
            }
        }
        if positional.len() < 3 {
            self.diags.push(usage());
            return Value::Poison;
        }
        if self.outer.is_some() {
            self.diags.push(
                diag::error(
                    code::KIND,
                    "a `scan` inside the function of another `scan` is not supported yet",
                )
                .with_labels(vec![span.primary("nested scan")]),
            );
            return Value::Poison;
        }
        let fexpr = positional[0];
        let (f, id, scope) = match self.expr(env, fexpr) {
            Value::Func(Callee::User(f, id, scope)) => (f, id, scope),
            Value::Poison => return Value::Poison,
            other => {
                self.diags.push(
                    diag::error(code::KIND, format!("the first argument of `scan` must be a function written in .nn, found {}", expr_kind_str(&other)))
                        .with_labels(vec![fexpr.span.primary("not a .nn function")]),
                );
                return Value::Poison;
            }
        };
        let mut operands = Vec::new();
        for e in &positional[1..] {
            operands.push(self.tensor_expr(env, e).map(|n| (n, e.span)));
        }
        let Some(operands) = operands.into_iter().collect::<Option<Vec<(Node, Span)>>>() else {
            return Value::Poison;
        };
        let (init, xs) = (operands[0], operands[1]);
        let Some((_, step)) = self
            .g
            .shape(xs.0)
            .split_first()
            .map(|(t, r)| (*t, r.to_vec()))
        else {
            self.diags.push(
                diag::error(
                    code::RANK,
                    "rank mismatch: the sequence of a `scan` needs rank 1 or more",
                )
                .with_labels(vec![xs.1.primary("this is a scalar")]),
            );
            return Value::Poison;
        };

        // The body: a graph whose first inputs are the carry, one step and
        // the extra arguments.
        let mut body = Graph::new();
        body.syms = self.g.syms.clone();
        let mut in_types = vec![self.g.ty(init.0).clone(), Type::f32(step)];
        in_types.extend(operands[2..].iter().map(|(n, _)| self.g.ty(*n).clone()));
        let names = ["carry", "x"];
        let mut values = Vec::new();
        for (k, ty) in in_types.into_iter().enumerate() {
            let name = names
                .get(k)
                .map_or_else(|| format!("arg{}", k - 2), |s| s.to_string());
            let i = body.inputs.push(InputInfo {
                name,
                ty,
                default: None,
                span: operands[k].1,
            });
            let Ok(n) = body.add(Op::Input(i), operands[k].1) else {
                return Value::Poison;
            };
            values.push((Value::T(n), operands[k].1));
        }
        let outer = std::mem::replace(&mut self.g, body);
        self.outer = Some(Outer {
            graph: outer,
            captures: Vec::new(),
        });
        let result = self.instantiate(env.site, f, id, scope, values, span);
        let Some(outer) = self.outer.take() else {
            return Value::Poison;
        };
        let mut body = std::mem::replace(&mut self.g, outer.graph);
        let Value::T(out) = result else {
            if !matches!(result, Value::Poison) {
                self.diags.push(
                    diag::error(code::KIND, "the function of a `scan` must return a tensor")
                        .with_labels(vec![fexpr.span.primary("this function")]),
                );
            }
            return Value::Poison;
        };
        if body.ty(out) != self.g.ty(init.0) {
            let (got, want) = (body.shape_str(body.shape(out)), self.shape_str(init.0));
            self.diags.push(
                diag::error(code::RESULT_TYPE, format!("the function of a `scan` must return the carry's shape {want}, found {got}"))
                    .with_labels(vec![fexpr.span.primary(format!("returns {got}")), init.1.secondary(format!("the carry starts as {want}"))]),
            );
            return Value::Poison;
        }
        body.outputs.push(crate::ir::Output {
            name: "carry".into(),
            node: out,
            span,
        });
        let mut extra: Vec<Node> = operands[2..].iter().map(|(n, _)| *n).collect();
        extra.extend(outer.captures.iter().map(|(o, _)| *o));
        let b = self.g.bodies.push(body);
        let nspan = self.span_in(env, span);
        self.add(
            Op::Scan {
                body: b,
                init: init.0,
                xs: vec![xs.0],
                args: extra,
                reverse,
            },
            nspan,
        )
        .map_or(Value::Poison, Value::T)
    }

    /// The body input that carries `outside` (a node of the enclosing
    /// graph) into the loop body being lowered, made on first use.
    pub(super) fn capture(&mut self, outer: &mut Outer, outside: Node) -> Node {
        if let Some((_, inside)) = outer.captures.iter().find(|(o, _)| *o == outside) {
            return *inside;
        }
        let data = &outer.graph.nodes[outside];
        let name = format!("capture{}", outer.captures.len());
        let i = self.g.inputs.push(InputInfo {
            name,
            ty: data.ty.clone(),
            default: None,
            span: data.span,
        });
        // An input of a type taken from a valid node always types.
        let inside = self
            .g
            .add(Op::Input(i), data.span)
            .expect("an input node types");
        outer.captures.push((outside, inside));
        inside
    }
}
