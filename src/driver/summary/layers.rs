//! The layer table of `nnc summary`: the nodes a file computes, grouped
//! by the statement of the user's source that made them.
//!
//! What is summarised is the forward pass: with a `train` block, what
//! its losses (each phase's) and `predict` compute, else the file's
//! `output`s; and the `assign`s. Common subexpressions are merged
//! ([`cse`]), so a value the loss and `predict` share (a model's
//! forward pass) is counted once. (A file's outputs beside a `train`
//! block are what `nnc run` prints, often for other sizes: the GAN's
//! samples. They are named, not counted.)
//!
//! A *statement* is a `let`, a function's result, an `output` or a
//! `train` setting of the user's file. Sema gives every node the span of
//! the user's text it came from (a standard-library function's nodes
//! take the span of the user's call), so each node belongs to the
//! innermost statement whose span holds its own. Inside a statement, a
//! *layer call* is a call with a name among its arguments whose own
//! nodes read a parameter (`dense(x, w1, b1, relu)` in `dense(dense(x,
//! w1, b1, relu), w2, b2, identity)`, `conv2d(img, k1)`); a node belongs
//! to the innermost layer call that holds it, else to its statement:
//! these are the *units*.
//!
//! A unit that runs several times (a model function called on two
//! inputs) makes several rows: the nodes of one unit that are connected
//! through one another form one run. A value of parameters alone (a
//! broadcast bias) is shared by the runs that read it once CSE has
//! merged it, so it does not connect them: it joins the first run of its
//! statement that reads it, when it moves data only (`reshape(c1, [6, 1,
//! 1])` joins the row it is added in) or when that run is of its own
//! unit. Leaves (inputs, parameters, constants, fills) belong to no row.
//! Rows are in the order their last node is computed, and are named by
//! that node's unit.
//!
//! A row's parameters are those its nodes read, each counted in the
//! first row that reads it; its outputs are the values it hands to
//! other rows (or that are results), their bytes its activation memory.
//!
//! [`cse`]: crate::passes::cse::cse

use crate::diag::{FileId, Span};
use crate::ir::cost::{self, Sizes};
use crate::ir::{Graph, Node, Op, Output, ParamId};
use crate::sema::TrainSpec;
use crate::syntax::ast;
use cranelift_entity::{EntityRef, SecondaryMap};

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Where the statement is: `Model.fn`, `Model`, `train`, `train,
    /// phase NAME`, or empty at the top level of the file.
    pub context: String,
    /// The statement, shortened: `h = dense(x, w1, b1, tanh)`, `->
    /// dense(…)` for a function's result, `output z = …`; or the layer
    /// call: `dense(x, w1, b1, relu)`.
    pub label: String,
    /// The line of the statement or call in the file (from 1); 0 for
    /// nodes outside every statement.
    pub line: usize,
    /// Which run of the statement or call this is (from 1), and how many
    /// there are.
    pub run: usize,
    pub runs: usize,
    /// The shape of the row's last value (the one it computes last),
    /// symbols by name.
    pub shape: String,
    /// How many values the row hands on.
    pub outputs: usize,
    /// The parameters first read here, by name.
    pub params: Vec<String>,
    pub param_elements: u64,
    pub flops: u64,
    /// Bytes of the values the row hands on (f32).
    pub activation_bytes: u64,
}

/// A parameter of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<u64>,
    pub elements: u64,
    /// Learned by training (else a `state`, changed by `assign`).
    pub trainable: bool,
    /// The row that first reads it (an index into the layers).
    pub layer: Option<usize>,
}

/// A statement of the user's file, and the calls inside it (but the
/// one that is its whole value).
struct Statement {
    span: Span,
    context: String,
    label: String,
    calls: Vec<Span>,
}

/// What a row is made of: a statement, or a layer call inside one.
struct Unit {
    span: Span,
    statement: usize,
    label: String,
}

/// The longest label a row shows; longer statements end with `…`.
const LABEL_WIDTH: usize = 48;

/// The rows of `g` (with its `train` block) for the sizes `sizes`, and
/// its parameters.
pub fn layers(
    g: &Graph,
    train: Option<&TrainSpec>,
    file: &ast::File,
    file_id: FileId,
    source: &str,
    sizes: &Sizes,
) -> (Vec<Layer>, Vec<Param>) {
    let h = with_train_roots(g, train);
    let roots: Vec<Node> = h
        .outputs
        .iter()
        .map(|o| o.node)
        .chain(h.updates.iter().map(|u| u.node))
        .collect();
    let t = Table::new(&h, &roots, statements(file, source), file_id, source, sizes);
    let members = t.runs();
    let (rows, claimed) = t.rows(&members, &roots);
    let params = h
        .params
        .iter()
        .map(|(p, info)| Param {
            name: info.name.clone(),
            shape: info.shape.clone(),
            elements: param_size(&h, p),
            trainable: info.role == crate::ir::Role::Trainable,
            layer: claimed[p],
        })
        .collect();
    (rows, params)
}

/// The nodes to group and what is known of each.
struct Table<'a> {
    h: &'a Graph,
    sizes: &'a Sizes,
    source: &'a str,
    statements: Vec<Statement>,
    /// The statements, then the layer calls.
    units: Vec<Unit>,
    /// The live nodes but the leaves, in order.
    grouped: Vec<Node>,
    /// The unit of each grouped node (None: outside every statement).
    key: SecondaryMap<Node, Option<usize>>,
    /// Whether a node depends on data (an input or a random draw); the
    /// others are computed from parameters and constants alone.
    data: SecondaryMap<Node, bool>,
}

impl<'a> Table<'a> {
    fn new(
        h: &'a Graph,
        roots: &[Node],
        statements: Vec<Statement>,
        file_id: FileId,
        source: &'a str,
        sizes: &'a Sizes,
    ) -> Table<'a> {
        let live = crate::exec::bind::live_nodes(h, roots);
        let grouped: Vec<Node> = h
            .nodes
            .keys()
            .filter(|&n| live.contains(n) && !is_leaf(h, n))
            .collect();
        let mut data: SecondaryMap<Node, bool> = SecondaryMap::new();
        for (n, d) in h.nodes.iter() {
            data[n] = matches!(d.op, Op::Input(_) | Op::Random { .. })
                || d.op.args().iter().any(|&a| data[a]);
        }
        let mut t = Table {
            h,
            sizes,
            source,
            units: Vec::new(),
            statements,
            grouped,
            key: SecondaryMap::new(),
            data,
        };
        t.assign_units(file_id);
        t
    }

    /// Finds the layer calls and each grouped node's unit.
    fn assign_units(&mut self, file_id: FileId) {
        let (h, statements) = (self.h, &self.statements);
        // The statement of each node, and the innermost call inside it
        // that holds the node.
        let mut stmt_of: SecondaryMap<Node, Option<usize>> = SecondaryMap::new();
        let mut call_of: SecondaryMap<Node, Option<(usize, usize)>> = SecondaryMap::new();
        for &n in &self.grouped {
            let span = h.nodes[n].span;
            stmt_of[n] = innermost(statements.iter().map(|s| s.span), file_id, span);
            call_of[n] = stmt_of[n].and_then(|s| {
                innermost(statements[s].calls.iter().copied(), file_id, span).map(|c| (s, c))
            });
        }
        self.units = statements
            .iter()
            .enumerate()
            .map(|(i, st)| Unit {
                span: st.span,
                statement: i,
                label: st.label.clone(),
            })
            .collect();
        // A call is a layer when its own nodes read a parameter.
        let mut layer_unit: std::collections::BTreeMap<(usize, usize), usize> = Default::default();
        for &n in &self.grouped {
            let reads_param = h.nodes[n]
                .op
                .args()
                .iter()
                .any(|&a| matches!(h.nodes[a].op, Op::Param(_)));
            if let (Some((s, c)), true) = (call_of[n], reads_param) {
                let units = &mut self.units;
                layer_unit.entry((s, c)).or_insert_with(|| {
                    let span = statements[s].calls[c];
                    units.push(Unit {
                        span,
                        statement: s,
                        label: shorten(&text_of(span, self.source)),
                    });
                    units.len() - 1
                });
            }
        }
        // A node belongs to the innermost layer call that holds it, else
        // to its statement.
        for &n in &self.grouped {
            let span = h.nodes[n].span;
            self.key[n] = stmt_of[n].map(|s| {
                layer_unit
                    .range((s, 0)..(s + 1, 0))
                    .map(|(_, &u)| u)
                    .filter(|&u| holds(self.units[u].span, file_id, span))
                    .min_by_key(|&u| self.units[u].span.end - self.units[u].span.start)
                    .unwrap_or(s)
            });
        }
    }

    fn statement_of(&self, n: Node) -> Option<usize> {
        self.key[n].map(|u| self.units[u].statement)
    }

    /// The rows' nodes: the runs of each unit, in the order their last
    /// node is computed.
    fn runs(&self) -> Vec<Vec<Node>> {
        let (h, key, data) = (self.h, &self.key, &self.data);
        // The nodes of one unit connected through one another. A value
        // computed from parameters alone (a broadcast bias) is merged by
        // CSE across the runs that read it, so it does not link them; it
        // joins the first run of its statement that reads it, when it
        // moves data only or when that run is of its own unit.
        let mut parent: SecondaryMap<Node, Node> = SecondaryMap::with_default(Node::new(0));
        for &n in &self.grouped {
            parent[n] = n;
        }
        for &n in &self.grouped {
            for a in h.nodes[n].op.args() {
                if !is_leaf(h, a) && key[a] == key[n] && data[a] == data[n] {
                    union(&mut parent, a, n);
                }
            }
        }
        let mut flops: SecondaryMap<Node, u64> = SecondaryMap::new();
        for &n in &self.grouped {
            let r = find(&mut parent, n);
            flops[r] = flops[r].saturating_add(cost::flops(h, n, self.sizes));
        }
        let mut reader: SecondaryMap<Node, Option<Node>> = SecondaryMap::new();
        for &n in &self.grouped {
            for a in h.nodes[n].op.args() {
                if is_leaf(h, a) || data[a] || self.statement_of(a) != self.statement_of(n) {
                    continue;
                }
                let (r, rn) = (find(&mut parent, a), find(&mut parent, n));
                let own_unit = key[a] == key[n] && data[n];
                if r != rn && (own_unit || flops[r] == 0) {
                    reader[r] = reader[r].or(Some(n));
                }
            }
        }
        for &n in &self.grouped {
            if let Some(m) = reader[n] {
                union(&mut parent, n, m);
            }
        }
        let mut by_root: SecondaryMap<Node, Option<usize>> = SecondaryMap::new();
        let mut members: Vec<Vec<Node>> = Vec::new();
        for &n in &self.grouped {
            let r = find(&mut parent, n);
            let at = *by_root[r].get_or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            members[at].push(n);
        }
        members.sort_by_key(|m| m[m.len() - 1]);
        members
    }

    /// The rows of `members` (a row is its last node's unit), and the
    /// row that first reads each parameter.
    fn rows(
        &self,
        members: &[Vec<Node>],
        roots: &[Node],
    ) -> (Vec<Layer>, SecondaryMap<ParamId, Option<usize>>) {
        let h = self.h;
        let mut row_of: SecondaryMap<Node, Option<usize>> = SecondaryMap::new();
        for (row, m) in members.iter().enumerate() {
            for &n in m {
                row_of[n] = Some(row);
            }
        }
        // The values each row hands on: read by another row, or a
        // result. In a row that reads data, a value of parameters alone
        // that another row reads too (a broadcast bias, shared by CSE)
        // is not its output.
        let reads_data: Vec<bool> = members
            .iter()
            .map(|m| m.iter().any(|&n| self.data[n]))
            .collect();
        let mut hands_on: SecondaryMap<Node, bool> = SecondaryMap::new();
        for &n in &self.grouped {
            for a in h.nodes[n].op.args() {
                if let (Some(from), true) = (row_of[a], row_of[a] != row_of[n]) {
                    hands_on[a] |= self.data[a] || !reads_data[from];
                }
            }
        }
        for &r in roots {
            hands_on[r] = true;
        }
        let unit_of = |m: &[Node]| self.key[m[m.len() - 1]];
        let slot = |u: Option<usize>| u.unwrap_or(self.units.len());
        let mut runs = vec![0; self.units.len() + 1];
        for m in members {
            runs[slot(unit_of(m))] += 1;
        }
        let mut run = vec![0; self.units.len() + 1];
        let mut claimed: SecondaryMap<ParamId, Option<usize>> = SecondaryMap::new();
        let mut rows = Vec::new();
        for (i, nodes) in members.iter().enumerate() {
            let unit = unit_of(nodes);
            run[slot(unit)] += 1;
            let mut params = Vec::new();
            let mut param_elements = 0u64;
            for &n in nodes {
                for a in h.nodes[n].op.args() {
                    if let Op::Param(p) = h.nodes[a].op {
                        if claimed[p].is_none() {
                            claimed[p] = Some(i);
                            params.push(h.params[p].name.clone());
                            param_elements += param_size(h, p);
                        }
                    }
                }
            }
            let (context, label, line) = match unit {
                Some(u) => {
                    let u = &self.units[u];
                    let line = self.source[..u.span.start as usize].matches('\n').count() + 1;
                    let context = self.statements[u.statement].context.clone();
                    (context, u.label.clone(), line)
                }
                None => (String::new(), "(outside every statement)".into(), 0),
            };
            let outs: Vec<Node> = nodes.iter().copied().filter(|&n| hands_on[n]).collect();
            let sum = |f: &dyn Fn(Node) -> u64, ns: &[Node]| {
                ns.iter().fold(0u64, |t, &n| t.saturating_add(f(n)))
            };
            rows.push(Layer {
                context,
                label,
                line,
                run: run[slot(unit)],
                runs: runs[slot(unit)],
                shape: h.shape_str(h.shape(nodes[nodes.len() - 1])),
                outputs: outs.len(),
                params,
                param_elements,
                flops: sum(&|n| cost::flops(h, n, self.sizes), nodes),
                activation_bytes: sum(
                    &|n| cost::elements(h, n, self.sizes).saturating_mul(4),
                    &outs,
                ),
            });
        }
        (rows, claimed)
    }
}

/// Inputs, parameters, constants and fills: values no row computes.
fn is_leaf(g: &Graph, n: Node) -> bool {
    matches!(
        g.nodes[n].op,
        Op::Input(_) | Op::Param(_) | Op::Const(_) | Op::Fill { .. }
    )
}

fn param_size(g: &Graph, p: ParamId) -> u64 {
    g.params[p]
        .shape
        .iter()
        .fold(1u64, |t, &d| t.saturating_mul(d))
}

/// Joins the sets of `a` and `b`; the root is the earlier of theirs,
/// so a set's root is its first node.
fn union(parent: &mut SecondaryMap<Node, Node>, a: Node, b: Node) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
    parent[hi] = lo;
}

/// The root of `n`'s set, halving the path on the way.
fn find(parent: &mut SecondaryMap<Node, Node>, mut n: Node) -> Node {
    while parent[n] != n {
        let up = parent[parent[n]];
        parent[n] = up;
        n = up;
    }
    n
}

/// `g` with what the table shows as its outputs — the `train` block's
/// losses and `predict` when there is one, else the file's outputs —
/// common subexpressions merged.
fn with_train_roots(g: &Graph, train: Option<&TrainSpec>) -> Graph {
    let mut h = g.clone();
    if let Some(t) = train {
        h.outputs.clear();
        for ph in t.steps() {
            h.outputs.push(Output {
                name: "loss".into(),
                node: ph.loss,
                span: ph.span,
            });
        }
        if let Some(p) = t.predict {
            h.outputs.push(Output {
                name: "predict".into(),
                node: p,
                span: t.span,
            });
        }
    }
    crate::passes::cse::cse(&h)
}

/// Whether `outer`, a span of `file`, holds `span`.
fn holds(outer: Span, file: FileId, span: Span) -> bool {
    outer.file == file && span.file == file && outer.start <= span.start && span.end <= outer.end
}

/// The index of the smallest of `spans` (of `file`) that holds `span`.
fn innermost(spans: impl Iterator<Item = Span>, file: FileId, span: Span) -> Option<usize> {
    spans
        .enumerate()
        .filter(|&(_, s)| holds(s, file, span))
        .min_by_key(|(_, s)| s.end - s.start)
        .map(|(i, _)| i)
}

/// The spans of the calls in `e` (but `e` itself) that may be layers:
/// those with an argument that is a name (`dense(x, w1, b1, relu)`, not
/// `sum(w * x)`).
fn calls_in(e: &ast::Expr) -> Vec<Span> {
    fn walk(e: &ast::Expr, out: &mut Vec<Span>) {
        match &e.kind {
            ast::ExprKind::Call(callee, args) => {
                let named = args.iter().any(|a| {
                    matches!(
                        a.value.kind,
                        ast::ExprKind::Name(_) | ast::ExprKind::Member(..)
                    )
                });
                if named {
                    out.push(e.span);
                }
                walk(callee, out);
                for a in args {
                    walk(&a.value, out);
                }
            }
            ast::ExprKind::Binary(_, _, a, b) => {
                walk(a, out);
                walk(b, out);
            }
            ast::ExprKind::Neg(a) | ast::ExprKind::Member(a, _) => walk(a, out),
            ast::ExprKind::Tensor(items) => items.iter().for_each(|i| walk(i, out)),
            ast::ExprKind::Number(..)
            | ast::ExprKind::Bool(_)
            | ast::ExprKind::Str(_)
            | ast::ExprKind::Name(_)
            | ast::ExprKind::Error => {}
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out.retain(|&s| s != e.span);
    out
}

/// Every statement of the file, in source order.
fn statements(file: &ast::File, source: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    for item in &file.items {
        match item {
            ast::Item::Fn(f) => fn_statements(f, &f.name.name, source, &mut out),
            ast::Item::Model(m) => {
                for inner in &m.items {
                    match inner {
                        ast::Item::Fn(f) => fn_statements(
                            f,
                            &format!("{}.{}", m.name.name, f.name.name),
                            source,
                            &mut out,
                        ),
                        ast::Item::Let(l) => out.push(let_statement(l, &m.name.name, "", source)),
                        ast::Item::Output(l) => {
                            out.push(let_statement(l, &m.name.name, "output ", source))
                        }
                        _ => {}
                    }
                }
            }
            ast::Item::Let(l) => out.push(let_statement(l, "", "", source)),
            ast::Item::Output(l) => out.push(let_statement(l, "", "output ", source)),
            ast::Item::Train(t) => {
                for s in &t.settings {
                    out.push(setting_statement(s, "train", source));
                }
                for ph in &t.phases {
                    let context = format!("train, phase {}", ph.name.name);
                    for s in &ph.settings {
                        out.push(setting_statement(s, &context, source));
                    }
                }
            }
            ast::Item::Param(_) | ast::Item::Input(_) => {}
        }
    }
    out
}

fn fn_statements(f: &ast::FnDef, context: &str, source: &str, out: &mut Vec<Statement>) {
    for l in &f.body.lets {
        out.push(let_statement(l, context, "", source));
    }
    let r = &f.body.result;
    out.push(Statement {
        span: r.span,
        context: context.to_string(),
        label: shorten(&format!("-> {}", text_of(r.span, source))),
        calls: calls_in(r),
    });
}

fn let_statement(l: &ast::LetDecl, context: &str, keyword: &str, source: &str) -> Statement {
    Statement {
        span: l.span,
        context: context.to_string(),
        label: shorten(&format!(
            "{keyword}{} = {}",
            l.name.name,
            text_of(l.value.span, source)
        )),
        calls: calls_in(&l.value),
    }
}

fn setting_statement(s: &ast::Setting, context: &str, source: &str) -> Statement {
    Statement {
        span: s.value.span,
        context: context.to_string(),
        label: shorten(&format!(
            "{} = {}",
            s.name.name,
            text_of(s.value.span, source)
        )),
        calls: calls_in(&s.value),
    }
}

/// The source text of `span`, its runs of white space made one space.
fn text_of(span: Span, source: &str) -> String {
    let text = source.get(span.range()).unwrap_or("");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` cut to [`LABEL_WIDTH`] characters, ending with `…` when cut.
fn shorten(text: &str) -> String {
    if text.chars().count() <= LABEL_WIDTH {
        return text.to_string();
    }
    let mut s: String = text.chars().take(LABEL_WIDTH - 1).collect();
    s.push('…');
    s
}
