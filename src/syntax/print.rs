//! A stable, indented text form of the AST for `nnc compile --emit ast` and
//! the parse snapshots. Expressions print fully parenthesised, so the
//! snapshot shows how precedence was resolved.

use super::ast::*;
use std::fmt::Write;

pub fn print_ast(file: &File) -> String {
    let mut out = String::new();
    for item in &file.items {
        item_to(&mut out, item, 0);
    }
    out
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn item_to(out: &mut String, item: &Item, depth: usize) {
    indent(out, depth);
    match item {
        Item::Fn(f) => {
            let params: Vec<String> = f
                .params
                .iter()
                .map(|p| {
                    let ty = match &p.ty {
                        ParamType::Tensor(t) => type_str(t),
                        ParamType::Fn(_) => "fn".to_string(),
                    };
                    match &p.default {
                        Some(d) => format!("{}: {} = {}", p.name.name, ty, expr_str(d)),
                        None => format!("{}: {}", p.name.name, ty),
                    }
                })
                .collect();
            let ret = f.ret.as_ref().map(type_str).unwrap_or_else(|| "_".into());
            let _ = writeln!(out, "fn {}({}) -> {}", f.name.name, params.join(", "), ret);
            for l in &f.body.lets {
                indent(out, depth + 1);
                let _ = writeln!(out, "{}", let_str("let", l));
            }
            indent(out, depth + 1);
            let _ = writeln!(out, "result {}", expr_str(&f.body.result));
        }
        Item::Model(m) => {
            let _ = writeln!(out, "model {}", m.name.name);
            for i in &m.items {
                item_to(out, i, depth + 1);
            }
        }
        Item::Param(p) => {
            let _ = writeln!(
                out,
                "{} {}: {} = {}",
                if p.state { "state" } else { "param" },
                p.name.name,
                type_str(&p.ty),
                expr_str(&p.init)
            );
        }
        Item::Input(i) => {
            let _ = write!(out, "input {}: {}", i.name.name, type_str(&i.ty));
            if let Some(v) = &i.value {
                let _ = write!(out, " = {}", expr_str(v));
            }
            out.push('\n');
        }
        Item::Let(l) => {
            let _ = writeln!(out, "{}", let_str("let", l));
        }
        Item::Output(l) => {
            let _ = writeln!(out, "{}", let_str("output", l));
        }
        Item::Train(t) => {
            let name = t
                .model
                .as_ref()
                .map(|m| format!(" {}", m.name))
                .unwrap_or_default();
            let _ = writeln!(out, "train{name}");
            for s in &t.settings {
                indent(out, depth + 1);
                let _ = writeln!(out, "{} = {}", s.name.name, expr_str(&s.value));
            }
            for p in &t.phases {
                indent(out, depth + 1);
                let _ = writeln!(out, "phase {}", p.name.name);
                for s in &p.settings {
                    indent(out, depth + 2);
                    let _ = writeln!(out, "{} = {}", s.name.name, expr_str(&s.value));
                }
            }
        }
    }
}

fn let_str(kw: &str, l: &LetDecl) -> String {
    match &l.ty {
        Some(t) => format!(
            "{kw} {}: {} = {}",
            l.name.name,
            type_str(t),
            expr_str(&l.value)
        ),
        None => format!("{kw} {} = {}", l.name.name, expr_str(&l.value)),
    }
}

pub(crate) fn type_str(t: &TypeExpr) -> String {
    let dims: Vec<String> = t
        .dims
        .iter()
        .map(|d| match d {
            DimExpr::Const(n, _) => n.to_string(),
            DimExpr::Sym(i) => i.name.clone(),
            DimExpr::Variadic(i) => format!("..{}", i.name),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

fn expr_str(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number(v, _) => format!("{v:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Name(i) => i.name.clone(),
        ExprKind::Tensor(items) => {
            let parts: Vec<String> = items.iter().map(expr_str).collect();
            format!("[{}]", parts.join(", "))
        }
        ExprKind::Neg(x) => format!("(-{})", expr_str(x)),
        ExprKind::Binary(op, _, a, b) => {
            format!("({} {} {})", expr_str(a), op.symbol(), expr_str(b))
        }
        ExprKind::Call(f, args) => {
            let parts: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{} = {}", n.name, expr_str(&a.value)),
                    None => expr_str(&a.value),
                })
                .collect();
            format!("{}({})", expr_str(f), parts.join(", "))
        }
        ExprKind::Member(x, m) => format!("{}.{}", expr_str(x), m.name),
        ExprKind::Error => "<error>".to_string(),
    }
}
