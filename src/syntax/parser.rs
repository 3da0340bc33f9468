//! From source text to [`ast::File`]: pest does the parsing, a Pratt parser
//! the operator precedence, and this module turns pest's pairs into the AST.
//!
//! A syntax error stops the parse (pest has no recovery) and becomes one
//! diagnostic that says what was expected and what was found. Malformed
//! numeric literals are reported here too, without stopping: the grammar
//! reads them greedily so each gets its own diagnostic.

use super::ast::*;
use crate::diag::{self, code, Diagnostics, FileId, Span};
use pest::error::InputLocation;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/nn.pest"]
struct NnParser;

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg))
            .op(Op::infix(Rule::pow, Assoc::Right))
            .op(Op::postfix(Rule::call_args) | Op::postfix(Rule::member))
    })
}

/// How deep brackets may nest. Parsing recurses through several rules per
/// bracket, and a parse deeper than its thread's stack (8 MiB on a main
/// thread, 2 MiB on others; a Python program's or a library user's) would
/// crash the process instead of failing with a diagnostic.
pub const MAX_BRACKETS: usize = 256;

/// How deep an expression's tree may be: the operators and operands of the
/// expressions around a point together (`1 + 1 + … + 1` is a tree as deep
/// as it has terms). The passes over the tree recurse that deep, for the
/// reason [`MAX_BRACKETS`] gives.
pub const MAX_DEPTH: usize = 1000;

/// Runs pest's parser for `rule` over `source`. Pest's record of every
/// rule it tried (its error detail, which a syntax error's diagnostic
/// reads: what was expected, how far the parse reached) costs more than
/// half of a parse (a 20 KB model, `NNC_LOG=compile`'s parse stage:
/// 7.7 ms with it, 3.2 ms without), so a parse runs without it and only
/// a failed one runs again with it, giving the same error. The setting
/// is the process's, read when a parse starts, and off but while a failed
/// parse runs again: that run holds a lock, so that each failed parse
/// gets its detail when threads parse at once. A parse that starts
/// meanwhile takes the detail too, which changes its time, not its
/// result. Parses that succeed take no lock: the stdlib's, on a thread of
/// its own, and the file's run side by side.
fn pest_parse(
    rule: Rule,
    source: &str,
) -> Result<pest::iterators::Pairs<'_, Rule>, pest::error::Error<Rule>> {
    NnParser::parse(rule, source).or_else(|_| {
        static DETAIL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        // A panic while held leaves nothing half-done: the lock guards a
        // flag, which `Detail` turns off again however the parse ends.
        let _held = DETAIL.lock().unwrap_or_else(|e| e.into_inner());
        struct Detail;
        impl Drop for Detail {
            fn drop(&mut self) {
                pest::set_error_detail(false);
            }
        }
        let _detail = Detail;
        pest::set_error_detail(true);
        NnParser::parse(rule, source)
    })
}

/// Parses one source file. Returns `None` after a syntax error (already in
/// `diags`); invalid literals are reported but still give a tree.
pub fn parse(file: FileId, source: &str, diags: &mut Diagnostics) -> Option<File> {
    if let Some(at) = too_deep(source) {
        diags.push(nested_too_deep(file, at));
        return None;
    }
    let pairs = match pest_parse(Rule::file, source) {
        Ok(pairs) => pairs,
        Err(e) => {
            diags.push(syntax_error(file, source, &e));
            return None;
        }
    };
    let mut b = Builder::new(file, diags);
    let mut items = Vec::new();
    for pair in pairs.flat_map(|p| p.into_inner()) {
        if pair.as_rule() != Rule::EOI {
            items.push(b.item(pair));
        }
    }
    Some(File { items })
}

/// Parses a single expression (a REPL line). Returns `None` after a
/// syntax error (already in `diags`).
pub fn parse_expr(file: FileId, source: &str, diags: &mut Diagnostics) -> Option<Expr> {
    if let Some(at) = too_deep(source) {
        diags.push(nested_too_deep(file, at));
        return None;
    }
    let mut pairs = match pest_parse(Rule::repl_expr, source) {
        Ok(pairs) => pairs,
        Err(e) => {
            diags.push(syntax_error(file, source, &e));
            return None;
        }
    };
    let top = pairs.next()?;
    let expr = top.into_inner().find(|p| p.as_rule() == Rule::expr)?;
    Some(Builder::new(file, diags).expr(expr))
}

/// The offset of the first bracket (outside comments and strings) nested
/// deeper than [`MAX_BRACKETS`].
fn too_deep(source: &str) -> Option<usize> {
    let b = source.as_bytes();
    let (mut i, mut depth) = (0, 0usize);
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'/', Some(b'/')) => {
                i = source[i..].find('\n').map_or(b.len(), |n| i + n);
            }
            (b'/', Some(b'*')) => {
                i = source[i + 2..]
                    .find("*/")
                    .map_or(b.len(), |n| i + 2 + n + 1);
            }
            // A string ends at its quote or at the line's end.
            (b'"', _) => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += 1;
                }
            }
            (b'(' | b'[' | b'{', _) => {
                depth += 1;
                if depth > MAX_BRACKETS {
                    return Some(i);
                }
            }
            (b')' | b']' | b'}', _) => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

fn nested_too_deep(file: FileId, at: usize) -> diag::Diag {
    diag::error(
        code::SYNTAX,
        format!("syntax error: brackets nested more than {MAX_BRACKETS} deep"),
    )
    .with_labels(vec![
        Span::new(file, at, at + 1).primary("this one is too deep")
    ])
    .with_notes(vec!["help: name inner parts with `let`".into()])
}

/// Where the first syntax error of `source` is (a byte offset, the
/// farthest the parser reached), read as a file (`expr` false) or as a
/// REPL expression; `None` when it parses. The REPL asks, for an input
/// with brackets open, whether more lines could complete it: only when
/// the error is at its end.
pub fn syntax_error_at(source: &str, expr: bool) -> Option<usize> {
    if let Some(at) = too_deep(source) {
        return Some(at);
    }
    let rule = if expr { Rule::repl_expr } else { Rule::file };
    let e = pest_parse(rule, source).err()?;
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    Some(
        e.parse_attempts()
            .map_or(pos, |a| pos.max(a.max_position))
            .min(source.len()),
    )
}

struct Builder<'d> {
    file: FileId,
    diags: &'d mut Diagnostics,
    /// The operators and operands of the expressions being built around
    /// the current one (at most [`MAX_DEPTH`]).
    depth: usize,
}

// The grammar fixes the shape of every pair, so the `next()` calls below
// cannot come up empty on a tree pest accepted; `child` documents that.
fn child<'i>(it: &mut pest::iterators::Pairs<'i, Rule>) -> Pair<'i, Rule> {
    it.next().expect("the grammar guarantees this child")
}

impl<'d> Builder<'d> {
    fn new(file: FileId, diags: &'d mut Diagnostics) -> Self {
        Builder {
            file,
            diags,
            depth: 0,
        }
    }

    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    fn item(&mut self, pair: Pair<Rule>) -> Item {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut it = pair.into_inner();
        match rule {
            Rule::fn_def => Item::Fn(self.fn_def(it, span)),
            Rule::model_def => {
                let name = self.ident(child(&mut it));
                let items = it.map(|p| self.item(p)).collect();
                Item::Model(ModelDef { name, items, span })
            }
            Rule::param_decl => {
                let state = child(&mut it).as_str() == "state";
                let name = self.ident(child(&mut it));
                let ty = self.type_expr(child(&mut it));
                let init = self.expr(child(&mut it));
                Item::Param(ParamDecl {
                    name,
                    state,
                    ty,
                    init,
                    span,
                })
            }
            Rule::input_decl => {
                let name = self.ident(child(&mut it));
                let ty = self.type_expr(child(&mut it));
                let value = it.next().map(|p| self.expr(p));
                Item::Input(InputDecl {
                    name,
                    ty,
                    value,
                    span,
                })
            }
            Rule::let_item => Item::Let(self.let_decl(it, span)),
            Rule::output_decl => Item::Output(self.let_decl(it, span)),
            Rule::train_def => {
                let mut model = None;
                let mut settings = Vec::new();
                let mut phases = Vec::new();
                for p in it {
                    match p.as_rule() {
                        Rule::ident => model = Some(self.ident(p)),
                        Rule::phase => {
                            let span = self.span(&p);
                            let mut pi = p.into_inner();
                            let _keyword = child(&mut pi);
                            let name = self.ident(child(&mut pi));
                            let settings = pi.map(|s| self.setting(s)).collect();
                            phases.push(Phase {
                                name,
                                settings,
                                span,
                            });
                        }
                        _ => settings.push(self.setting(p)),
                    }
                }
                Item::Train(TrainDef {
                    model,
                    settings,
                    phases,
                    span,
                })
            }
            r => unreachable!("rule {r:?} is not an item in the grammar"),
        }
    }

    fn setting(&mut self, p: Pair<Rule>) -> Setting {
        let mut si = p.into_inner();
        let name = self.ident(child(&mut si));
        let value = self.expr(child(&mut si));
        Setting { name, value }
    }

    fn fn_def(&mut self, mut it: pest::iterators::Pairs<Rule>, span: Span) -> FnDef {
        let name = self.ident(child(&mut it));
        let params = child(&mut it)
            .into_inner()
            .map(|p| {
                let mut pi = p.into_inner();
                let name = self.ident(child(&mut pi));
                let ty_pair = child(&mut pi);
                let ty = match ty_pair.as_rule() {
                    Rule::fn_type => ParamType::Fn(self.span(&ty_pair)),
                    _ => ParamType::Tensor(self.type_expr(ty_pair)),
                };
                let default = pi.next().map(|d| self.expr(d));
                FnParam { name, ty, default }
            })
            .collect();
        let mut ret = None;
        let mut next = child(&mut it);
        if next.as_rule() == Rule::ret_type {
            ret = Some(self.type_expr(child(&mut next.into_inner())));
            next = child(&mut it);
        }
        let body = self.block(next);
        FnDef {
            name,
            params,
            ret,
            body,
            span,
        }
    }

    fn block(&mut self, pair: Pair<Rule>) -> Block {
        let mut lets = Vec::new();
        let mut result = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::let_stmt => {
                    let span = self.span(&p);
                    lets.push(self.let_decl(p.into_inner(), span));
                }
                _ => result = Some(self.expr(p)),
            }
        }
        Block {
            lets,
            result: result.expect("the grammar requires a block to end in an expression"),
        }
    }

    fn let_decl(&mut self, mut it: pest::iterators::Pairs<Rule>, span: Span) -> LetDecl {
        let name = self.ident(child(&mut it));
        let mut next = child(&mut it);
        let mut ty = None;
        if next.as_rule() == Rule::type_expr {
            ty = Some(self.type_expr(next));
            next = child(&mut it);
        }
        let value = self.expr(next);
        LetDecl {
            name,
            ty,
            value,
            span,
        }
    }

    fn type_expr(&mut self, pair: Pair<Rule>) -> TypeExpr {
        let span = self.span(&pair);
        let mut dims = Vec::new();
        for p in pair.into_inner() {
            if p.as_rule() != Rule::shape_expr {
                continue; // the dtype: only f32 exists today
            }
            for d in p.into_inner() {
                let dspan = self.span(&d);
                match d.as_rule() {
                    Rule::dim_const => match d.as_str().parse::<u64>() {
                        Ok(n) => dims.push(DimExpr::Const(n, dspan)),
                        Err(_) => self.diags.push(
                            diag::error(code::NUMBER, "invalid dimension")
                                .with_labels(vec![dspan.primary("too large for a dimension")]),
                        ),
                    },
                    Rule::dim_sym => {
                        dims.push(DimExpr::Sym(self.ident(child(&mut d.into_inner()))))
                    }
                    Rule::dim_variadic => {
                        dims.push(DimExpr::Variadic(self.ident(child(&mut d.into_inner()))))
                    }
                    r => unreachable!("rule {r:?} is not a dimension"),
                }
            }
        }
        TypeExpr { dims, span }
    }

    fn expr(&mut self, pair: Pair<Rule>) -> Expr {
        // The tree the sequence makes is at most as deep as it is long.
        let parts = pair.clone().into_inner().count();
        if self.depth + parts > MAX_DEPTH {
            let span = self.span(&pair);
            self.diags.push(
                diag::error(
                    code::SYNTAX,
                    format!(
                        "syntax error: an expression nested more than {MAX_DEPTH} operations deep"
                    ),
                )
                .with_labels(vec![span.primary("this expression is too deep")])
                .with_notes(vec!["help: name inner parts with `let`".into()]),
            );
            return Expr {
                kind: ExprKind::Error,
                span,
            };
        }
        self.depth += parts;
        let tree = self.grouped(pair);
        self.depth -= parts;
        tree
    }

    /// [`Builder::expr`] below the depth check.
    fn grouped(&mut self, pair: Pair<Rule>) -> Expr {
        // `expr` holds a flat sequence; the Pratt parser groups it. The
        // closures all need `self`, so it is shared through a RefCell.
        let this = std::cell::RefCell::new(self);
        let tree = pratt()
            .map_primary(|p| this.borrow_mut().primary(p))
            .map_prefix(|op, rhs| {
                let span = this.borrow().span(&op).to(rhs.span);
                // Fold `-literal` into the literal: `-1` is a number.
                let kind = match rhs.kind {
                    ExprKind::Number(v, _) => ExprKind::Number(-v, None),
                    _ => ExprKind::Neg(Box::new(rhs)),
                };
                Expr { kind, span }
            })
            .map_postfix(|lhs, op| {
                let span = lhs.span.to(this.borrow().span(&op));
                let kind = match op.as_rule() {
                    Rule::call_args => {
                        let args = op.into_inner().map(|a| this.borrow_mut().arg(a)).collect();
                        ExprKind::Call(Box::new(lhs), args)
                    }
                    _ => {
                        let name = this.borrow().ident(child(&mut op.into_inner()));
                        ExprKind::Member(Box::new(lhs), name)
                    }
                };
                Expr { kind, span }
            })
            .map_infix(|lhs, op, rhs| {
                let bin = match op.as_rule() {
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    Rule::div => BinOp::Div,
                    Rule::pow => BinOp::Pow,
                    Rule::matmul => BinOp::MatMul,
                    Rule::eq => BinOp::Eq,
                    Rule::ne => BinOp::Ne,
                    Rule::lt => BinOp::Lt,
                    Rule::le => BinOp::Le,
                    Rule::gt => BinOp::Gt,
                    Rule::ge => BinOp::Ge,
                    r => unreachable!("rule {r:?} is not an operator"),
                };
                let op_span = this.borrow().span(&op);
                Expr {
                    span: lhs.span.to(rhs.span),
                    kind: ExprKind::Binary(bin, op_span, Box::new(lhs), Box::new(rhs)),
                }
            })
            .parse(pair.into_inner());
        tree
    }

    fn arg(&mut self, pair: Pair<Rule>) -> Arg {
        let mut name = None;
        let mut value = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::arg_name => name = Some(self.ident(child(&mut p.into_inner()))),
                _ => value = Some(self.expr(p)),
            }
        }
        Arg {
            name,
            value: value.expect("the grammar requires an argument value"),
        }
    }

    fn primary(&mut self, pair: Pair<Rule>) -> Expr {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::number => self.number(pair.as_str(), span),
            Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
            Rule::string => {
                let s = pair.as_str();
                ExprKind::Str(s[1..s.len() - 1].to_string())
            }
            Rule::ident => ExprKind::Name(self.ident(pair)),
            Rule::paren => return self.expr(child(&mut pair.into_inner())),
            Rule::tensor_lit => ExprKind::Tensor(pair.into_inner().map(|p| self.expr(p)).collect()),
            r => unreachable!("rule {r:?} is not a primary expression"),
        };
        Expr { kind, span }
    }

    fn number(&mut self, text: &str, span: Span) -> ExprKind {
        let clean = text.replace('_', "");
        let valid_form = clean
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
        match clean.parse::<f32>() {
            Ok(v) if valid_form && v.is_finite() => {
                let whole = clean.bytes().all(|c| c.is_ascii_digit());
                ExprKind::Number(v, whole.then(|| clean.parse::<u64>().ok()).flatten())
            }
            Ok(_) if valid_form => {
                self.diags.push(
                    diag::error(
                        code::NUMBER,
                        format!("numeric literal `{text}` is out of range for f32"),
                    )
                    .with_labels(vec![span.primary("does not fit in a 32-bit float")])
                    .with_notes(vec!["note: the largest f32 is about 3.4e38".into()]),
                );
                ExprKind::Error
            }
            _ => {
                self.diags.push(
                    diag::error(code::NUMBER, format!("invalid numeric literal `{text}`"))
                        .with_labels(vec![span.primary("not a number")])
                        .with_notes(vec![
                            "help: numbers are written like `3`, `0.25`, `1e-3` or `2.5E+4`".into(),
                        ]),
                );
                ExprKind::Error
            }
        }
    }
}

/// Friendly names for the rules pest reports as expected.
fn rule_name(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::expr | Rule::unary => "an expression",
        Rule::ident | Rule::arg_name | Rule::dim_sym => "a name",
        Rule::number => "a number",
        Rule::boolean => "`true` or `false`",
        Rule::string => "a string",
        Rule::tensor_lit | Rule::shape_expr => "`[`",
        Rule::paren | Rule::call_args => "`(`",
        Rule::type_expr => "a type such as `[B, 784]`",
        Rule::dtype => "`f32`",
        Rule::dim_const | Rule::dim_variadic => "a dimension",
        Rule::fn_def => "`fn`",
        Rule::model_def => "`model`",
        Rule::param_decl | Rule::param_kind => "`param`",
        Rule::input_decl => "`input`",
        Rule::let_item | Rule::let_stmt => "`let`",
        Rule::output_decl => "`output`",
        Rule::train_def => "`train`",
        Rule::setting => "a setting such as `epochs = 10`",
        Rule::phase | Rule::phase_kw => "`phase`",
        Rule::ret_type => "`->`",
        Rule::block => "`{`",
        Rule::fn_param => "a parameter",
        Rule::fn_type => "`fn`",
        Rule::member => "`.`",
        Rule::EOI => "end of file",
        Rule::eq | Rule::ne | Rule::lt | Rule::le | Rule::gt | Rule::ge => "a comparison",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::matmul | Rule::pow => "an operator",
        Rule::neg => "`-`",
        _ => return None,
    })
}

/// The grammar's keywords (`keyword` in `grammar/nn.pest`).
const KEYWORDS: &[&str] = &[
    "fn", "model", "param", "input", "let", "output", "train", "with", "in", "true", "false", "f32",
];

fn syntax_error(file: FileId, source: &str, e: &pest::error::Error<Rule>) -> diag::Diag {
    let mut pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    // The detailed attempts know the farthest position the parser reached,
    // which is where the user's text went wrong.
    if let Some(a) = e.parse_attempts() {
        pos = pos.max(a.max_position);
    }
    let pos = pos.min(source.len());
    let expected = expected_at(e);
    // A keyword where a name was expected: the parser read the word and
    // stopped after it.
    let word_start = source[..pos]
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
        .last()
        .map_or(pos, |(i, _)| i);
    let word = &source[word_start..pos];
    if expected.iter().any(|x| x == "a name") && KEYWORDS.contains(&word) {
        return diag::error(
            code::SYNTAX,
            format!("syntax error: `{word}` is a keyword, not a name"),
        )
        .with_labels(vec![
            Span::new(file, word_start, pos).primary("a keyword cannot name a definition")
        ])
        .with_notes(vec![format!(
            "help: choose another name, e.g. `{word}_`; the keywords are {}",
            KEYWORDS.join(", ")
        )]);
    }
    // A line that ends unfinished before a new definition (a `param`
    // without `= init`): the error is at the end of that line, not at the
    // next definition's keyword.
    let before = source[..pos].trim_end_matches([' ', '\t', '\r', '\n']);
    let gap_has_newline = source[before.len()..pos].contains('\n');
    let next_word = found_at(source, pos).0;
    let starts_item = [
        "fn", "model", "param", "state", "input", "let", "output", "train",
    ]
    .iter()
    .any(|k| next_word == format!("`{k}`"));
    let pos = if gap_has_newline && starts_item && !before.is_empty() && !expected.is_empty() {
        before.len()
    } else {
        pos
    };
    let found = found_at(source, pos);
    let end = (pos + found.1).min(source.len());
    let span = Span::new(file, pos, end);
    let message = if expected.is_empty() {
        format!("unexpected {}", found.0)
    } else {
        format!("expected {}, found {}", join_or(&expected), found.0)
    };
    diag::error(code::SYNTAX, format!("syntax error: {message}"))
        .with_labels(vec![span.primary(format!("unexpected {}", found.0))])
}

/// What the parser would have accepted, in words a user reads: the
/// punctuation that would close or continue the construct, or "an
/// expression" / "an operator" for the many tokens that start one.
fn expected_at(e: &pest::error::Error<Rule>) -> Vec<String> {
    use std::collections::BTreeSet;
    let mut rules: Vec<Rule> = Vec::new();
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        rules.extend(positives.iter().copied());
    }
    let mut tokens: BTreeSet<String> = BTreeSet::new();
    if let Some(attempts) = e.parse_attempts() {
        for t in attempts.expected_tokens() {
            let text = t.to_string();
            let t = text.trim();
            // Words come from look-aheads (keywords, `e` of an exponent),
            // ranges and built-in rules are covered by rule names, and
            // whitespace or comments are always acceptable.
            let noise = t.is_empty()
                || t == "//"
                || t == "/*"
                || t.contains("..")
                || t == "BUILTIN_RULE"
                || t.chars().all(|c| c.is_alphanumeric() || c == '_');
            if !noise {
                tokens.insert(t.to_string());
            }
        }
    }
    const OPERATORS: &[&str] = &[
        "+", "-", "*", "/", "@", "^", "==", "!=", "<", "<=", ">", ">=",
    ];
    const CLOSERS: &[&str] = &[",", ")", "]", "}", ";", "=", ":", "->", "{"];
    // A name alone may be a definition's name; an expression is expected
    // when a literal could start one too.
    let starts_expr = rules.iter().any(|r| {
        matches!(
            r,
            Rule::expr
                | Rule::unary
                | Rule::number
                | Rule::tensor_lit
                | Rule::paren
                | Rule::boolean
        )
    }) || (tokens.contains("[")
        && !rules
            .iter()
            .any(|r| matches!(r, Rule::type_expr | Rule::shape_expr)));
    let has_closer = tokens.iter().any(|t| CLOSERS.contains(&t.as_str()));
    // `-` also starts an expression, so alone it does not mean an operator.
    let has_operator = tokens
        .iter()
        .any(|t| t != "-" && OPERATORS.contains(&t.as_str()))
        || rules.iter().any(|r| is_operator(*r));
    let mut out: BTreeSet<String> = BTreeSet::new();
    for t in &tokens {
        let is_op = OPERATORS.contains(&t.as_str());
        let continues_expr = is_op || t == "." || t == "(";
        if starts_expr && (t == "(" || t == "[" || t == "-" || t == "\"") {
            continue;
        }
        if has_closer && continues_expr && !CLOSERS.contains(&t.as_str()) {
            continue;
        }
        if is_op {
            continue;
        }
        out.insert(format!("`{t}`"));
    }
    for r in &rules {
        let expr_part = matches!(
            r,
            Rule::expr
                | Rule::unary
                | Rule::number
                | Rule::ident
                | Rule::tensor_lit
                | Rule::paren
                | Rule::boolean
                | Rule::string
                | Rule::neg
        );
        let op_part = is_operator(*r) || matches!(r, Rule::call_args | Rule::member);
        if (starts_expr && expr_part) || op_part {
            continue;
        }
        if let Some(n) = rule_name(*r) {
            out.insert(n.to_string());
        }
    }
    if starts_expr {
        out.insert("an expression".into());
    }
    if has_operator && !has_closer {
        out.insert("an operator".into());
    }
    out.into_iter().collect()
}

fn is_operator(r: Rule) -> bool {
    use Rule::*;
    matches!(
        r,
        add | sub | mul | div | matmul | pow | eq | ne | lt | le | gt | ge
    )
}

/// What stands at `pos`: a word, a symbol or the end of the file, and its
/// length in bytes.
fn found_at(source: &str, pos: usize) -> (String, usize) {
    let rest = source.get(pos..).unwrap_or("");
    let mut chars = rest.chars();
    match chars.next() {
        None => ("end of file".to_string(), 0),
        Some(c) if c.is_alphanumeric() || c == '_' => {
            let len = rest
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '.'))
                .unwrap_or(rest.len());
            (format!("`{}`", &rest[..len]), len)
        }
        // Zero width: the caret stands just after the line's last token.
        Some('\n' | '\r') => ("end of line".to_string(), 0),
        Some(' ' | '\t')
            if rest
                .trim_start_matches([' ', '\t'])
                .starts_with(['\n', '\r']) =>
        {
            ("end of line".to_string(), 0)
        }
        Some(c) => (format!("`{c}`"), c.len_utf8()),
    }
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}
