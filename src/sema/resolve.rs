//! Name resolution over the whole program, reachable or not.
//!
//! The standard library is the same for every program: a test resolves
//! it once (`check` with `stdlib` set), and compiling a user's file
//! resolves only that file.
//!
//! Reports: unknown names (with a suggestion), members a model lacks,
//! argument-count and argument-name errors of direct calls, recursive
//! functions, and symbolic dimensions nothing binds. Shapes are checked
//! later, by [`super::lower`], when calls are inlined.

use super::builtins::{ArgKind, Builtin};
use super::scope::{Def, DefId, ScopeId, Scopes, STDLIB};
use crate::diag::{self, code, Diag, Diagnostics, Span};
use crate::syntax::ast::*;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// What resolution found that lowering needs.
pub struct Resolved {
    /// Functions on a call cycle; lowering refuses to inline them.
    pub recursive: HashSet<DefId>,
}

/// Resolves the user's definitions, and the stdlib's too when `stdlib`.
pub fn check(s: &Scopes, diags: &mut Diagnostics, stdlib: bool) -> Resolved {
    let input_dims = input_dims(s);
    let mut calls: HashMap<DefId, Vec<(DefId, Span)>> = HashMap::default();
    for (id, entry) in s.defs.iter().enumerate() {
        if entry.scope == STDLIB && !stdlib {
            continue;
        }
        let mut w = Walker {
            s,
            scope: entry.scope,
            locals: Vec::new(),
            calls: Vec::new(),
            diags,
        };
        match entry.def {
            Def::Builtin(_) | Def::Model(..) => {}
            Def::Fn(f) => {
                let dims = fn_dims(f, w.diags);
                for p in &f.params {
                    if let Some(d) = &p.default {
                        w.expr(d);
                    }
                }
                w.locals = f.params.iter().map(|p| p.name.name.clone()).collect();
                if let Some(r) = &f.ret {
                    check_dims_bound(r, &dims, "the result type", w.diags);
                }
                for l in &f.body.lets {
                    w.expr(&l.value);
                    if let Some(t) = &l.ty {
                        check_dims_bound(t, &dims, "a `let` type", w.diags);
                    }
                    w.locals.push(l.name.name.clone());
                }
                w.expr(&f.body.result);
                calls.insert(id, std::mem::take(&mut w.calls));
            }
            Def::Param(p) => {
                for d in &p.ty.dims {
                    if let DimExpr::Sym(i) | DimExpr::Variadic(i) = d {
                        w.diags.push(
                            diag::error(
                                code::UNBOUND_DIM,
                                format!(
                                    "unbound symbolic dimension `{}` in parameter `{}`",
                                    i.name, p.name.name
                                ),
                            )
                            .with_labels(vec![i.span.primary("not known at compile time")])
                            .with_notes(vec![
                                "help: parameters need static shapes, such as `[784, 128]`".into(),
                            ]),
                        );
                    }
                }
            }
            Def::Input(i) => {
                if let Some(v) = &i.value {
                    w.expr(v);
                }
            }
            Def::Let(l) | Def::Output(l) => {
                w.expr(&l.value);
                if let Some(t) = &l.ty {
                    check_dims_bound(t, &input_dims, "this type", w.diags);
                }
            }
        }
    }
    if let Some((t, scope)) = s.train {
        let mut w = Walker {
            s,
            scope,
            locals: Vec::new(),
            calls: Vec::new(),
            diags,
        };
        // Only these settings hold program expressions; the others are
        // compile-time settings that lowering reads.
        let phase_settings = t.phases.iter().flat_map(|p| &p.settings);
        for st in t.settings.iter().chain(phase_settings) {
            if matches!(
                st.name.name.as_str(),
                "loss" | "predict" | "features" | "targets" | "params"
            ) {
                w.expr(&st.value);
            }
        }
    }
    Resolved {
        recursive: find_cycles(s, &calls, diags),
    }
}

/// The dimension names that inputs introduce (`input x: [B, 3]` binds `B`).
fn input_dims(s: &Scopes) -> HashSet<String> {
    let mut out = HashSet::default();
    for e in &s.defs {
        if let Def::Input(i) = e.def {
            for d in &i.ty.dims {
                if let DimExpr::Sym(n) | DimExpr::Variadic(n) = d {
                    out.insert(n.name.clone());
                }
            }
        }
    }
    out
}

/// The dimension names a function's parameters bind; reports a type with
/// two `..` parts.
fn fn_dims(f: &FnDef, diags: &mut Diagnostics) -> HashSet<String> {
    let mut out = HashSet::default();
    for p in &f.params {
        if let ParamType::Tensor(t) = &p.ty {
            let variadic: Vec<&Ident> = t
                .dims
                .iter()
                .filter_map(|d| match d {
                    DimExpr::Variadic(i) => Some(i),
                    _ => None,
                })
                .collect();
            if variadic.len() > 1 {
                diags.push(
                    diag::error(code::RANK, "a shape can have at most one `..` part")
                        .with_labels(vec![variadic[1].span.primary("second `..` part")]),
                );
            }
            for d in &t.dims {
                if let DimExpr::Sym(i) | DimExpr::Variadic(i) = d {
                    out.insert(i.name.clone());
                }
            }
        }
    }
    out
}

fn check_dims_bound(t: &TypeExpr, bound: &HashSet<String>, what: &str, diags: &mut Diagnostics) {
    for d in &t.dims {
        if let DimExpr::Sym(i) | DimExpr::Variadic(i) = d {
            if !bound.contains(&i.name) {
                diags.push(
                    diag::error(code::UNBOUND_DIM, format!("unbound symbolic dimension `{}`", i.name))
                        .with_labels(vec![i.span.primary(format!("`{}` appears in {what} but nothing binds it", i.name))])
                        .with_notes(vec![
                            "help: a dimension name must first appear in a parameter's type (or, outside functions, in an `input`'s type)".into(),
                        ]),
                );
            }
        }
    }
}

struct Walker<'s, 'a, 'd> {
    s: &'s Scopes<'a>,
    scope: ScopeId,
    locals: Vec<String>,
    calls: Vec<(DefId, Span)>,
    diags: &'d mut Diagnostics,
}

impl Walker<'_, '_, '_> {
    /// The definition a bare name refers to, unless it is a local.
    fn global(&self, name: &str) -> Option<DefId> {
        if self.locals.iter().any(|l| l == name) {
            return None;
        }
        self.s.lookup(self.scope, name)
    }

    fn expr(&mut self, e: &Expr) {
        match &e.kind {
            ExprKind::Number(..) | ExprKind::Bool(_) | ExprKind::Str(_) | ExprKind::Error => {}
            ExprKind::Name(i) => {
                if !self.locals.contains(&i.name) && self.s.lookup(self.scope, &i.name).is_none() {
                    let mut names = self.s.visible(self.scope);
                    names.extend(self.locals.iter().map(|s| s.as_str()));
                    self.diags.push(unknown_name(i, &names));
                }
            }
            ExprKind::Tensor(items) => items.iter().for_each(|x| self.expr(x)),
            ExprKind::Neg(x) => self.expr(x),
            ExprKind::Binary(_, _, a, b) => {
                self.expr(a);
                self.expr(b);
            }
            ExprKind::Member(base, m) => self.member(base, m),
            ExprKind::Call(callee, args) => self.call(callee, args, e.span),
        }
    }

    fn member(&mut self, base: &Expr, m: &Ident) {
        if let ExprKind::Name(i) = &base.kind {
            if let Some(Def::Model(model, inner)) = self.global(&i.name).map(|d| self.s.def(d).def)
            {
                if !self.s.scopes[inner].names.contains_key(&m.name) {
                    let names: Vec<&str> = self.s.scopes[inner]
                        .names
                        .keys()
                        .map(|k| k.as_str())
                        .collect();
                    let mut d = diag::error(
                        code::UNKNOWN_NAME,
                        format!("model `{}` has no member `{}`", model.name.name, m.name),
                    )
                    .with_labels(vec![
                        m.span.primary("unknown member"),
                        model
                            .name
                            .span
                            .secondary(format!("`{}` defined here", model.name.name)),
                    ]);
                    if let Some(sug) = diag::suggest(&m.name, names) {
                        d = d.with_notes(vec![format!("help: did you mean `{sug}`?")]);
                    }
                    self.diags.push(d);
                }
                return;
            }
        }
        self.expr(base);
        self.diags.push(
            diag::error(
                code::KIND,
                format!("`.{}` is only valid on a model", m.name),
            )
            .with_labels(vec![m
                .span
                .primary("member access on something that is not a model")]),
        );
    }

    fn call(&mut self, callee: &Expr, args: &[Arg], span: Span) {
        let target = match &callee.kind {
            ExprKind::Name(i) => self.global(&i.name).map(|d| (d, i.name.clone())),
            ExprKind::Member(base, m) => match &base.kind {
                ExprKind::Name(i) => match self.global(&i.name).map(|d| self.s.def(d).def) {
                    Some(Def::Model(_, inner)) => self.s.scopes[inner]
                        .names
                        .get(&m.name)
                        .map(|d| (*d, format!("{}.{}", i.name, m.name))),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        self.expr(callee);
        let target = target.map(|(d, n)| (d, self.s.def(d).def, n));
        match target {
            Some((_, Def::Builtin(b), name)) => {
                let formals = b.formals();
                // `scan` takes extra arguments for its function: its
                // lowering checks them.
                if b != Builtin::Scan {
                    if let Err(d) = bind_args(&name, &formals, args, span, None, &|| b.signature())
                    {
                        self.diags.push(d);
                    }
                }
                // Compile-time arguments (shapes, axes) hold dimension
                // names, not values: lowering checks them.
                for (i, a) in args.iter().enumerate() {
                    if !static_arg(b, a, i) {
                        self.expr(&a.value);
                    }
                }
            }
            Some((id, Def::Fn(f), name)) => {
                self.calls.push((id, span));
                let formals = fn_formals(f);
                if let Err(d) = bind_args(&name, &formals, args, span, Some(f.name.span), &|| {
                    fn_signature(f)
                }) {
                    self.diags.push(d);
                }
                args.iter().for_each(|a| self.expr(&a.value));
            }
            _ => args.iter().for_each(|a| self.expr(&a.value)),
        }
    }
}

/// Whether argument `i` of a call to `b` is a compile-time argument.
pub fn static_arg(b: Builtin, a: &Arg, i: usize) -> bool {
    let params = b.params();
    let p = match &a.name {
        Some(n) => params.iter().find(|p| p.name == n.name),
        None => params.get(i),
    };
    p.is_some_and(|p| p.kind != ArgKind::Tensor)
}

pub fn unknown_name(i: &Ident, candidates: &[&str]) -> Diag {
    let mut d = diag::error(
        code::UNKNOWN_NAME,
        format!("cannot find `{}` in this scope", i.name),
    )
    .with_labels(vec![i.span.primary("not found")]);
    let special = match i.name.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => Some("help: nnc has no `inf` constant: `1 / 0` is +∞ and `-1 / 0` is −∞; a mask can also use a large finite value such as `-1e30`"),
        "nan" => Some("help: nnc has no `nan` constant: `0 / 0` is NaN"),
        "pi" => Some("help: nnc has no `pi` constant: write it out, `3.14159265`"),
        _ => None,
    };
    if let Some(help) = special {
        d = d.with_notes(vec![help.to_string()]);
    } else if let Some(s) = diag::suggest(&i.name, candidates.iter().copied()) {
        d = d.with_notes(vec![format!("help: did you mean `{s}`?")]);
    }
    d
}

/// A formal parameter, for matching arguments.
pub struct Formal<'n> {
    pub name: &'n str,
    pub required: bool,
}

pub fn fn_formals(f: &FnDef) -> Vec<Formal<'_>> {
    f.params
        .iter()
        .map(|p| Formal {
            name: &p.name.name,
            required: p.default.is_none(),
        })
        .collect()
}

pub fn fn_signature(f: &FnDef) -> String {
    let ps: Vec<String> = f
        .params
        .iter()
        .map(|p| {
            let ty = match &p.ty {
                ParamType::Tensor(t) => crate::syntax::ast_type_str(t),
                ParamType::Fn(_) => "fn".into(),
            };
            match p.default {
                Some(_) => format!("{}: {} = …", p.name.name, ty),
                None => format!("{}: {}", p.name.name, ty),
            }
        })
        .collect();
    format!("{}({})", f.name.name, ps.join(", "))
}

/// Matches call arguments to formals: positional ones in order, named ones
/// by name. Returns, for each formal, the index of its argument (`None`:
/// use the default). `signature` gives the callee's signature for a
/// diagnostic's note; it is called only when there is one.
pub fn bind_args(
    callee: &str,
    formals: &[Formal],
    args: &[Arg],
    call: Span,
    def: Option<Span>,
    signature: &dyn Fn() -> String,
) -> Result<Vec<Option<usize>>, Diag> {
    let mut bound: Vec<Option<usize>> = vec![None; formals.len()];
    let with_def = |mut d: Diag| {
        if let Some(sp) = def {
            d.labels
                .push(sp.secondary(format!("`{callee}` defined here")));
        }
        d.with_notes(vec![format!("note: the signature is `{}`", signature())])
    };
    let positional = args.iter().filter(|a| a.name.is_none()).count();
    let (min, max) = (formals.iter().filter(|f| f.required).count(), formals.len());
    if positional > max {
        let extra = &args
            .iter()
            .filter(|a| a.name.is_none())
            .nth(max)
            .map(|a| a.value.span);
        let mut labels = vec![call.primary(format!("expected {}", count_str(min, max)))];
        if let Some(e) = extra {
            labels.push(e.secondary("first extra argument"));
        }
        return Err(with_def(
            diag::error(
                code::ARITY,
                format!(
                    "`{callee}` takes {} but {positional} were given",
                    count_str(min, max)
                ),
            )
            .with_labels(labels),
        ));
    }
    let mut pos = 0;
    for (ai, a) in args.iter().enumerate() {
        match &a.name {
            None => {
                bound[pos] = Some(ai);
                pos += 1;
            }
            Some(n) => match formals.iter().position(|f| f.name == n.name) {
                Some(fi) if bound[fi].is_some() => {
                    return Err(with_def(
                        diag::error(
                            code::NAMED_ARG,
                            format!("argument `{}` is given twice", n.name),
                        )
                        .with_labels(vec![n.span.primary("given again here")]),
                    ))
                }
                Some(fi) => bound[fi] = Some(ai),
                None => {
                    let mut d = diag::error(
                        code::NAMED_ARG,
                        format!("`{callee}` has no parameter named `{}`", n.name),
                    )
                    .with_labels(vec![n.span.primary("unknown parameter")]);
                    if let Some(s) = diag::suggest(&n.name, formals.iter().map(|f| f.name)) {
                        d = d.with_notes(vec![format!("help: did you mean `{s}`?")]);
                    }
                    return Err(with_def(d));
                }
            },
        }
    }
    let missing: Vec<&str> = formals
        .iter()
        .zip(&bound)
        .filter(|(f, b)| f.required && b.is_none())
        .map(|(f, _)| f.name)
        .collect();
    if !missing.is_empty() {
        let given = args.len();
        let names: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
        return Err(with_def(
            diag::error(
                code::ARITY,
                format!(
                    "`{callee}` takes {} but {given} were given",
                    count_str(min, max)
                ),
            )
            .with_labels(vec![call.primary(format!("missing {}", names.join(", ")))]),
        ));
    }
    Ok(bound)
}

fn count_str(min: usize, max: usize) -> String {
    let s = |n: usize| if n == 1 { "argument" } else { "arguments" };
    if min == max {
        format!("{min} {}", s(min))
    } else {
        format!("{min} to {max} {}", s(max))
    }
}

/// Finds call cycles among functions; reports each once and returns every
/// function on one.
fn find_cycles(
    s: &Scopes,
    calls: &HashMap<DefId, Vec<(DefId, Span)>>,
    diags: &mut Diagnostics,
) -> HashSet<DefId> {
    let mut recursive = HashSet::default();
    let mut ids: Vec<DefId> = calls.keys().copied().collect();
    ids.sort();
    for &start in &ids {
        if recursive.contains(&start) {
            continue;
        }
        // Depth-first search for a path from `start` back to itself.
        let mut stack: Vec<(DefId, usize)> = vec![(start, 0)];
        let mut path: Vec<(DefId, Span)> = Vec::new();
        let mut visited = HashSet::default();
        while let Some((node, next)) = stack.pop() {
            let edges = calls.get(&node).map(|v| v.as_slice()).unwrap_or(&[]);
            if next >= edges.len() {
                path.pop();
                continue;
            }
            stack.push((node, next + 1));
            let (to, span) = edges[next];
            if to == start {
                path.push((to, span));
                report_cycle(s, start, &path, diags);
                recursive.extend(path.iter().map(|(d, _)| *d));
                recursive.insert(start);
                break;
            }
            if visited.insert(to) {
                path.push((to, span));
                stack.push((to, 0));
            }
        }
    }
    recursive
}

fn report_cycle(s: &Scopes, start: DefId, path: &[(DefId, Span)], diags: &mut Diagnostics) {
    let name = |d: DefId| s.def(d).qual.clone();
    let Def::Fn(f) = s.def(start).def else { return };
    let chain: Vec<String> = std::iter::once(name(start))
        .chain(path.iter().map(|(d, _)| name(*d)))
        .map(|n| format!("`{n}`"))
        .collect();
    let first_call = path[0].1;
    let msg = if path.len() == 1 {
        format!("function `{}` calls itself", f.name.name)
    } else {
        format!("recursive functions: {}", chain.join(" → "))
    };
    diags.push(
        diag::error(code::RECURSION, msg)
            .with_labels(vec![
                first_call.primary("recursive call"),
                f.name.span.secondary("in this function"),
            ])
            .with_notes(vec![
                "note: functions are inlined at compile time, so recursion would never end".into(),
                "help: repeat a computation over a sequence with a scan (planned), or unroll it by hand".into(),
            ]),
    );
}
