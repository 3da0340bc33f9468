//! The `train` block: the loss (and the prediction used for accuracy) are
//! lowered like any expression; the other settings are compile-time
//! values, checked here into a [`TrainSpec`].

use super::builtin_calls::{const_number, not_const};
use super::*;
use crate::ir::{InputId, ParamId, Role};
use crate::sema::optimizer::{Kind, Optimizer};
use crate::sema::{DataSpec, Feed, Feeds, Learnt, Phase, TrainSpec};

mod settings;
pub(crate) use settings::optimizer as optimizer_setting;
use settings::*;

/// A [`TrainSpec`] while its settings are read.
struct Draft {
    loss: Option<Node>,
    predict: Option<Node>,
    optimizer: Option<Optimizer>,
    params: Option<Vec<ParamId>>,
    data: Option<DataSpec>,
    batch: usize,
    epochs: usize,
    split: f32,
    seed: u64,
    features: Option<InputId>,
    targets: Option<InputId>,
    /// The pair form's `scale = standardize | minmax`, for `features`.
    features_learnt: Option<Learnt>,
    metrics: Vec<crate::sema::metrics::Metric>,
    span: Span,
}

const SETTINGS: &[&str] = &[
    "loss",
    "predict",
    "optimizer",
    "params",
    "data",
    "batch",
    "epochs",
    "split",
    "seed",
    "features",
    "targets",
    "metrics",
];

/// The settings a `phase` takes; the others belong to the whole block.
const PHASE_SETTINGS: &[&str] = &["loss", "params", "optimizer"];

/// The optimizer of a block that names none.
const DEFAULT_OPTIMIZER: Optimizer = Optimizer {
    kind: Kind::Sgd,
    lr: 0.01,
    weight_decay: 0.0,
    schedule: crate::sema::optimizer::LrSchedule::Constant,
    warmup: 0,
    clip_norm: None,
};

impl<'a> Lowerer<'_, 'a, '_> {
    /// Reports a setting given twice; true when `st` is a repeat.
    fn repeated(&mut self, seen: &mut HashMap<String, Span>, st: &ast::Setting) -> bool {
        let name = st.name.name.as_str();
        if let Some(first) = seen.insert(name.to_string(), st.name.span) {
            self.diags.push(
                diag::error(code::DUPLICATE, format!("setting `{name}` is given twice"))
                    .with_labels(vec![
                        st.name.span.primary("given again here"),
                        first.secondary("first given here"),
                    ]),
            );
            return true;
        }
        false
    }

    pub(super) fn train(&mut self) -> Option<TrainSpec> {
        let (t, scope) = self.s.train?;
        let mut seen: HashMap<String, Span> = HashMap::default();
        let mut spec = Draft {
            loss: None,
            predict: None,
            optimizer: None,
            params: None,
            data: None,
            batch: 32,
            epochs: 10,
            split: 0.2,
            seed: 0,
            features: None,
            targets: None,
            features_learnt: None,
            metrics: Vec::new(),
            span: t.span,
        };
        let mut ok = true;
        for st in &t.settings {
            if self.repeated(&mut seen, st) {
                ok = false;
                continue;
            }
            let name = st.name.name.as_str();
            let r = match name {
                "loss" if !t.phases.is_empty() => Err(Some(
                    diag::error(
                        code::PHASE,
                        "a `train` block with phases takes its losses from them",
                    )
                    .with_labels(vec![
                        st.name.span.primary("a loss outside the phases"),
                        t.phases[0].name.span.secondary("the first phase"),
                    ])
                    .with_notes(vec![
                        "help: move this `loss` into a `phase NAME { ... }`, or remove the phases"
                            .into(),
                    ]),
                )),
                "loss" => self.loss_setting(scope, st).map(|n| spec.loss = Some(n)),
                "predict" => {
                    let mut env = self.top_env(scope);
                    match self.tensor_expr(&mut env, &st.value) {
                        None => Err(None),
                        Some(n) => {
                            spec.predict = Some(n);
                            Ok(())
                        }
                    }
                }
                "optimizer" => optimizer(&st.value)
                    .map(|o| spec.optimizer = Some(o))
                    .map_err(Some),
                "params" => self
                    .param_set(scope, &st.value)
                    .map(|p| spec.params = Some(p)),
                "data" => self.data_setting(scope, &st.value).map(|(d, l)| {
                    spec.data = Some(d);
                    spec.features_learnt = l;
                }),
                "metrics" => metrics(&st.value).map(|m| spec.metrics = m).map_err(Some),
                "batch" | "epochs" => positive_int(&st.value, name)
                    .map(|v| {
                        if name == "batch" {
                            spec.batch = v;
                        } else {
                            spec.epochs = v;
                        }
                    })
                    .map_err(Some),
                "seed" => positive_int_or_zero(&st.value)
                    .map(|v| spec.seed = v)
                    .map_err(Some),
                "split" => match const_number(&st.value, "`split`") {
                    Ok(v) if (0.0..1.0).contains(&v) => {
                        spec.split = v;
                        Ok(())
                    }
                    Ok(_) => Err(Some(
                        diag::error(
                            code::CONST_ARG,
                            "`split` must be at least 0 and less than 1",
                        )
                        .with_labels(vec![st
                            .value
                            .span
                            .primary("the fraction held out for validation")]),
                    )),
                    Err(d) => Err(Some(d)),
                },
                "features" | "targets" => match self.input_named(scope, &st.value) {
                    Ok(i) => {
                        if name == "features" {
                            spec.features = Some(i);
                        } else {
                            spec.targets = Some(i);
                        }
                        Ok(())
                    }
                    Err(d) => Err(d),
                },
                _ => Err(Some(unknown_setting(st, SETTINGS))),
            };
            if let Err(e) = r {
                ok = false;
                if let Some(d) = e {
                    self.diags.push(d);
                }
            }
        }
        let phases = self.phases(t, scope, &spec, &mut ok);
        if spec.loss.is_none() && t.phases.is_empty() && ok {
            self.diags.push(
                diag::error(code::ARITY, "this `train` block has no `loss`")
                    .with_labels(vec![t.span.primary("add `loss = ...` here")])
                    .with_notes(vec![
                        "help: for example `loss = softmax_cross_entropy(forward(x), y)`".into(),
                    ]),
            );
        }
        if let Some(DataSpec {
            feeds: Feeds::Named(feeds),
            ..
        }) = &spec.data
        {
            // Every input is fed by name; `targets` (for accuracy and the
            // metrics) defaults to the second input, when it is fed, and
            // `features` (what `nnc predict` reads) to the first other.
            let inputs = self.inputs_of(scope);
            let fed = |i: &InputId| feeds.iter().any(|f| f.input == *i);
            if spec.targets.is_none() {
                spec.targets = inputs.get(1).copied().filter(fed);
            }
            if spec.features.is_none() {
                spec.features = inputs
                    .iter()
                    .copied()
                    .find(|i| fed(i) && Some(*i) != spec.targets);
            }
        } else if spec.data.is_some() {
            let inputs: Vec<InputId> = self.inputs_of(scope);
            if spec.features.is_none() {
                spec.features = inputs.first().copied();
            }
            if spec.targets.is_none() {
                spec.targets = inputs.get(1).copied();
            }
            if let (Some(f), Some(l), Some(d)) =
                (spec.features, spec.features_learnt, &mut spec.data)
            {
                d.learnt.push((f, l));
            }
            if spec.features.is_none() || spec.targets.is_none() {
                self.diags.push(
                    diag::error(code::INPUT, "training on data needs an input for the features and one for the targets")
                        .with_labels(vec![t.span.primary("in this `train` block")])
                        .with_notes(vec![
                            "help: declare `input x: [B, F]` and `input y: [B, C]`, or name them with `features = ...` and `targets = ...`".into(),
                        ]),
                );
            }
        }
        if !spec.metrics.is_empty() && spec.predict.is_none() {
            if let Some(st) = t.settings.iter().find(|st| st.name.name == "metrics") {
                self.diags.push(
                    diag::error(code::INPUT, "`metrics` are computed from the model's `predict`, and this block has none")
                        .with_labels(vec![st.name.span.primary("these metrics")])
                        .with_notes(vec!["help: add `predict = forward(x)` (the model's output) to the block".into()]),
                );
                ok = false;
            }
        }
        let first = phases.first();
        Some(TrainSpec {
            loss: spec.loss.or(first.map(|p| p.loss)).filter(|_| ok)?,
            predict: spec.predict,
            optimizer: first
                .map(|p| p.optimizer)
                .or(spec.optimizer)
                .unwrap_or(DEFAULT_OPTIMIZER),
            params: spec.params,
            phases,
            data: spec.data,
            batch: spec.batch,
            epochs: spec.epochs,
            split: spec.split,
            seed: spec.seed,
            features: spec.features,
            targets: spec.targets,
            metrics: spec.metrics,
            span: spec.span,
        })
    }

    /// The block's phases, each with its loss, parameters and optimizer
    /// (the block's `params` and `optimizer` where it gives none).
    fn phases(
        &mut self,
        t: &'a ast::TrainDef,
        scope: ScopeId,
        spec: &Draft,
        ok: &mut bool,
    ) -> Vec<Phase> {
        let mut out = Vec::new();
        let mut names: HashMap<&str, Span> = HashMap::default();
        for ph in &t.phases {
            if let Some(first) = names.insert(&ph.name.name, ph.name.span) {
                self.diags.push(
                    diag::error(
                        code::DUPLICATE,
                        format!("phase `{}` is defined twice", ph.name.name),
                    )
                    .with_labels(vec![
                        ph.name.span.primary("defined again here"),
                        first.secondary("first defined here"),
                    ]),
                );
                *ok = false;
                continue;
            }
            let mut seen: HashMap<String, Span> = HashMap::default();
            let (mut loss, mut params, mut opt) = (None, spec.params.clone(), spec.optimizer);
            for st in &ph.settings {
                if self.repeated(&mut seen, st) {
                    *ok = false;
                    continue;
                }
                let r = match st.name.name.as_str() {
                    "loss" => self.loss_setting(scope, st).map(|n| loss = Some(n)),
                    "params" => self.param_set(scope, &st.value).map(|p| params = Some(p)),
                    "optimizer" => optimizer(&st.value).map(|o| opt = Some(o)).map_err(Some),
                    other if SETTINGS.contains(&other) => Err(Some(
                        diag::error(
                            code::PHASE,
                            format!(
                                "`{other}` is a setting of the whole `train` block, not of a phase"
                            ),
                        )
                        .with_labels(vec![st.name.span.primary("inside a phase")])
                        .with_notes(vec![
                            format!("help: move `{other} = ...` out of `phase {}`", ph.name.name),
                            "note: a phase takes `loss`, `params` and `optimizer`".into(),
                        ]),
                    )),
                    _ => Err(Some(unknown_setting(st, PHASE_SETTINGS))),
                };
                if let Err(e) = r {
                    *ok = false;
                    if let Some(d) = e {
                        self.diags.push(d);
                    }
                }
            }
            match loss {
                Some(loss) => out.push(Phase {
                    name: ph.name.name.clone(),
                    loss,
                    params,
                    optimizer: opt.unwrap_or(DEFAULT_OPTIMIZER),
                    span: ph.span,
                }),
                None if *ok => {
                    self.diags.push(
                        diag::error(
                            code::ARITY,
                            format!("phase `{}` has no `loss`", ph.name.name),
                        )
                        .with_labels(vec![ph.name.span.primary("add `loss = ...` to this phase")]),
                    );
                    *ok = false;
                }
                None => {}
            }
        }
        out
    }

    /// A `loss` setting: a scalar.
    fn loss_setting(&mut self, scope: ScopeId, st: &'a ast::Setting) -> Result<Node, Option<Diag>> {
        let mut env = self.top_env(scope);
        let n = self.tensor_expr(&mut env, &st.value).ok_or(None)?;
        if self.g.shape(n).is_empty() {
            return Ok(n);
        }
        let shown = self.shape_str(n);
        Err(Some(
            diag::error(
                code::RESULT_TYPE,
                format!("the loss must be a scalar, found shape {shown}"),
            )
            .with_labels(vec![st
                .value
                .span
                .primary(format!("this has shape {shown}"))])
            .with_notes(vec!["help: reduce it, e.g. with `mean(...)`".into()]),
        ))
    }

    /// `params = D`, `params = D.w`, `params = [G, D.w]`: the trainable
    /// parameters of the models and the parameters named.
    fn param_set(&mut self, scope: ScopeId, e: &'a Expr) -> Result<Vec<ParamId>, Option<Diag>> {
        let items: Vec<&'a Expr> = match &e.kind {
            ExprKind::Tensor(items) if !items.is_empty() => items.iter().collect(),
            _ => vec![e],
        };
        let mut out = Vec::new();
        for it in items {
            let mut env = self.top_env(scope);
            let found = match self.expr(&mut env, it) {
                Value::Poison => return Err(None),
                Value::Model(inner) => {
                    let defs: Vec<DefId> = self.s.scopes[inner].order.clone();
                    let mut ps = Vec::new();
                    for d in defs {
                        if let Def::Param(p) = self.s.def(d).def {
                            if p.state {
                                continue;
                            }
                            if let Value::T(n) = self.global(d) {
                                if let Op::Param(id) = self.g.nodes[n].op {
                                    ps.push(id);
                                }
                            }
                        }
                    }
                    if ps.is_empty() {
                        return Err(Some(
                            diag::error(code::PHASE, "this model has no parameters to train")
                                .with_labels(vec![it.span.primary("no `param` in here")]),
                        ));
                    }
                    ps
                }
                Value::T(n) => match self.g.nodes[n].op {
                    Op::Param(id) if self.g.params[id].role == Role::Trainable => vec![id],
                    _ => return Err(Some(not_a_param_set(it))),
                },
                _ => return Err(Some(not_a_param_set(it))),
            };
            for p in found {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// The inputs declared in `scope`, in source order.
    fn inputs_of(&self, scope: ScopeId) -> Vec<InputId> {
        let names: Vec<String> = self.s.scopes[scope]
            .order
            .iter()
            .filter(|d| matches!(self.s.def(**d).def, Def::Input(_)))
            .map(|d| self.s.def(*d).qual.clone())
            .collect();
        names
            .iter()
            .filter_map(|n| {
                self.g
                    .inputs
                    .iter()
                    .find(|(_, i)| &i.name == n)
                    .map(|(id, _)| id)
            })
            .collect()
    }

    /// The block's `data`: a source of features and labels (and the
    /// features' learnt scaling, for an input known once the block is
    /// read), or `inputs(x = ..., z = ...)` naming the file of each input.
    fn data_setting(
        &mut self,
        scope: ScopeId,
        e: &'a Expr,
    ) -> Result<(DataSpec, Option<Learnt>), Option<Diag>> {
        let named = match &e.kind {
            ExprKind::Call(callee, args) => match &callee.kind {
                ExprKind::Name(i) if i.name == "inputs" => Some(args),
                _ => None,
            },
            _ => None,
        };
        let Some(args) = named else {
            let (source, learnt) = data(e)?;
            let spec = DataSpec {
                feeds: Feeds::Pair(source),
                learnt: Vec::new(),
                span: e.span,
            };
            return Ok((spec, learnt));
        };
        let inputs = self.inputs_of(scope);
        let mut feeds: Vec<Feed> = Vec::new();
        let mut learnt = Vec::new();
        for a in args {
            let Some(name) = &a.name else {
                return Err(Some(
                    diag::error(code::CONST_ARG, "each file of `inputs(...)` names the input it feeds")
                        .with_labels(vec![a.value.span.primary("fed to which input?")])
                        .with_notes(vec!["help: write `inputs(x = csv(\"a.csv\"), y = csv(\"b.csv\", columns = \"label\"))`".into()]),
                ));
            };
            let found = inputs.iter().copied().find(|&i| {
                let n = &self.g.inputs[i].name;
                n == &name.name || n.rsplit('.').next() == Some(name.name.as_str())
            });
            let Some(input) = found else {
                let names: Vec<String> = inputs
                    .iter()
                    .map(|&i| {
                        self.g.inputs[i]
                            .name
                            .rsplit('.')
                            .next()
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect();
                let mut d = diag::error(
                    code::INPUT,
                    format!("`{}` is not an input of the model", name.name),
                )
                .with_labels(vec![name.span.primary("no input of this name")])
                .with_notes(vec![format!("note: the inputs are {}", names.join(", "))]);
                if let Some(s) = diag::suggest(&name.name, names.iter().map(String::as_str)) {
                    d.notes.insert(0, format!("help: did you mean `{s}`?"));
                }
                return Err(Some(d));
            };
            if let Some(first) = feeds.iter().find(|f| f.input == input) {
                return Err(Some(
                    diag::error(
                        code::DUPLICATE,
                        format!("input `{}` is fed twice", name.name),
                    )
                    .with_labels(vec![
                        a.value.span.primary("fed again here"),
                        first.span.secondary("first fed here"),
                    ]),
                ));
            }
            let (file, scale, l) = feed_file(&a.value)?;
            if let Some(l) = l {
                learnt.push((input, l));
            }
            feeds.push(Feed {
                input,
                file,
                scale,
                span: a.value.span,
            });
        }
        if feeds.is_empty() {
            return Err(Some(
                diag::error(code::CONST_ARG, "`inputs()` feeds no input")
                    .with_labels(vec![e.span.primary("empty")])
                    .with_notes(vec!["help: write `inputs(x = csv(\"a.csv\"), y = csv(\"b.csv\", columns = \"label\"))`".into()]),
            ));
        }
        let spec = DataSpec {
            feeds: Feeds::Named(feeds),
            learnt,
            span: e.span,
        };
        Ok((spec, None))
    }

    fn input_named(&mut self, scope: ScopeId, e: &'a Expr) -> Result<InputId, Option<Diag>> {
        let mut env = self.top_env(scope);
        let Some(n) = self.tensor_expr(&mut env, e) else {
            return Err(None);
        };
        match self.g.nodes[n].op {
            Op::Input(i) => Ok(i),
            _ => Err(Some(
                diag::error(code::INPUT, "`features` and `targets` name an input")
                    .with_labels(vec![e.span.primary("not an input")]),
            )),
        }
    }
}
