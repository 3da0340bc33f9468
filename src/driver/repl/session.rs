//! The REPL's session: plain input in, text out, no terminal. The
//! terminal front end (`super::terminal`) and the transcript tests both
//! drive this type.
//!
//! The session keeps its definitions as parsed items. A line that defines
//! something (`fn`, `model`, `param`, `input`, `let`, `output`) replaces an
//! earlier definition of the same name, but only if the whole program
//! still checks; otherwise the error is shown and the state is kept. A
//! line that is an expression is compiled together with the definitions
//! and evaluated. Each line is a source file of its own (`<repl:N>`), so
//! diagnostics point into the line typed.

use crate::backend::interp;
use crate::diag::{self, Diagnostics, SourceMap};
use crate::ir::{Graph, Node, Output};
use crate::syntax::{self, ast};
use crate::tensor::{format_f32, format_tensor, Tensor};
use crate::{passes, sema, stdlib};
use cranelift_entity::SecondaryMap;
use std::path::PathBuf;
use std::time::Instant;

/// Which backend evaluates expressions.
pub use crate::backend::BackendKind as Backend;

/// What one input produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    /// Values and messages, for stdout.
    pub out: String,
    /// Rendered diagnostics, for stderr.
    pub err: String,
    /// The session asked to end (`:quit`).
    pub quit: bool,
}

impl Reply {
    fn out(text: impl Into<String>) -> Reply {
        Reply {
            out: text.into(),
            ..Reply::default()
        }
    }

    fn err(text: impl Into<String>) -> Reply {
        Reply {
            err: text.into(),
            ..Reply::default()
        }
    }
}

pub struct Session {
    sources: SourceMap,
    lines: usize,
    items: Vec<ast::Item>,
    loaded: Vec<PathBuf>,
    backend: Backend,
    /// Run seed for parameters initialised at random.
    seed: u64,
    color: bool,
    /// How many earlier definitions were kept under hidden names.
    hidden: usize,
}

pub const COMMANDS: &[&str] = &[
    ":type", ":ir", ":fused", ":grad", ":load", ":reload", ":backend", ":time", ":help", ":quit",
];

const HELP: &str = "\
Type an expression to evaluate it, or a definition (fn, model, param,
input, let, output) to keep it; a definition replaces one of the same name.
Lines continue while brackets are open. Ctrl-C cancels the input, Ctrl-D
leaves.

  :type EXPR                  the shape and element type of EXPR
  :ir EXPR                    the IR of EXPR (only the nodes it needs)
  :fused EXPR                 the fused kernels of EXPR
  :grad EXPR wrt NAME         the gradient of the scalar EXPR with respect to NAME
                              (a param, an input or a let)
  :load FILE                  the definitions of a .nn file (:reload reads it again)
  :backend jit|interp|opencl  the backend that evaluates expressions
  :time EXPR                  compile and run times of EXPR
  :help                       this text
  :quit                       leave
";

impl Default for Session {
    fn default() -> Session {
        Session::new()
    }
}

impl Session {
    pub fn new() -> Session {
        let mut sources = SourceMap::new();
        stdlib::add_sources(&mut sources);
        Session {
            sources,
            lines: 0,
            items: Vec::new(),
            loaded: Vec::new(),
            backend: Backend::Jit,
            seed: 0,
            color: false,
            hidden: 0,
        }
    }

    /// Colour diagnostics (for a terminal).
    pub fn set_color(&mut self, on: bool) {
        self.color = on;
    }

    /// Every name a user may type: the session's, the stdlib's, the
    /// builtins and the commands (for completion).
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = COMMANDS.iter().map(|c| c.to_string()).collect();
        out.extend(sema::builtin_names().iter().map(|s| s.to_string()));
        for f in &stdlib::asts().0 {
            out.extend(
                f.items
                    .iter()
                    .filter_map(|i| i.name())
                    .map(|n| n.name.clone()),
            );
        }
        for i in &self.items {
            if let Some(n) = i.name() {
                out.push(n.name.clone());
            }
            if let ast::Item::Model(m) = i {
                out.extend(
                    m.items
                        .iter()
                        .filter_map(|x| x.name())
                        .map(|n| format!("{}.{}", m.name.name, n.name)),
                );
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Handles one complete input (it may span several lines).
    pub fn eval(&mut self, input: &str) -> Reply {
        let line = input.trim();
        let only_comments = line.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with("//")
        });
        if only_comments {
            return Reply::default();
        }
        if let Some(rest) = line.strip_prefix(':') {
            let (cmd, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return self.command(cmd, arg.trim());
        }
        self.lines += 1;
        let file = self
            .sources
            .add(format!("<repl:{}>", self.lines), line.to_string());
        if starts_definition(line) {
            self.define(file, line)
        } else {
            match self.expression(file, line) {
                Ok((g, node, _)) => self.evaluate(&g, node).unwrap_or_else(|r| r),
                Err(r) => r,
            }
        }
    }

    fn render(&self, diags: &Diagnostics) -> String {
        diags.render(&self.sources, self.color)
    }

    fn error(&self, d: diag::Diag) -> Reply {
        let mut diags = Diagnostics::new();
        diags.push(d);
        Reply::err(self.render(&diags))
    }

    /// Parses definitions and keeps them if the program still checks.
    fn define(&mut self, file: usize, text: &str) -> Reply {
        let mut diags = Diagnostics::new();
        let Some(parsed) = syntax::parse(file, text, &mut diags) else {
            return Reply::err(self.render(&diags));
        };
        let out = self.adopt(parsed.items, &mut diags);
        if diags.has_errors() {
            return Reply::err(self.render(&diags));
        }
        Reply {
            out,
            err: self.render(&diags),
            quit: false,
        }
    }

    /// Replaces same-named items with `new` if the result checks; says
    /// what was defined.
    fn adopt(&mut self, mut new: Vec<ast::Item>, diags: &mut Diagnostics) -> String {
        // `let w = w + 1` means the earlier `w`: keep it under a hidden
        // name (not a valid identifier, so nobody can type it) and point
        // the new definition at it.
        let mut kept = Vec::new();
        for item in &mut new {
            let ast::Item::Let(l) = item else { continue };
            if !mentions(&l.value, &l.name.name) {
                continue;
            }
            if let Some(old) = self.items.iter().find(|o| {
                matches!(
                    o,
                    ast::Item::Let(_) | ast::Item::Param(_) | ast::Item::Input(_)
                ) && o.name().is_some_and(|n| n.name == l.name.name)
            }) {
                self.hidden += 1;
                let hidden = format!("{}'{}", l.name.name, self.hidden);
                let mut old = old.clone();
                rename_item(&mut old, &hidden);
                rename_in(&mut l.value, &l.name.name, &hidden);
                kept.push(old);
            }
        }
        let mut items: Vec<ast::Item> = self
            .items
            .iter()
            .filter(|old| !new.iter().any(|n| same_name(old, n)))
            .cloned()
            .collect();
        items.extend(kept);
        items.extend(new.iter().cloned());
        let program = ast::File { items };
        let Some(p) = sema::analyze(&stdlib::asts().0, &program, diags) else {
            return String::new();
        };
        self.items = program.items;
        let mut out = String::new();
        for item in &new {
            let Some(name) = item.name() else { continue };
            let ty = match item {
                ast::Item::Let(_) | ast::Item::Param(_) | ast::Item::Input(_) => p
                    .named
                    .iter()
                    .find(|(n, _)| *n == name.name)
                    .map(|(_, n)| format!(": f32{}", p.graph.shape_str(p.graph.shape(*n)))),
                _ => None,
            };
            let kind = match item {
                ast::Item::Fn(_) => "fn ",
                ast::Item::Model(_) => "model ",
                ast::Item::Output(_) => "output ",
                _ => "",
            };
            out.push_str(&format!("{kind}{}{}\n", name.name, ty.unwrap_or_default()));
        }
        out
    }

    /// Compiles `text` as an expression over the session's definitions:
    /// the graph (pruned to what the expression needs) and its node.
    fn expression(&mut self, file: usize, text: &str) -> Result<(Graph, Node, f64), Reply> {
        self.expression_wrt(file, text, None)
            .map(|(g, node, _, seconds)| (g, node, seconds))
    }

    /// [`Self::expression`], and the node of the parameter, input or
    /// `let` named `wrt` in its graph when the expression uses it.
    fn expression_wrt(
        &mut self,
        file: usize,
        text: &str,
        wrt: Option<&str>,
    ) -> Result<(Graph, Node, Option<Wrt>, f64), Reply> {
        let started = Instant::now();
        let mut diags = Diagnostics::new();
        let Some(expr) = syntax::parse_expr(file, text, &mut diags) else {
            return Err(Reply::err(self.render(&diags)));
        };
        let span = expr.span;
        let mut items: Vec<ast::Item> = self
            .items
            .iter()
            .filter(|i| !matches!(i, ast::Item::Output(_) | ast::Item::Train(_)))
            .cloned()
            .collect();
        items.push(ast::Item::Output(ast::LetDecl {
            name: ast::Ident {
                name: "_".into(),
                span,
            },
            ty: None,
            value: expr,
            span,
        }));
        let Some(p) = sema::analyze(&stdlib::asts().0, &ast::File { items }, &mut diags) else {
            return Err(Reply::err(self.render(&diags)));
        };
        let mut g = p.graph;
        let Some(out) = g.outputs.iter().find(|o| o.name == "_").cloned() else {
            return Err(Reply::err(self.render(&diags)));
        };
        let found = wrt.map(|name| self.wrt(&g, &p.named, out.node, name));
        let wrt = match found {
            Some(Err(message)) => return Err(Reply::err(message)),
            Some(Ok(w)) => Some(w),
            None => None,
        };
        // The value differentiated for stays an output through pruning.
        g.outputs = std::iter::once(out)
            .chain(wrt.as_ref().map(|w| Output {
                name: w.name.clone(),
                node: w.node,
                span,
            }))
            .collect();
        let g = passes::dce::prune(&g);
        let node = g.outputs[0].node;
        let wrt = wrt.map(|w| Wrt {
            node: g.outputs[1].node,
            ..w
        });
        Ok((g, node, wrt, started.elapsed().as_secs_f64()))
    }

    /// The node of the parameter, input or `let` named `name` that the
    /// expression `out` reads, or why there is none.
    fn wrt(
        &self,
        g: &Graph,
        named: &[(String, Node)],
        out: Node,
        name: &str,
    ) -> Result<Wrt, String> {
        let Some(&(_, node)) = named.iter().find(|(n, _)| n == name) else {
            let what = match self
                .items
                .iter()
                .find(|i| i.name().is_some_and(|n| n.name == name))
            {
                Some(ast::Item::Fn(_)) => format!("`{name}` is a function"),
                Some(ast::Item::Model(_)) => format!("`{name}` is a model"),
                Some(ast::Item::Output(_)) => format!("`{name}` is an output"),
                _ => format!("there is no parameter, input or `let` named `{name}`"),
            };
            let names = named
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| !n.contains('\''));
            let hint = diag::suggest(name, names)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(format!(
                "error: {what}{hint} (`:grad EXPR wrt NAME` differentiates with respect to a parameter, input or `let`)\n"
            ));
        };
        if !reaches(g, node, out) {
            return Err(format!(
                "error: this expression does not use `{name}`: its gradient with respect to `{name}` is zero\n"
            ));
        }
        // `let x = w` names w's value: its gradient is w's.
        let same = match g.nodes[node].op {
            crate::ir::Op::Param(p) => Some(g.params[p].name.clone()),
            crate::ir::Op::Input(i) => Some(g.inputs[i].name.clone()),
            _ => named
                .iter()
                .find(|(n, v)| *v == node && n != name)
                .map(|(n, _)| n.clone()),
        }
        .filter(|other| other != name && !other.contains('\''));
        Ok(Wrt {
            name: name.to_string(),
            node,
            same,
        })
    }

    fn run(&self, g: &Graph) -> Result<Vec<Tensor>, Reply> {
        let mut params = interp::init_params(g, self.seed);
        let inputs = SecondaryMap::new();
        crate::backend::Engine::new(self.backend, g)
            .run(&mut params, &inputs)
            .map_err(|e| self.error(e.to_diag()))
    }

    fn evaluate(&self, g: &Graph, _node: Node) -> Result<Reply, Reply> {
        let values = self.run(g)?;
        Ok(Reply::out(format!("{}\n", show(&values[0]))))
    }

    fn command(&mut self, cmd: &str, arg: &str) -> Reply {
        match cmd {
            "q" | "quit" | "exit" => Reply {
                quit: true,
                ..Reply::default()
            },
            "h" | "help" | "?" => Reply::out(HELP),
            "type" | "t" => self.with_expr(arg, |_, g, n, _| {
                Ok(Reply::out(format!("f32{}\n", g.shape_str(g.shape(n)))))
            }),
            "ir" => self.with_expr(arg, |_, g, _, _| Ok(Reply::out(crate::ir::print_graph(g)))),
            "fused" => self.with_expr(arg, |_, g, _, _| {
                Ok(Reply::out(crate::pipeline::print_fused(
                    &crate::pipeline::fuse(g),
                )))
            }),
            "grad" => self.grad(arg),
            "load" => self.load(arg.split_whitespace().map(PathBuf::from).collect()),
            "reload" => {
                if self.loaded.is_empty() {
                    return Reply::err("error: nothing loaded yet: use `:load FILE` first\n");
                }
                self.load(self.loaded.clone())
            }
            "backend" => match arg {
                "interp" => {
                    self.backend = Backend::Interp;
                    Reply::out("backend: interp\n")
                }
                "jit" => {
                    self.backend = Backend::Jit;
                    Reply::out("backend: jit\n")
                }
                "opencl" if !crate::backend::opencl::AVAILABLE => Reply::err(format!(
                    "error: {}\n",
                    crate::backend::opencl::unavailable().to_diag().message
                )),
                "opencl" => {
                    self.backend = Backend::Opencl;
                    Reply::out("backend: opencl\n")
                }
                "" => Reply::out(format!(
                    "backend: {}\n",
                    match self.backend {
                        Backend::Interp => "interp",
                        Backend::Jit => "jit",
                        Backend::Opencl => "opencl",
                    }
                )),
                other => Reply::err(format!(
                    "error: unknown backend `{other}`: choose `jit`, `interp` or `opencl`\n"
                )),
            },
            "time" => self.with_expr(arg, |s, g, _, compile_s| {
                let started = Instant::now();
                let values = s.run(g)?;
                let run_s = started.elapsed().as_secs_f64();
                Ok(Reply::out(format!(
                    "{}\ncompile {:.3} ms, run {:.3} ms ({} nodes)\n",
                    show(&values[0]),
                    compile_s * 1e3,
                    run_s * 1e3,
                    g.nodes.len()
                )))
            }),
            other => {
                let names: Vec<&str> = COMMANDS.iter().map(|c| &c[1..]).collect();
                let hint = diag::suggest(other, names)
                    .map(|s| format!("; did you mean `:{s}`?"))
                    .unwrap_or_default();
                Reply::err(format!(
                    "error: unknown command `:{other}`{hint} (`:help` lists them)\n"
                ))
            }
        }
    }

    /// Compiles the expression `arg` and hands its graph to `then`.
    fn with_expr(
        &mut self,
        arg: &str,
        then: impl FnOnce(&Self, &Graph, Node, f64) -> Result<Reply, Reply>,
    ) -> Reply {
        if arg.is_empty() {
            return Reply::err("error: this command takes an expression\n");
        }
        self.lines += 1;
        let file = self
            .sources
            .add(format!("<repl:{}>", self.lines), arg.to_string());
        match self.expression(file, arg) {
            Ok((g, n, t)) => then(self, &g, n, t).unwrap_or_else(|r| r),
            Err(r) => r,
        }
    }

    /// `:grad EXPR wrt NAME`: the gradient of the scalar EXPR with
    /// respect to a parameter, an input or a `let` (the value it names,
    /// as if it were an input: what flows back to it through EXPR).
    fn grad(&mut self, arg: &str) -> Reply {
        let Some((expr, name)) = arg.rsplit_once(" wrt ") else {
            return Reply::err(
                "error: write `:grad EXPR wrt NAME`, e.g. `:grad sum(w * x) wrt w`\n",
            );
        };
        let (expr, name) = (expr.trim(), name.trim());
        if expr.is_empty() {
            return Reply::err("error: this command takes an expression\n");
        }
        self.lines += 1;
        let file = self
            .sources
            .add(format!("<repl:{}>", self.lines), expr.to_string());
        let (mut g, n, wrt) = match self.expression_wrt(file, expr, Some(name)) {
            Ok((g, n, Some(wrt), _)) => (g, n, wrt),
            Ok(_) => return Reply::err(format!("error: no value named `{name}`\n")),
            Err(r) => return r,
        };
        let grads = match passes::autodiff::grad(&mut g, n, &[wrt.node]) {
            Ok(grads) => grads,
            Err(d) => return self.error(d),
        };
        let span = g.nodes[n].span;
        g.outputs = vec![Output {
            name: format!("d/d{name}"),
            node: grads.grads[0],
            span,
        }];
        let values = match self.run(&g) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let mut diags = Diagnostics::new();
        for w in grads.warnings {
            diags.push(w);
        }
        let mut err = self.render(&diags);
        if let Some(other) = &wrt.same {
            err.push_str(&format!(
                "note: `{name}` is the value of `{other}`: this is the gradient with respect to `{other}`\n"
            ));
        }
        Reply {
            out: format!("{}\n", show(&values[0])),
            err,
            quit: false,
        }
    }

    fn load(&mut self, paths: Vec<PathBuf>) -> Reply {
        if paths.is_empty() {
            return Reply::err("error: write `:load FILE`\n");
        }
        let mut diags = Diagnostics::new();
        let mut items = Vec::new();
        for p in &paths {
            let text = match crate::pipeline::read_source(p) {
                Ok(t) => t,
                Err(d) => return self.error(d),
            };
            let file = self.sources.add(p.display().to_string(), text.clone());
            match syntax::parse(file, &text, &mut diags) {
                Some(f) => items.extend(f.items),
                None => return Reply::err(self.render(&diags)),
            }
        }
        let count = items.len();
        self.adopt(items, &mut diags);
        if diags.has_errors() {
            return Reply::err(self.render(&diags));
        }
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let out = format!("loaded {count} definitions from {}\n", shown.join(", "));
        self.loaded = paths;
        Reply {
            out,
            err: self.render(&diags),
            quit: false,
        }
    }
}

/// A value as the REPL prints it: `0.5`, or `[…] : f32[2, 3]`.
fn show(t: &Tensor) -> String {
    if t.shape.is_empty() {
        return format_f32(t.data[0]);
    }
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    format!("{} : f32[{}]", format_tensor(t, 6), dims.join(", "))
}

/// Whether `e` reads the name `name`.
fn mentions(e: &ast::Expr, name: &str) -> bool {
    use ast::ExprKind::*;
    match &e.kind {
        Name(i) => i.name == name,
        Number(..) | Bool(_) | Str(_) | Error => false,
        Tensor(xs) => xs.iter().any(|x| mentions(x, name)),
        Neg(x) | Member(x, _) => mentions(x, name),
        Binary(_, _, a, b) => mentions(a, name) || mentions(b, name),
        Call(f, args) => mentions(f, name) || args.iter().any(|a| mentions(&a.value, name)),
    }
}

/// Replaces reads of `from` with reads of `to`.
fn rename_in(e: &mut ast::Expr, from: &str, to: &str) {
    use ast::ExprKind::*;
    match &mut e.kind {
        Name(i) if i.name == from => i.name = to.to_string(),
        Name(_) | Number(..) | Bool(_) | Str(_) | Error => {}
        Tensor(xs) => xs.iter_mut().for_each(|x| rename_in(x, from, to)),
        Neg(x) | Member(x, _) => rename_in(x, from, to),
        Binary(_, _, a, b) => {
            rename_in(a, from, to);
            rename_in(b, from, to);
        }
        Call(f, args) => {
            rename_in(f, from, to);
            args.iter_mut()
                .for_each(|a| rename_in(&mut a.value, from, to));
        }
    }
}

fn rename_item(item: &mut ast::Item, to: &str) {
    match item {
        ast::Item::Let(l) => l.name.name = to.to_string(),
        ast::Item::Param(p) => p.name.name = to.to_string(),
        ast::Item::Input(i) => i.name.name = to.to_string(),
        _ => {}
    }
}

fn same_name(a: &ast::Item, b: &ast::Item) -> bool {
    match (a.name(), b.name()) {
        (Some(x), Some(y)) => {
            x.name == y.name
                && matches!(a, ast::Item::Output(_)) == matches!(b, ast::Item::Output(_))
        }
        (None, None) => true, // one `train` block replaces another
        _ => false,
    }
}

/// Whether a line starts with a definition keyword.
pub(super) fn starts_definition(line: &str) -> bool {
    let word: String = line
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    matches!(
        word.as_str(),
        "fn" | "model" | "param" | "input" | "let" | "output" | "train"
    )
}

/// The value `:grad … wrt NAME` differentiates for.
struct Wrt {
    name: String,
    node: Node,
    /// Another name of the same value (`let x = w` names `w`'s), whose
    /// gradient this is.
    same: Option<String>,
}

/// Whether `to` reads `from` (nodes come after their arguments).
fn reaches(g: &Graph, from: Node, to: Node) -> bool {
    use cranelift_entity::EntityRef;
    let mut live = vec![false; to.index() + 1];
    live[to.index()] = true;
    for i in (from.index()..=to.index()).rev() {
        if live[i] {
            for a in g.nodes[Node::new(i)].op.args() {
                live[a.index()] = true;
            }
        }
    }
    live.get(from.index()).copied().unwrap_or(false)
}
