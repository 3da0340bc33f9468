//! Items: parameters (with their initializers), inputs, named values and
//! outputs, in source order.

use super::builtin_calls::const_number;
use super::*;
use crate::ir::{Init, InputInfo, Output, ParamInfo, Type};

/// The initializers a parameter may name, with their parameters.
const INITIALIZERS: &[(&str, &[&str])] = &[
    ("zeros", &[]),
    ("ones", &[]),
    ("constant", &["value"]),
    ("uniform", &["low", "high"]),
    ("normal", &["mean", "std"]),
    ("xavier_uniform", &[]),
    ("glorot_uniform", &[]),
    ("xavier_normal", &[]),
    ("glorot_normal", &[]),
    ("he_uniform", &[]),
    ("kaiming_uniform", &[]),
    ("he_normal", &[]),
    ("kaiming_normal", &[]),
];

impl<'a> Lowerer<'_, 'a, '_> {
    pub(super) fn items(&mut self) {
        let user_defs: Vec<DefId> = (0..self.s.defs.len())
            .filter(|&d| self.s.def(d).scope >= super::super::scope::USER)
            .collect();
        // Inputs first: they introduce the graph's symbolic dimensions.
        for &d in &user_defs {
            if let Def::Input(i) = self.s.def(d).def {
                for dim in &i.ty.dims {
                    if let ast::DimExpr::Sym(n) = dim {
                        let sym = self.g.sym(&n.name);
                        self.top_dims
                            .insert(n.name.clone(), Bound::One(Dim::Sym(sym)));
                    }
                }
            }
        }
        for &d in &user_defs {
            if matches!(self.s.def(d).def, Def::Input(_) | Def::Param(_)) {
                self.global(d);
            }
        }
        for &d in &user_defs {
            if matches!(self.s.def(d).def, Def::Let(_) | Def::Output(_)) {
                self.global(d);
            }
        }
    }

    /// The value of a parameter, input, `let` or `output`, lowered once.
    pub(super) fn global(&mut self, d: DefId) -> Value<'a> {
        if let Some(v) = self.globals.get(&d) {
            return v.clone();
        }
        let entry = self.s.def(d).clone();
        if !self.in_progress.insert(d) {
            if let Def::Let(l) | Def::Output(l) = entry.def {
                self.diags.push(
                    diag::error(
                        code::CYCLE,
                        format!("`{}` is defined in terms of itself", l.name.name),
                    )
                    .with_labels(vec![l
                        .name
                        .span
                        .primary("this definition depends on its own value")]),
                );
            }
            return Value::Poison;
        }
        let v = match entry.def {
            Def::Param(p) => self.param(p, &entry.qual),
            Def::Input(i) => self.input(i, &entry.qual),
            Def::Let(l) | Def::Output(l) => {
                let mut env = self.top_env(entry.scope);
                let v = self.expr(&mut env, &l.value);
                let v = self.check_annotation(
                    &env,
                    l.ty.as_ref(),
                    v,
                    l.value.span,
                    &format!("`{}`", l.name.name),
                );
                if let Def::Output(_) = entry.def {
                    match &v {
                        Value::T(n) => self.g.outputs.push(Output {
                            name: entry.qual.clone(),
                            node: *n,
                            span: l.name.span,
                        }),
                        Value::Poison => {}
                        other => self.diags.push(
                            diag::error(
                                code::KIND,
                                format!(
                                    "an output must be a tensor, found {}",
                                    expr_kind_str(other)
                                ),
                            )
                            .with_labels(vec![l.value.span.primary("not a tensor")]),
                        ),
                    }
                }
                v
            }
            Def::Builtin(_) | Def::Fn(_) | Def::Model(..) => {
                unreachable!("only values are lowered as globals")
            }
        };
        self.in_progress.remove(&d);
        self.globals.insert(d, v.clone());
        v
    }

    fn param(&mut self, p: &'a ast::ParamDecl, qual: &str) -> Value<'a> {
        let mut shape = Vec::new();
        for d in &p.ty.dims {
            match d {
                ast::DimExpr::Const(n, _) => shape.push(*n),
                _ => return Value::Poison, // reported by resolution
            }
        }
        let (init, seed) = match self.init(&p.init, &shape) {
            Ok(x) => x,
            Err(d) => {
                self.diags.push(d);
                return Value::Poison;
            }
        };
        let id = self.g.params.push(ParamInfo {
            name: qual.to_string(),
            role: if p.state {
                crate::ir::Role::State
            } else {
                crate::ir::Role::Trainable
            },
            shape,
            init,
            seed,
            span: p.name.span,
        });
        self.add(Op::Param(id), p.name.span)
            .map_or(Value::Poison, Value::T)
    }

    /// Reads an initializer: a number, a literal of the parameter's shape,
    /// or a call such as `normal(0, 0.01, seed = 3)`.
    fn init(&mut self, e: &'a Expr, shape: &[u64]) -> Result<(Init, Option<u64>), Diag> {
        let (name, args): (&ast::Ident, &[ast::Arg]) = match &e.kind {
            ExprKind::Number(v, _) => return Ok((Init::Constant(*v), None)),
            ExprKind::Tensor(_) => {
                let t = literal(e)?;
                let want: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                if t.shape != want {
                    return Err(diag::error(
                        code::INIT,
                        format!(
                            "initial value has shape {:?}, but the parameter is {:?}",
                            t.shape, want
                        ),
                    )
                    .with_labels(vec![e
                        .span
                        .primary(format!("this has shape {:?}", t.shape))]));
                }
                return Ok((Init::Tensor(self.g.consts.push(t)), None));
            }
            ExprKind::Name(i) => (i, &[]),
            ExprKind::Call(callee, args) => match &callee.kind {
                ExprKind::Name(i) => (i, args.as_slice()),
                _ => return Err(bad_init(e)),
            },
            ExprKind::Error => return Ok((Init::Constant(0.0), None)),
            _ => return Err(bad_init(e)),
        };
        let Some((_, params)) = INITIALIZERS.iter().find(|(n, _)| *n == name.name) else {
            let mut d = diag::error(code::INIT, format!("unknown initializer `{}`", name.name))
                .with_labels(vec![name.span.primary("not an initializer")]);
            if let Some(s) = diag::suggest(&name.name, INITIALIZERS.iter().map(|(n, _)| *n)) {
                d = d.with_notes(vec![format!("help: did you mean `{s}`?")]);
            }
            return Err(d);
        };
        let mut formals: Vec<Formal> = params
            .iter()
            .map(|n| Formal {
                name: n,
                required: true,
            })
            .collect();
        formals.push(Formal {
            name: "seed",
            required: false,
        });
        let sig = || {
            let mut sig: Vec<String> = params.iter().map(|s| s.to_string()).collect();
            sig.push("seed = …".into());
            format!("{}({})", name.name, sig.join(", "))
        };
        let bound = bind_args(&name.name, &formals, args, e.span, None, &sig)?;
        let mut vals = Vec::new();
        for b in &bound[..params.len()] {
            let ai = b.expect("bind_args checked required arguments");
            vals.push(const_number(&args[ai].value, "an initializer argument")?);
        }
        let seed = match bound[params.len()] {
            Some(ai) => {
                let v = const_number(&args[ai].value, "`seed`")?;
                if v < 0.0 || v.fract() != 0.0 {
                    return Err(
                        diag::error(code::INIT, "`seed` must be a non-negative integer")
                            .with_labels(vec![args[ai].value.span.primary("here")]),
                    );
                }
                Some(v as u64)
            }
            None => None,
        };
        let init = match name.name.as_str() {
            "zeros" => Init::Constant(0.0),
            "ones" => Init::Constant(1.0),
            "constant" => Init::Constant(vals[0]),
            "uniform" => Init::Uniform {
                low: vals[0],
                high: vals[1],
            },
            "normal" => Init::Normal {
                mean: vals[0],
                std: vals[1],
            },
            "xavier_uniform" | "glorot_uniform" => Init::XavierUniform,
            "xavier_normal" | "glorot_normal" => Init::XavierNormal,
            "he_uniform" | "kaiming_uniform" => Init::HeUniform,
            _ => Init::HeNormal,
        };
        if let Init::Uniform { low, high } = init {
            if low > high {
                return Err(diag::error(code::INIT, "`uniform` needs low <= high")
                    .with_labels(vec![e.span.primary("empty range")]));
            }
        }
        if let Init::Normal { std, .. } = init {
            if std < 0.0 {
                return Err(diag::error(code::INIT, "`normal` needs a non-negative std")
                    .with_labels(vec![e.span.primary("negative std")]));
            }
        }
        Ok((init, seed))
    }

    fn input(&mut self, i: &'a ast::InputDecl, qual: &str) -> Value<'a> {
        let mut shape = Vec::new();
        for d in &i.ty.dims {
            match d {
                ast::DimExpr::Const(n, _) => shape.push(Dim::Known(*n)),
                ast::DimExpr::Sym(n) => shape.push(Dim::Sym(self.g.sym(&n.name))),
                ast::DimExpr::Variadic(n) => {
                    self.diags.push(
                        diag::error(
                            code::RANK,
                            format!("input `{}` needs a fixed rank", i.name.name),
                        )
                        .with_labels(vec![n
                            .span
                            .primary("`..` is only allowed in function signatures")]),
                    );
                    return Value::Poison;
                }
            }
        }
        let mut default = None;
        if let Some(v) = &i.value {
            let t = match literal(v) {
                Ok(t) => t,
                Err(d) => {
                    self.diags.push(d);
                    return Value::Poison;
                }
            };
            let fits = t.shape.len() == shape.len()
                && t.shape.iter().zip(&shape).all(|(&n, d)| match d {
                    Dim::Known(k) => *k == n as u64,
                    Dim::Sym(_) => true,
                });
            if !fits {
                let want = self.g.shape_str(&shape);
                self.diags.push(
                    diag::error(
                        code::INPUT,
                        format!(
                            "the value of input `{}` has shape {:?}, but its type is {want}",
                            i.name.name, t.shape
                        ),
                    )
                    .with_labels(vec![
                        v.span.primary(format!("this has shape {:?}", t.shape)),
                        i.ty.span.secondary("declared type"),
                    ]),
                );
                return Value::Poison;
            }
            default = Some(self.g.consts.push(t));
        }
        let id = self.g.inputs.push(InputInfo {
            name: qual.to_string(),
            ty: Type::f32(shape),
            default,
            span: i.name.span,
        });
        self.add(Op::Input(id), i.name.span)
            .map_or(Value::Poison, Value::T)
    }
}

fn bad_init(e: &Expr) -> Diag {
    diag::error(code::INIT, "expected an initializer")
        .with_labels(vec![e.span.primary("not an initializer")])
        .with_notes(vec!["help: write a number, a tensor literal, or a call such as `zeros()`, `normal(0, 0.01)` or `xavier_uniform(seed = 1)`".into()])
}
