//! The `train` block: the loss (and the prediction used for accuracy) are
//! lowered like any expression; the other settings are compile-time
//! values, checked here into a [`TrainSpec`].

use super::builtin_calls::{const_number, not_const};
use super::*;
use crate::ir::{InputId, ParamId, Role};
use crate::passes::optimizer::{Kind, Optimizer};
use crate::sema::{DataSpec, Phase, TrainSpec};

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
];

/// The settings a `phase` takes; the others belong to the whole block.
const PHASE_SETTINGS: &[&str] = &["loss", "params", "optimizer"];

/// The optimizer of a block that names none.
const DEFAULT_OPTIMIZER: Optimizer = Optimizer {
    kind: Kind::Sgd,
    lr: 0.01,
    weight_decay: 0.0,
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
        let mut seen: HashMap<String, Span> = HashMap::new();
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
                "data" => data(&st.value).map(|d| spec.data = Some(d)).map_err(Some),
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
        if spec.data.is_some() {
            let inputs: Vec<InputId> = self.inputs_of(scope);
            if spec.features.is_none() {
                spec.features = inputs.first().copied();
            }
            if spec.targets.is_none() {
                spec.targets = inputs.get(1).copied();
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
        let mut names: HashMap<&str, Span> = HashMap::new();
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
            let mut seen: HashMap<String, Span> = HashMap::new();
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

fn unknown_setting(st: &ast::Setting, settings: &[&str]) -> Diag {
    let name = st.name.name.as_str();
    let mut d = diag::error(
        code::NAMED_ARG,
        format!("unknown training setting `{name}`"),
    )
    .with_labels(vec![st.name.span.primary("not a setting")])
    .with_notes(vec![format!(
        "note: the settings are {}",
        settings.join(", ")
    )]);
    if let Some(s) = diag::suggest(name, settings.iter().copied()) {
        d.notes.insert(0, format!("help: did you mean `{s}`?"));
    }
    d
}

fn not_a_param_set(e: &Expr) -> Diag {
    diag::error(
        code::PHASE,
        "`params` names the models or parameters a loss trains",
    )
    .with_labels(vec![e.span.primary("not a model or a `param`")])
    .with_notes(vec![
        "help: for example `params = Generator`, or `params = [Encoder, Head.w]`".into(),
    ])
}

fn positive_int(e: &Expr, what: &str) -> Result<usize, Diag> {
    match e.kind {
        ExprKind::Number(v, _) if v >= 1.0 && v.fract() == 0.0 && v < 1e9 => Ok(v as usize),
        ExprKind::Number(v, _) if v >= 1e9 && v.fract() == 0.0 => Err(diag::error(
            code::CONST_ARG,
            format!("`{what}` is too large"),
        )
        .with_labels(vec![e.span.primary("more than 999999999")])
        .with_notes(vec![format!(
            "help: `{what}` is a whole number from 1 to 999999999"
        )])),
        _ => Err(diag::error(
            code::CONST_ARG,
            format!("`{what}` must be a positive whole number"),
        )
        .with_labels(vec![e.span.primary("here")])),
    }
}

fn positive_int_or_zero(e: &Expr) -> Result<u64, Diag> {
    match e.kind {
        ExprKind::Number(v, _) if v >= 0.0 && v.fract() == 0.0 && v < 1e15 => Ok(v as u64),
        _ => Err(
            diag::error(code::CONST_ARG, "`seed` must be a whole number, 0 or more")
                .with_labels(vec![e.span.primary("here")]),
        ),
    }
}

/// Reads `name(arg, key = value, ...)` with the given formals; returns
/// the callee's name and, per formal, its argument expression.
fn call_of<'e>(
    e: &'e Expr,
    what: &str,
    example: &str,
) -> Result<(&'e ast::Ident, &'e [ast::Arg]), Diag> {
    match &e.kind {
        ExprKind::Call(callee, args) => match &callee.kind {
            ExprKind::Name(i) => Ok((i, args.as_slice())),
            _ => Err(not_const(e, what, example)),
        },
        ExprKind::Name(i) => Ok((i, &[])),
        _ => Err(not_const(e, what, example)),
    }
}

fn bool_arg(e: &Expr) -> Result<bool, Diag> {
    match e.kind {
        ExprKind::Bool(b) => Ok(b),
        _ => Err(not_const(e, "this flag", "nesterov = true")),
    }
}

fn optimizer(e: &Expr) -> Result<Optimizer, Diag> {
    let (name, args) = call_of(e, "the optimizer", "adam(lr = 1e-3)")?;
    let formals: &[(&str, &str)] = match name.name.as_str() {
        "sgd" => &[("lr", ""), ("weight_decay", "0")],
        "momentum" => &[
            ("lr", ""),
            ("momentum", "0.9"),
            ("nesterov", "false"),
            ("weight_decay", "0"),
        ],
        "adam" => &[
            ("lr", "0.001"),
            ("beta1", "0.9"),
            ("beta2", "0.999"),
            ("eps", "1e-8"),
            ("weight_decay", "0"),
            ("bias_correction", "true"),
        ],
        "adamw" => &[
            ("lr", "0.001"),
            ("beta1", "0.9"),
            ("beta2", "0.999"),
            ("eps", "1e-8"),
            ("weight_decay", "0.01"),
        ],
        other => {
            let names = ["sgd", "momentum", "adam", "adamw"];
            let mut d = diag::error(code::CONST_ARG, format!("unknown optimizer `{other}`"))
                .with_labels(vec![name.span.primary("not an optimizer")])
                .with_notes(vec![
                    "note: the optimizers are sgd, momentum, adam and adamw".into(),
                ]);
            if let Some(s) = diag::suggest(other, names) {
                d.notes.insert(0, format!("help: did you mean `{s}`?"));
            }
            return Err(d);
        }
    };
    let f: Vec<Formal> = formals
        .iter()
        .map(|(n, d)| Formal {
            name: n,
            required: d.is_empty(),
        })
        .collect();
    let sig: Vec<String> = formals
        .iter()
        .map(|(n, d)| {
            if d.is_empty() {
                n.to_string()
            } else {
                format!("{n} = {d}")
            }
        })
        .collect();
    let sig = format!("{}({})", name.name, sig.join(", "));
    let bound = bind_args(&name.name, &f, args, e.span, None, &sig)?;
    let num = |i: usize| -> Result<f32, Diag> {
        match bound[i] {
            Some(ai) => const_number(&args[ai].value, &format!("`{}`", formals[i].0)),
            None => formals[i]
                .1
                .parse::<f32>()
                .map_err(|_| not_const(e, "a default", "0")),
        }
    };
    let flag = |i: usize| -> Result<bool, Diag> {
        match bound[i] {
            Some(ai) => bool_arg(&args[ai].value),
            None => Ok(formals[i].1 == "true"),
        }
    };
    let (kind, wd) = match name.name.as_str() {
        "sgd" => (Kind::Sgd, num(1)?),
        "momentum" => (
            Kind::Momentum {
                momentum: num(1)?,
                nesterov: flag(2)?,
            },
            num(3)?,
        ),
        "adam" => (
            Kind::Adam {
                beta1: num(1)?,
                beta2: num(2)?,
                eps: num(3)?,
                bias_correction: flag(5)?,
                decoupled: false,
            },
            num(4)?,
        ),
        _ => (
            Kind::Adam {
                beta1: num(1)?,
                beta2: num(2)?,
                eps: num(3)?,
                bias_correction: true,
                decoupled: true,
            },
            num(4)?,
        ),
    };
    // Each setting within its range, the error at the setting (or at the
    // call, for a default).
    for (i, (setting, _)) in formals.iter().enumerate() {
        let (ok, rule): (fn(f32) -> bool, &str) = match *setting {
            "lr" => (|v| v > 0.0, "must be positive"),
            "weight_decay" => (|v| v >= 0.0, "must be 0 or more"),
            "beta1" | "beta2" => (|v| (0.0..1.0).contains(&v), "must be in [0, 1)"),
            "momentum" => (|v| (0.0..=1.0).contains(&v), "must be in [0, 1]"),
            "eps" => (|v| v > 0.0, "must be positive"),
            _ => continue, // flags
        };
        let v = num(i)?;
        if !ok(v) {
            let at = bound[i].map_or(e.span, |ai| args[ai].value.span);
            return Err(diag::error(
                code::CONST_ARG,
                format!("`{setting}` of `{}` {rule}, found {v}", name.name),
            )
            .with_labels(vec![at.primary(format!("`{setting}` {rule}"))]));
        }
    }
    let lr = num(0)?;
    Ok(Optimizer {
        kind,
        lr,
        weight_decay: wd,
    })
}

fn string_arg(e: &Expr) -> Result<String, Diag> {
    match &e.kind {
        ExprKind::Str(s) => Ok(s.clone()),
        _ => Err(
            diag::error(code::CONST_ARG, "expected a file name in quotes")
                .with_labels(vec![e.span.primary("not a string")]),
        ),
    }
}

fn data(e: &Expr) -> Result<DataSpec, Diag> {
    let (name, args) = call_of(
        e,
        "the data source",
        "csv(\"digits.csv\", label = \"label\")",
    )?;
    let formals: &[&str] = match name.name.as_str() {
        "csv" => &["path", "label", "scale"],
        "idx" | "npy" => &["features", "labels", "scale"],
        other => {
            return Err(diag::error(code::CONST_ARG, format!("unknown data source `{other}`"))
                .with_labels(vec![name.span.primary("not a data source")])
                .with_notes(vec!["note: the sources are csv(path, label = \"column\"), idx(images, labels) and npy(features, labels)".into()]))
        }
    };
    let f: Vec<Formal> = formals
        .iter()
        .map(|n| Formal {
            name: n,
            required: *n != "scale" && !(*n == "label" && name.name == "csv"),
        })
        .collect();
    let sig = format!("{}({})", name.name, formals.join(", "));
    let bound = bind_args(&name.name, &f, args, e.span, None, &sig)?;
    let arg = |i: usize| bound[i].map(|ai| &args[ai].value);
    let scale = match arg(2) {
        Some(x) => const_number(x, "`scale`")?,
        None => 1.0,
    };
    let first = string_arg(arg(0).expect("bind_args checked required arguments"))?;
    let source = match name.name.as_str() {
        "csv" => crate::data::Source::Csv {
            path: first.into(),
            label: match arg(1) {
                // One column, or a list: a label per position.
                Some(x) => match &x.kind {
                    ExprKind::Tensor(items) if !items.is_empty() => items
                        .iter()
                        .map(string_arg)
                        .collect::<Result<Vec<_>, _>>(
                    )?,
                    _ => vec![string_arg(x)?],
                },
                None => vec!["label".to_string()],
            },
            scale,
        },
        kind => {
            let second = string_arg(arg(1).expect("bind_args checked required arguments"))?;
            if kind == "idx" {
                crate::data::Source::Idx {
                    images: first.into(),
                    labels: second.into(),
                    scale,
                }
            } else {
                crate::data::Source::Npy {
                    features: first.into(),
                    labels: second.into(),
                    scale,
                }
            }
        }
    };
    Ok(DataSpec {
        source,
        span: e.span,
    })
}
