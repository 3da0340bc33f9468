//! The builtins that reach outside a pure function of the inputs: random
//! draws (`random_normal`, `random_uniform`), the mode flag `training()`
//! and `assign(state, value)`. The first two read implicit inputs that
//! the training loop feeds or the pipeline fixes; `assign` records an
//! update that a training step applies.

use super::*;
use crate::ir::{Dist, InputInfo, Role, Type, Update, RNG_KEY_INPUT, TRAINING_INPUT};

impl<'a> Lowerer<'_, 'a, '_> {
    /// The node of the implicit input `name` in the graph being built,
    /// created (with its `default`) on first use. Inside a loop body it is
    /// created in the enclosing graph and captured, like a global.
    fn implicit_input(&mut self, name: &'static str, default: Tensor, span: Span) -> Option<Node> {
        match self.outer.take() {
            None => self.implicit_input_here(name, default, span),
            Some(mut outer) => {
                std::mem::swap(&mut self.g, &mut outer.graph);
                let n = self.implicit_input_here(name, default, span);
                std::mem::swap(&mut self.g, &mut outer.graph);
                let n = n.map(|n| self.capture(&mut outer, n));
                self.outer = Some(outer);
                n
            }
        }
    }

    fn implicit_input_here(&mut self, name: &str, default: Tensor, span: Span) -> Option<Node> {
        if let Some((id, _)) = self.g.inputs.iter().find(|(_, i)| i.name == name) {
            let found = self.g.nodes.iter().find(|(_, d)| d.op == Op::Input(id));
            if let Some((n, _)) = found {
                return Some(n);
            }
        }
        let shape = default
            .shape
            .iter()
            .map(|&d| Dim::Known(d as u64))
            .collect();
        let c = self.g.consts.push(default);
        let id = self.g.inputs.push(InputInfo {
            name: name.to_string(),
            ty: Type::f32(shape),
            default: Some(c),
            span,
        });
        self.add(Op::Input(id), span)
    }

    /// `random_normal(shape)` / `random_uniform(shape)`.
    pub(super) fn random(
        &mut self,
        env: &mut Env<'a>,
        dist: Dist,
        shape: &'a Expr,
        span: Span,
    ) -> Option<Node> {
        let shape = self.report(self.shape_arg(env, shape))?;
        let key = self.implicit_input(RNG_KEY_INPUT, Tensor::new(vec![2], vec![0.0; 2]), span)?;
        self.draws += 1;
        self.add(
            Op::Random {
                dist,
                shape,
                salt: self.draws,
                key,
            },
            span,
        )
    }

    /// `training()`: a scalar, 1 in a training step and 0 elsewhere.
    pub(super) fn training_flag(&mut self, span: Span) -> Option<Node> {
        self.implicit_input(TRAINING_INPUT, Tensor::scalar(0.0), span)
    }

    /// `assign(state, value)`: `value`, broadcast to the state's shape;
    /// a training step stores it in the state after the step.
    pub(super) fn assign(
        &mut self,
        env: &mut Env<'a>,
        state: &'a Expr,
        value: &'a Expr,
        span: Span,
    ) -> Option<Node> {
        let (s, v) = (self.tensor_expr(env, state), self.tensor_expr(env, value));
        let (s, v) = (s?, v?);
        let p = match self.g.nodes[s].op {
            Op::Param(p) if self.g.params[p].role == Role::State => p,
            _ => {
                let what = match self.g.nodes[s].op {
                    Op::Param(_) => "a trained `param`",
                    Op::Input(_) if self.outer.is_some() => "a value from outside this loop",
                    _ => "a computed value",
                };
                self.diags.push(
                    diag::error(code::STATE, "`assign` can only set a `state`")
                        .with_labels(vec![state.span.primary(format!("this is {what}"))])
                        .with_notes(vec![
                            "help: declare it with `state NAME: [..] = zeros()`; a `param` is set by the optimizer".into(),
                            "note: `assign` cannot be used inside a `scan` body".into(),
                        ]),
                );
                return None;
            }
        };
        let target = self.g.shape(s).clone();
        if !shape::broadcasts_to(self.g.shape(v), &target) {
            let (vs, ts) = (self.shape_str(v), self.g.shape_str(&target));
            self.diags.push(
                diag::error(
                    code::STATE,
                    format!("cannot assign a value of shape {vs} to a state of shape {ts}"),
                )
                .with_labels(vec![
                    value.span.primary(format!("this has shape {vs}")),
                    state.span.secondary(format!("this state has shape {ts}")),
                ])
                .with_notes(vec![
                    "help: reduce the value to the state's shape, e.g. with `mean(x, axis = 0)`"
                        .into(),
                ]),
            );
            return None;
        }
        if let Some(first) = self.g.updates.iter().find(|u| u.param == p) {
            let name = self.g.params[p].name.clone();
            let first_span = self.g.nodes[first.node].span;
            self.diags.push(
                diag::error(code::STATE, format!("state `{name}` is assigned twice"))
                    .with_labels(vec![
                        span.primary("assigned again here"),
                        first_span.secondary("first assigned here"),
                    ])
                    .with_notes(vec![
                        "note: a step stores one value in each state; a layer with running statistics can be applied once per program".into(),
                    ]),
            );
            return None;
        }
        let v = self.broadcast_to(v, &target, span)?;
        self.g.updates.push(Update { param: p, node: v });
        Some(v)
    }
}
