//! The checks of what a user wrote about types: a function's parameter
//! types against its arguments (binding its dimension names), a `let`'s
//! annotation, and a function's declared result type.

use super::*;

impl<'a> Lowerer<'_, 'a, '_> {
    /// Matches one argument against its parameter's declared type.
    pub(super) fn check_param(
        &mut self,
        f: &FnDef,
        p: &ast::FnParam,
        v: &Value<'a>,
        sp: Span,
        dims: &mut Bindings,
    ) -> bool {
        let (ty, node) = match (&p.ty, v) {
            (ParamType::Fn(_), Value::Func(_)) => return true,
            (ParamType::Tensor(t), Value::T(n)) => (t, *n),
            (ParamType::Fn(tsp), other) => {
                self.diags.push(
                    diag::error(
                        code::KIND,
                        format!(
                            "argument `{}` of `{}` must be a function, found {}",
                            p.name.name,
                            f.name.name,
                            expr_kind_str(other)
                        ),
                    )
                    .with_labels(vec![
                        sp.primary("expected a function"),
                        tsp.secondary("declared as `fn` here"),
                    ]),
                );
                return false;
            }
            (ParamType::Tensor(t), other) => {
                self.diags.push(
                    diag::error(
                        code::KIND,
                        format!(
                            "argument `{}` of `{}` must be a tensor, found {}",
                            p.name.name,
                            f.name.name,
                            expr_kind_str(other)
                        ),
                    )
                    .with_labels(vec![
                        sp.primary("expected a tensor"),
                        t.span.secondary("declared type"),
                    ]),
                );
                return false;
            }
        };
        let shape = self.g.shape(node).clone();
        let before = dims.clone();
        match types::unify(ty, &shape, dims, true) {
            Ok(()) => true,
            Err(m) => {
                let found = self.g.shape_str(&shape);
                let expected = expected_str(&self.g, ty, &before);
                let d = match m {
                    Mismatch::Rank { expected: r, found: fr, at_least } => diag::error(
                        code::RANK,
                        format!(
                            "rank mismatch: argument `{}` of `{}` has rank {fr}, expected rank {}{r}",
                            p.name.name,
                            f.name.name,
                            if at_least { "at least " } else { "" }
                        ),
                    )
                    .with_labels(vec![sp.primary(format!("this has shape {found}")), ty.span.secondary(format!("expected {expected}"))]),
                    Mismatch::Dim { index, earlier } => {
                        let mut notes = Vec::new();
                        if let (Some(b), Some(ast::DimExpr::Sym(n) | ast::DimExpr::Variadic(n))) = (earlier, ty.dims.get(index)) {
                            notes.push(format!("note: {} was bound by an earlier argument", types::bound_str(&self.g, &n.name, &b)));
                        }
                        diag::error(
                            code::ARG_SHAPE,
                            format!("argument `{}` of `{}` has shape {found}, expected {expected}", p.name.name, f.name.name),
                        )
                        .with_labels(vec![sp.primary(format!("this has shape {found}")), ty.span.secondary("parameter type declared here")])
                        .with_notes(notes)
                    }
                };
                self.diags.push(d);
                false
            }
        }
    }

    /// Checks a `let` or `output` annotation; returns the value, or poison.
    pub(super) fn check_annotation(
        &mut self,
        env: &Env<'a>,
        ty: Option<&'a ast::TypeExpr>,
        v: Value<'a>,
        sp: Span,
        what: &str,
    ) -> Value<'a> {
        let (Some(ty), Value::T(n)) = (ty, &v) else {
            return v;
        };
        let Ok(expected) = types::substitute(ty, &env.dims) else {
            return Value::Poison; // an unbound name, reported by resolution
        };
        let found = self.g.shape(*n).clone();
        if found != expected {
            let (fs, es) = (self.g.shape_str(&found), self.g.shape_str(&expected));
            self.diags.push(
                diag::error(
                    code::RESULT_TYPE,
                    format!("{what} has shape {fs} but its declared type is {es}"),
                )
                .with_labels(vec![
                    sp.primary(format!("this has shape {fs}")),
                    ty.span.secondary(format!("declared {es} here")),
                ]),
            );
            return Value::Poison;
        }
        v
    }

    pub(super) fn check_result(
        &mut self,
        f: &FnDef,
        rt: &'a ast::TypeExpr,
        env: &Env<'a>,
        v: Value<'a>,
    ) -> Value<'a> {
        let n = match &v {
            Value::T(n) => *n,
            Value::Poison => return v,
            other => {
                self.diags.push(
                    diag::error(
                        code::KIND,
                        format!(
                            "`{}` returns {} but declares a tensor result",
                            f.name.name,
                            expr_kind_str(other)
                        ),
                    )
                    .with_labels(vec![f
                        .body
                        .result
                        .span
                        .primary("this is not a tensor")]),
                );
                return Value::Poison;
            }
        };
        let Ok(expected) = types::substitute(rt, &env.dims) else {
            return Value::Poison; // an unbound name, reported by resolution
        };
        let found = self.g.shape(n).clone();
        if found == expected {
            return v;
        }
        let (fs, es) = (self.g.shape_str(&found), self.g.shape_str(&expected));
        let mut bindings: Vec<String> = env
            .dims
            .iter()
            .map(|(k, b)| types::bound_str(&self.g, k, b))
            .collect();
        bindings.sort();
        let mut notes = vec![];
        if !bindings.is_empty() {
            notes.push(format!("note: in this call {}", bindings.join(", ")));
        }
        self.diags.push(
            diag::error(
                code::RESULT_TYPE,
                format!(
                    "`{}` returns shape {fs} but its declared result type is {es}",
                    f.name.name
                ),
            )
            .with_labels(vec![
                f.body.result.span.primary(format!("this has shape {fs}")),
                rt.span.secondary(format!(
                    "declared result type {}",
                    crate::syntax::ast_type_str(rt)
                )),
            ])
            .with_notes(notes),
        );
        Value::Poison
    }
}

/// The declared type with the dimensions bound so far filled in.
fn expected_str(g: &Graph, ty: &ast::TypeExpr, b: &Bindings) -> String {
    let mut parts = Vec::new();
    for d in &ty.dims {
        match d {
            ast::DimExpr::Const(n, _) => parts.push(n.to_string()),
            ast::DimExpr::Sym(n) => match b.get(&n.name) {
                Some(Bound::One(x)) => parts.push(g.dim_str(*x)),
                _ => parts.push(n.name.clone()),
            },
            ast::DimExpr::Variadic(n) => match b.get(&n.name) {
                Some(Bound::Many(xs)) => parts.extend(xs.iter().map(|x| g.dim_str(*x))),
                _ => parts.push(format!("..{}", n.name)),
            },
        }
    }
    format!("[{}]", parts.join(", "))
}
