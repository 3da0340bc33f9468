//! Lowering: items and expressions to IR nodes, inlining every call.
//!
//! Values during lowering are tensors (IR nodes), functions (to be called
//! or passed on), models (namespaces), booleans (for flags such as
//! `keepdims`) or *poison*: the result of an expression that already
//! produced an error, which silences everything that depends on it.

use super::builtins::Builtin;
use super::resolve::{self, bind_args, fn_formals, fn_signature, Formal, Resolved};
use super::scope::{Def, DefId, ScopeId, Scopes, STDLIB};
use super::types::{self, Bindings, Bound, Mismatch};
use crate::diag::{self, code, Diag, Diagnostics, FileId, Span};
use crate::ir::{shape, BinaryOp, CmpOp, Dim, Graph, Node, Op, ReduceOp, Shape, UnaryOp};
use crate::syntax::ast::{self, BinOp, Expr, ExprKind, FnDef, ParamType};
use crate::tensor::Tensor;
use cranelift_entity::EntityRef;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

mod annotations;
mod builtin_calls;
mod items;
mod operators;
mod scan;
mod train;
pub(crate) use train::optimizer_setting;

/// Inlining deeper than this is refused: only recursion through function
/// arguments, which resolution cannot see, gets here.
/// How deep calls may nest while inlining. A chain of distinct functions
/// ends by itself; the limit keeps the compiler's own stack bounded.
const MAX_INLINE_DEPTH: usize = 200;
/// How often one function may be on the inlining stack at once. Direct
/// recursion is rejected before lowering; a function reached again
/// through a function argument (`fn f(g: fn) { g(f) }`) is caught here.
const MAX_REENTRY: usize = 16;

#[derive(Clone, Copy, Debug)]
enum Callee<'a> {
    Builtin(Builtin),
    User(&'a FnDef, DefId, ScopeId),
}

#[derive(Clone, Debug)]
enum Value<'a> {
    T(Node),
    Func(Callee<'a>),
    Model(ScopeId),
    /// `true`/`false`, which only compile-time arguments accept.
    Bool,
    Poison,
}

/// The environment of one function instance (or of the top level).
struct Env<'a> {
    scope: ScopeId,
    locals: Vec<(String, Value<'a>)>,
    dims: Bindings,
    /// Inside the stdlib, new nodes take the span of the user's call.
    site: Option<Span>,
}

/// The enclosing graph while a loop body is lowered, and the values the
/// body reads from it: (node outside, input node inside).
struct Outer {
    graph: Graph,
    captures: Vec<(Node, Node)>,
}

struct Lowerer<'s, 'a, 'd> {
    s: &'s Scopes<'a>,
    recursive: &'s HashSet<DefId>,
    g: Graph,
    diags: &'d mut Diagnostics,
    globals: HashMap<DefId, Value<'a>>,
    in_progress: HashSet<DefId>,
    top_dims: Bindings,
    stdlib_files: HashSet<FileId>,
    /// The functions being inlined, outermost first, with their call.
    inlining: Vec<(DefId, Span)>,
    /// Set while a `scan` body is lowered into `g`.
    outer: Option<Outer>,
    /// Random draws lowered so far: each gets its own salt.
    draws: u32,
}

/// The graph, the training description, and the nodes of the user's
/// named values.
type Lowered = (Graph, Option<crate::sema::TrainSpec>, Vec<(String, Node)>);

pub fn lower(s: &Scopes, resolved: &Resolved, diags: &mut Diagnostics) -> Lowered {
    let mut l = Lowerer {
        s,
        recursive: &resolved.recursive,
        g: Graph::new(),
        diags,
        globals: HashMap::default(),
        in_progress: HashSet::default(),
        top_dims: Bindings::default(),
        stdlib_files: stdlib_scope_files(s),
        inlining: Vec::new(),
        outer: None,
        draws: 0,
    };
    l.items();
    let mut train = l.train();
    let moved = match train.as_mut() {
        Some(t) => l.learnt_scalings(t),
        None => None,
    };
    let mut named: Vec<(String, Node)> = l
        .globals
        .iter()
        .filter_map(|(d, v)| match (v, s.def(*d).def) {
            (Value::T(n), Def::Param(_) | Def::Input(_) | Def::Let(_)) => Some((
                s.def(*d).qual.clone(),
                moved.as_ref().map_or(*n, |m| m[n.index()]),
            )),
            _ => None,
        })
        .collect();
    named.sort_by_key(|(_, n)| *n);
    (l.g, train, named)
}

impl Lowerer<'_, '_, '_> {
    /// Puts the `train` block's learnt scalings into the graph: each
    /// scaled input is read through two `State` parameters, `(x -
    /// center) / spread`, which start at 0 and 1 (no scaling) and which
    /// training sets from its rows. Returns the new node of each old one
    /// when the graph was rebuilt.
    fn learnt_scalings(&mut self, t: &mut crate::sema::TrainSpec) -> Option<Vec<Node>> {
        let data = t.data.as_ref()?;
        let span = data.span;
        let mut moved: Option<Vec<Node>> = None;
        for &(input, learnt) in &data.learnt {
            let info = &self.g.inputs[input];
            let shape = info.ty.shape.clone();
            let row: Option<Vec<u64>> = shape
                .iter()
                .skip(1)
                .map(|d| match d {
                    Dim::Known(k) => Some(*k),
                    Dim::Sym(_) => None,
                })
                .collect();
            let Some(row) = row.filter(|_| !shape.is_empty()) else {
                self.diags.push(
                    diag::error(
                        code::INPUT,
                        format!(
                            "input `{}` is {}: a scaling learnt per column needs its row's shape known",
                            info.name,
                            self.g.shape_str(&shape)
                        ),
                    )
                    .with_labels(vec![
                        span.primary("scaled here"),
                        info.span.secondary("this input"),
                    ]),
                );
                continue;
            };
            let [c, s] = learnt.params(&info.name);
            let [center, spread] = [(c, 0.0), (s, 1.0)].map(|(name, init)| {
                self.g.params.push(crate::ir::ParamInfo {
                    name,
                    role: crate::ir::Role::State,
                    shape: row.clone(),
                    init: crate::ir::Init::Constant(init),
                    seed: None,
                    span,
                })
            });
            let mut wrap = |g: &mut Graph, x: Node| {
                let c = g.add(Op::Param(center), span)?;
                let c = g.add(Op::Broadcast(c, shape.clone()), span)?;
                let s = g.add(Op::Param(spread), span)?;
                let s = g.add(Op::Broadcast(s, shape.clone()), span)?;
                let d = g.add(Op::Binary(crate::ir::BinaryOp::Sub, x, c), span)?;
                g.add(Op::Binary(crate::ir::BinaryOp::Div, d, s), span)
            };
            // Cannot fail: the parameters have the input's row shape (all
            // dimensions known, checked above), which broadcasts to the
            // input's shape, and the subtraction and division then take
            // operands of one shape.
            let map = self
                .g
                .wrap_input(input, &mut wrap)
                .expect("a row-shaped parameter broadcasts over its input");
            let at = |n: Node| map[n.index()];
            t.loss = at(t.loss);
            t.predict = t.predict.map(at);
            for ph in &mut t.phases {
                ph.loss = at(ph.loss);
            }
            moved = Some(match moved {
                Some(m) => m.into_iter().map(at).collect(),
                None => map,
            });
        }
        moved
    }
}

fn expr_kind_str(v: &Value) -> &'static str {
    match v {
        Value::T(_) => "a tensor",
        Value::Func(_) => "a function",
        Value::Model(_) => "a model",
        Value::Bool => "a boolean",
        Value::Poison => "an invalid value",
    }
}

impl<'a> Lowerer<'_, 'a, '_> {
    fn top_env(&self, scope: ScopeId) -> Env<'a> {
        Env {
            scope,
            locals: Vec::new(),
            dims: self.top_dims.clone(),
            site: None,
        }
    }

    fn span_in(&self, env: &Env, span: Span) -> Span {
        env.site.unwrap_or(span)
    }

    /// Adds a node; a typing failure here is a compiler bug, reported as an
    /// internal error rather than a panic.
    /// A tensor with more than [`MAX_ELEMENTS`](crate::ir::shape::MAX_ELEMENTS)
    /// elements is reported here, where its shape is formed, and poisons
    /// what uses it.
    fn add(&mut self, op: Op, span: Span) -> Option<Node> {
        match self.g.add(op, span) {
            Ok(n) if !crate::ir::shape::known_part_fits(self.g.shape(n)) => {
                self.diags.push(too_large(&self.g, self.g.shape(n), span));
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                self.diags.push(
                    diag::error(code::INTERNAL, format!("internal compiler error: {e}"))
                        .with_labels(vec![span.primary("while lowering this")])
                        .with_notes(vec!["note: this is a bug in nnc; please report it".into()]),
                );
                None
            }
        }
    }

    fn shape_str(&self, n: Node) -> String {
        self.g.shape_str(self.g.shape(n))
    }

    /// The tensor in `v`, or an error saying what was found instead.
    fn tensor(&mut self, v: &Value, span: Span) -> Option<Node> {
        match v {
            Value::T(n) => Some(*n),
            Value::Poison => None,
            other => {
                self.diags.push(
                    diag::error(
                        code::KIND,
                        format!("expected a tensor, found {}", expr_kind_str(other)),
                    )
                    .with_labels(vec![
                        span.primary(format!("this is {}", expr_kind_str(other)))
                    ]),
                );
                None
            }
        }
    }

    fn tensor_expr(&mut self, env: &mut Env<'a>, e: &'a Expr) -> Option<Node> {
        let v = self.expr(env, e);
        self.tensor(&v, e.span)
    }

    fn expr(&mut self, env: &mut Env<'a>, e: &'a Expr) -> Value<'a> {
        let span = self.span_in(env, e.span);
        match &e.kind {
            ExprKind::Error => Value::Poison,
            ExprKind::Bool(_) => Value::Bool,
            ExprKind::Str(_) => {
                self.diags.push(
                    diag::error(code::KIND, "a string is not a value")
                        .with_labels(vec![e.span.primary("a string")])
                        .with_notes(vec![
                            "note: strings only name files, in a `train` block's `data` setting"
                                .into(),
                        ]),
                );
                Value::Poison
            }
            ExprKind::Number(v, _) => self.fill(*v, Vec::new(), span),
            ExprKind::Tensor(_) => match literal(e) {
                Ok(t) => {
                    let c = self.g.consts.push(t);
                    self.add(Op::Const(c), span).map_or(Value::Poison, Value::T)
                }
                Err(d) => {
                    self.diags.push(d);
                    Value::Poison
                }
            },
            ExprKind::Name(i) => self.name(env, i),
            ExprKind::Member(base, m) => match self.expr(env, base) {
                Value::Model(scope) => match self.s.scopes[scope].names.get(&m.name) {
                    Some(&d) => self.def_value(d),
                    None => Value::Poison, // reported by resolution
                },
                Value::Poison => Value::Poison,
                other => {
                    self.diags.push(
                        diag::error(
                            code::KIND,
                            format!("`.{}` is only valid on a model", m.name),
                        )
                        .with_labels(vec![
                            m.span
                                .primary("member access on something that is not a model"),
                            base.span
                                .secondary(format!("this is {}", expr_kind_str(&other))),
                        ]),
                    );
                    Value::Poison
                }
            },
            ExprKind::Neg(x) => match self.tensor_expr(env, x) {
                Some(n) => self
                    .add(Op::Unary(UnaryOp::Neg, n), span)
                    .map_or(Value::Poison, Value::T),
                None => Value::Poison,
            },
            ExprKind::Binary(op, op_span, a, b) => self.binary(env, *op, *op_span, a, b, span),
            ExprKind::Call(callee, args) => {
                let f = self.expr(env, callee);
                match f {
                    Value::Func(Callee::Builtin(b)) => self.builtin(env, b, callee, args, e.span),
                    Value::Func(Callee::User(fd, id, scope)) => {
                        self.inline(env, fd, id, scope, args, e.span)
                    }
                    Value::Poison => {
                        for a in args {
                            self.expr(env, &a.value);
                        }
                        Value::Poison
                    }
                    other => {
                        self.diags.push(
                            diag::error(
                                code::NOT_CALLABLE,
                                format!("{} cannot be called", expr_kind_str(&other)),
                            )
                            .with_labels(vec![callee.span.primary(
                                format!("this is {}, not a function", expr_kind_str(&other)),
                            )]),
                        );
                        Value::Poison
                    }
                }
            }
        }
    }

    fn fill(&mut self, value: f32, shape: Shape, span: Span) -> Value<'a> {
        self.add(Op::Fill { value, shape }, span)
            .map_or(Value::Poison, Value::T)
    }

    fn name(&mut self, env: &Env<'a>, i: &ast::Ident) -> Value<'a> {
        if let Some((_, v)) = env.locals.iter().rev().find(|(n, _)| *n == i.name) {
            return v.clone();
        }
        match self.s.lookup(env.scope, &i.name) {
            Some(d) => self.def_value(d),
            None => {
                let mut names = self.s.visible(env.scope);
                names.extend(env.locals.iter().map(|(n, _)| n.as_str()));
                self.diags.push(resolve::unknown_name(i, &names));
                Value::Poison
            }
        }
    }

    fn def_value(&mut self, d: DefId) -> Value<'a> {
        let entry = self.s.def(d);
        match entry.def {
            Def::Builtin(b) => Value::Func(Callee::Builtin(b)),
            Def::Fn(f) => Value::Func(Callee::User(f, d, entry.scope)),
            Def::Model(_, inner) => Value::Model(inner),
            Def::Param(_) | Def::Input(_) | Def::Let(_) | Def::Output(_) => match self.outer.take()
            {
                None => self.global(d),
                // Inside a loop body: the value lives in the enclosing
                // graph, and comes into the body as an input.
                Some(mut outer) => {
                    std::mem::swap(&mut self.g, &mut outer.graph);
                    let v = self.global(d);
                    std::mem::swap(&mut self.g, &mut outer.graph);
                    let v = match v {
                        Value::T(n) => Value::T(self.capture(&mut outer, n)),
                        other => other,
                    };
                    self.outer = Some(outer);
                    v
                }
            },
        }
    }

    /// Inlines a call of a user (or stdlib) function.
    fn inline(
        &mut self,
        env: &mut Env<'a>,
        f: &'a FnDef,
        id: DefId,
        scope: ScopeId,
        args: &'a [ast::Arg],
        span: Span,
    ) -> Value<'a> {
        let formals: Vec<Formal> = fn_formals(f);
        let bound = match bind_args(
            &f.name.name,
            &formals,
            args,
            span,
            Some(f.name.span),
            &|| fn_signature(f),
        ) {
            Ok(b) => b,
            Err(d) => {
                self.diags.push(d);
                return Value::Poison;
            }
        };
        // Arguments are evaluated in the caller; defaults in the callee's
        // defining scope.
        let mut values = Vec::with_capacity(f.params.len());
        for (p, b) in f.params.iter().zip(&bound) {
            let (v, sp) = match (b, &p.default) {
                (Some(ai), _) => (self.expr(env, &args[*ai].value), args[*ai].value.span),
                (None, Some(d)) => {
                    let mut denv = self.top_env(scope);
                    (self.expr(&mut denv, d), span)
                }
                (None, None) => (Value::Poison, span), // reported by bind_args
            };
            values.push((v, sp));
        }
        self.instantiate(env.site, f, id, scope, values, span)
    }

    /// Inlines `f` with evaluated arguments (one per parameter).
    fn instantiate(
        &mut self,
        caller_site: Option<Span>,
        f: &'a FnDef,
        id: DefId,
        scope: ScopeId,
        values: Vec<(Value<'a>, Span)>,
        span: Span,
    ) -> Value<'a> {
        if self.recursive.contains(&id) || values.iter().any(|(v, _)| matches!(v, Value::Poison)) {
            return Value::Poison;
        }
        let reentries = self.inlining.iter().filter(|(d, _)| *d == id).count();
        if reentries >= MAX_REENTRY || self.inlining.len() >= MAX_INLINE_DEPTH {
            let (message, note) = match reentries >= MAX_REENTRY {
                true => (
                    format!(
                        "`{}` calls itself through its arguments without end",
                        f.name.name
                    ),
                    "note: a function that receives itself as an argument recurses without end",
                ),
                false => (
                    format!(
                        "calls nested more than {MAX_INLINE_DEPTH} deep while inlining `{}`",
                        f.name.name
                    ),
                    "help: every call is inlined; flatten the chain of calls",
                ),
            };
            self.diags.push(
                diag::error(code::RECURSION, message)
                    .with_labels(vec![
                        span.primary("this call"),
                        f.name.span.secondary("function defined here"),
                    ])
                    .with_notes(vec![note.into()]),
            );
            return Value::Poison;
        }
        let mut dims = Bindings::default();
        for (p, (v, sp)) in f.params.iter().zip(&values) {
            if !self.check_param(f, p, v, *sp, &mut dims) {
                return Value::Poison;
            }
        }
        let site = if self.stdlib_files.contains(&f.name.span.file) {
            Some(caller_site.unwrap_or(span))
        } else {
            caller_site
        };
        let mut inner = Env {
            scope,
            locals: f
                .params
                .iter()
                .map(|p| p.name.name.clone())
                .zip(values.into_iter().map(|(v, _)| v))
                .collect(),
            dims,
            site,
        };
        self.inlining.push((id, span));
        let reported = self.diags.len();
        for l in &f.body.lets {
            let v = self.expr(&mut inner, &l.value);
            let v = self.check_annotation(
                &inner,
                l.ty.as_ref(),
                v,
                l.value.span,
                &format!("`{}`", l.name.name),
            );
            inner.locals.push((l.name.name.clone(), v));
        }
        let result = self.expr(&mut inner, &f.body.result);
        self.inlining.pop();
        // An error inside a user's function body: say which call led
        // there, at every level up to a few (the stdlib's errors already
        // point at the call, through `site`).
        if site.is_none() {
            let name = &f.name.name;
            self.diags.amend_since(reported, |d| {
                if d.severity >= codespan_reporting::diagnostic::Severity::Error
                    && d.labels.len() < 8
                    && d.labels
                        .iter()
                        .all(|l| (l.file_id, l.range.clone()) != (span.file, span.range()))
                {
                    d.labels
                        .push(span.secondary(format!("in this call of `{name}`")));
                }
            });
        }
        match &f.ret {
            Some(rt) => self.check_result(f, rt, &inner, result),
            None => result,
        }
    }
}

/// A tensor literal's value: nested lists of numbers, not ragged.
pub(super) fn literal(e: &Expr) -> Result<Tensor, Diag> {
    match &e.kind {
        ExprKind::Number(v, _) => Ok(Tensor::scalar(*v)),
        ExprKind::Error => Err(
            diag::error(code::LITERAL, "invalid element in a tensor literal")
                .with_labels(vec![e.span.primary("here")]),
        ),
        ExprKind::Tensor(items) => {
            let mut shape: Option<Vec<usize>> = None;
            let mut data = Vec::new();
            for it in items {
                let t = literal(it)?;
                match &shape {
                    None => shape = Some(t.shape.clone()),
                    Some(s) if *s != t.shape => {
                        return Err(diag::error(
                            code::LITERAL,
                            "ragged tensor literal: rows differ in shape",
                        )
                        .with_labels(vec![
                            it.span.primary(format!("this has shape {:?}", t.shape)),
                            items[0]
                                .span
                                .secondary(format!("the first has shape {s:?}")),
                        ])
                        .with_notes(vec![
                            "help: every row of a tensor literal must have the same length".into(),
                        ]))
                    }
                    Some(_) => {}
                }
                data.extend(t.data);
            }
            let mut s = vec![items.len()];
            s.extend(shape.unwrap_or_default());
            Ok(Tensor::new(s, data))
        }
        _ => Err(
            diag::error(code::LITERAL, "tensor literals hold numbers only")
                .with_labels(vec![e.span.primary("not a number")])
                .with_notes(vec![
                    "help: compute with the values instead, e.g. `x * [1, 2]`".into(),
                ]),
        ),
    }
}

/// The standard library's files, whose calls take the span of the user's
/// call site.
pub fn stdlib_scope_files(s: &Scopes) -> HashSet<FileId> {
    s.scopes[STDLIB]
        .order
        .iter()
        .filter_map(|d| super::scope::def_name_span(&s.def(*d).def).map(|sp| sp.file))
        .collect()
}

/// A tensor whose shape holds more elements than nnc supports.
pub(crate) fn too_large(g: &Graph, shape: &[crate::ir::Dim], span: Span) -> Diag {
    diag::error(
        code::SIZE,
        format!("a tensor of shape {} is too large", g.shape_str(shape)),
    )
    .with_labels(vec![
        span.primary("this tensor would hold more than 2^48 elements")
    ])
    .with_notes(vec![
        "note: a tensor holds at most 2^48 elements (a PiB of f32)".into(),
        "help: check the dimensions; a shape's elements are the product of its dimensions".into(),
    ])
}
