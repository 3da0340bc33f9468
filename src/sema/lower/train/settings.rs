//! The settings of a `train` block that are compile-time values: the
//! optimizer and its hyper-parameters (each checked in its range), the
//! data source, counts and flags — each read from its expression with a
//! diagnostic at it.

use super::*;
use crate::sema::optimizer::LrSchedule;

pub(super) fn unknown_setting(st: &ast::Setting, settings: &[&str]) -> Diag {
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

pub(super) fn not_a_param_set(e: &Expr) -> Diag {
    diag::error(
        code::PHASE,
        "`params` names the models or parameters a loss trains",
    )
    .with_labels(vec![e.span.primary("not a model or a `param`")])
    .with_notes(vec![
        "help: for example `params = Generator`, or `params = [Encoder, Head.w]`".into(),
    ])
}

pub(super) fn positive_int(e: &Expr, what: &str) -> Result<usize, Diag> {
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

pub(super) fn positive_int_or_zero(e: &Expr) -> Result<u64, Diag> {
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
pub(super) fn call_of<'e>(
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

pub(super) fn bool_arg(e: &Expr) -> Result<bool, Diag> {
    match e.kind {
        ExprKind::Bool(b) => Ok(b),
        _ => Err(not_const(e, "this flag", "nesterov = true")),
    }
}

/// `unknown KIND `NAME``, with the known ones and the closest of them.
fn unknown(name: &ast::Ident, kind: &str, known: &[&str]) -> Diag {
    let mut d = diag::error(code::CONST_ARG, format!("unknown {kind} `{}`", name.name))
        .with_labels(vec![name
            .span
            .primary(format!("not {} {kind}", article(kind)))])
        .with_notes(vec![format!(
            "note: the {kind}s are {}",
            match known.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
                _ => known.join(", "),
            }
        )]);
    if let Some(s) = diag::suggest(&name.name, known.iter().copied()) {
        d.notes.insert(0, format!("help: did you mean `{s}`?"));
    }
    d
}

fn article(word: &str) -> &'static str {
    match word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        true => "an",
        false => "a",
    }
}

/// Binds a call's arguments to `formals` (name, default; no default:
/// required), the signature in errors written from them.
fn bind_formals(
    name: &ast::Ident,
    formals: &[(&str, &str)],
    args: &[ast::Arg],
    span: Span,
) -> Result<Vec<Option<usize>>, Diag> {
    let f: Vec<Formal> = formals
        .iter()
        .map(|(n, d)| Formal {
            name: n,
            required: d.is_empty(),
        })
        .collect();
    let sig = || {
        let sig: Vec<String> = formals
            .iter()
            .map(|(n, d)| match d.is_empty() {
                true => n.to_string(),
                false => format!("{n} = {d}"),
            })
            .collect();
        format!("{}({})", name.name, sig.join(", "))
    };
    bind_args(&name.name, &f, args, span, None, &sig)
}

pub(crate) fn optimizer(e: &Expr) -> Result<Optimizer, Diag> {
    let (name, args) = call_of(e, "the optimizer", "adam(lr = 1e-3)")?;
    let formals: &[(&str, &str)] = match name.name.as_str() {
        "sgd" => &[
            ("lr", ""),
            ("weight_decay", "0"),
            ("schedule", "constant"),
            ("warmup", "0"),
            ("clip_norm", "none"),
        ],
        "momentum" => &[
            ("lr", ""),
            ("momentum", "0.9"),
            ("nesterov", "false"),
            ("weight_decay", "0"),
            ("schedule", "constant"),
            ("warmup", "0"),
            ("clip_norm", "none"),
        ],
        "adam" => &[
            ("lr", "0.001"),
            ("beta1", "0.9"),
            ("beta2", "0.999"),
            ("eps", "1e-8"),
            ("weight_decay", "0"),
            ("bias_correction", "true"),
            ("schedule", "constant"),
            ("warmup", "0"),
            ("clip_norm", "none"),
        ],
        "adamw" => &[
            ("lr", "0.001"),
            ("beta1", "0.9"),
            ("beta2", "0.999"),
            ("eps", "1e-8"),
            ("weight_decay", "0.01"),
            ("schedule", "constant"),
            ("warmup", "0"),
            ("clip_norm", "none"),
        ],
        _ => {
            return Err(unknown(
                name,
                "optimizer",
                &["sgd", "momentum", "adam", "adamw"],
            ))
        }
    };
    let bound = bind_formals(name, formals, args, e.span)?;
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
            "clip_norm" if bound[i].is_some() => (|v| v > 0.0, "must be positive"),
            _ => continue, // flags, the schedule, the warmup
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
    let at = |n: &str| {
        formals
            .iter()
            .position(|(f, _)| *f == n)
            .and_then(|i| bound[i])
    };
    let schedule = match at("schedule") {
        Some(ai) => schedule(&args[ai].value)?,
        None => LrSchedule::Constant,
    };
    let warmup = match at("warmup") {
        Some(ai) => positive_int_or_zero(&args[ai].value)?,
        None => 0,
    };
    let clip_norm = match formals.iter().position(|(f, _)| *f == "clip_norm") {
        Some(i) if bound[i].is_some() => Some(num(i)?),
        _ => None,
    };
    Ok(Optimizer {
        kind,
        lr,
        weight_decay: wd,
        schedule,
        warmup,
        clip_norm,
    })
}

/// `schedule = step(every = 10, gamma = 0.1)` and the others of
/// [`crate::sema::optimizer::LrSchedule`].
fn schedule(e: &Expr) -> Result<LrSchedule, Diag> {
    let (name, args) = call_of(e, "the schedule", "cosine(epochs = 50)")?;
    let formals: &[(&str, &str)] = match name.name.as_str() {
        "constant" => &[],
        "step" => &[("every", ""), ("gamma", "0.1")],
        "exponential" => &[("gamma", "")],
        "cosine" => &[("epochs", ""), ("min_lr", "0")],
        "reduce_on_plateau" => &[("factor", "0.1"), ("patience", "10"), ("min_delta", "0")],
        _ => {
            return Err(unknown(
                name,
                "schedule",
                &[
                    "constant",
                    "step",
                    "exponential",
                    "cosine",
                    "reduce_on_plateau",
                ],
            ))
        }
    };
    let bound = bind_formals(name, formals, args, e.span)?;
    let num = |i: usize, ok: fn(f32) -> bool, rule: &str| -> Result<f32, Diag> {
        let v = match bound[i] {
            Some(ai) => const_number(&args[ai].value, &format!("`{}`", formals[i].0))?,
            None => formals[i].1.parse::<f32>().unwrap_or(0.0),
        };
        if ok(v) {
            return Ok(v);
        }
        let at = bound[i].map_or(e.span, |ai| args[ai].value.span);
        Err(diag::error(
            code::CONST_ARG,
            format!("`{}` of `{}` {rule}, found {v}", formals[i].0, name.name),
        )
        .with_labels(vec![at.primary(rule.to_string())]))
    };
    let count = |i: usize| -> Result<u64, Diag> {
        match bound[i] {
            Some(ai) => Ok(positive_int(&args[ai].value, formals[i].0)? as u64),
            None => Ok(formals[i].1.parse::<u64>().unwrap_or(1)),
        }
    };
    let positive: fn(f32) -> bool = |v| v > 0.0;
    Ok(match name.name.as_str() {
        "constant" => LrSchedule::Constant,
        "step" => LrSchedule::Step {
            every: count(0)?,
            gamma: num(1, |v| v >= 0.0, "must be 0 or more")?,
        },
        "exponential" => LrSchedule::Exponential {
            gamma: num(0, positive, "must be positive")?,
        },
        "cosine" => LrSchedule::Cosine {
            epochs: count(0)?,
            min_lr: num(1, |v| v >= 0.0, "must be 0 or more")?,
        },
        _ => LrSchedule::ReduceOnPlateau {
            factor: num(0, |v| v > 0.0 && v < 1.0, "must be in (0, 1)")?,
            patience: count(1)?,
            min_delta: num(2, |v| v >= 0.0, "must be 0 or more")?,
        },
    })
}

/// `metrics = [accuracy, top_k(k = 3), f1, …]` (or one of them).
pub(super) fn metrics(e: &Expr) -> Result<Vec<crate::sema::metrics::Metric>, Diag> {
    use crate::sema::metrics::Metric;
    let items: Vec<&Expr> = match &e.kind {
        ExprKind::Tensor(items) => items.iter().collect(),
        _ => vec![e],
    };
    let names = [
        "accuracy",
        "top_k",
        "precision",
        "recall",
        "f1",
        "confusion_matrix",
        "mae",
        "rmse",
        "r2",
    ];
    let mut out = Vec::new();
    for it in items {
        let (name, args) = call_of(it, "a metric", "metrics = [accuracy, f1]")?;
        let m = match name.name.as_str() {
            "top_k" => {
                let f = [Formal {
                    name: "k",
                    required: false,
                }];
                let bound = bind_args("top_k", &f, args, it.span, None, &|| "top_k(k = 5)".into())?;
                Metric::TopK(match bound[0] {
                    Some(ai) => positive_int(&args[ai].value, "k")?,
                    None => 5,
                })
            }
            other if !args.is_empty() => {
                return Err(diag::error(
                    code::CONST_ARG,
                    format!("the metric `{other}` takes no arguments"),
                )
                .with_labels(vec![it.span.primary("here")]))
            }
            "accuracy" => Metric::Accuracy,
            "precision" => Metric::Precision,
            "recall" => Metric::Recall,
            "f1" => Metric::F1,
            "confusion_matrix" => Metric::Confusion,
            "mae" => Metric::Mae,
            "rmse" => Metric::Rmse,
            "r2" => Metric::R2,
            _ => return Err(unknown(name, "metric", &names)),
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

pub(super) fn string_arg(e: &Expr) -> Result<String, Diag> {
    match &e.kind {
        ExprKind::Str(s) => Ok(s.clone()),
        _ => Err(
            diag::error(code::CONST_ARG, "expected a file name in quotes")
                .with_labels(vec![e.span.primary("not a string")]),
        ),
    }
}

/// A source's `scale`: a constant factor, or a scaling learnt from the
/// training rows (`standardize`, `minmax`).
fn scale_arg(e: Option<&Expr>) -> Result<(f32, Option<Learnt>), Diag> {
    let Some(e) = e else {
        return Ok((1.0, None));
    };
    match &e.kind {
        ExprKind::Name(i) => match i.name.as_str() {
            "standardize" => Ok((1.0, Some(Learnt::Standardize))),
            "minmax" => Ok((1.0, Some(Learnt::Minmax))),
            _ => Err(unknown(i, "scaling", &["standardize", "minmax"])
                .with_notes(vec!["note: `scale` is a number (`scale = 1/255`) or a scaling learnt from the training rows".into()])),
        },
        _ => Ok((const_number(e, "`scale`")?, None)),
    }
}

/// The pair form of `data`: `csv(path, label = ...)`, `idx(images,
/// labels)` or `npy(features, labels)`, and the features' learnt scaling.
pub(super) fn data(e: &Expr) -> Result<(crate::data::Source, Option<Learnt>), Diag> {
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
                .with_notes(vec!["note: the sources are csv(path, label = \"column\"), idx(images, labels), npy(features, labels) and, to feed inputs by name, inputs(x = csv(path, columns = [...]), z = npy(path), ...)".into()]))
        }
    };
    let f: Vec<Formal> = formals
        .iter()
        .map(|n| Formal {
            name: n,
            required: *n != "scale" && !(*n == "label" && name.name == "csv"),
        })
        .collect();
    let sig = || format!("{}({})", name.name, formals.join(", "));
    let bound = bind_args(&name.name, &f, args, e.span, None, &sig)?;
    let arg = |i: usize| bound[i].map(|ai| &args[ai].value);
    let (scale, learnt) = scale_arg(arg(2))?;
    let first = string_arg(arg(0).expect("bind_args checked required arguments"))?;
    let source = match name.name.as_str() {
        "csv" => crate::data::Source::Csv {
            path: first.into(),
            label: match arg(1) {
                Some(x) => strings(x)?,
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
    Ok((source, learnt))
}

/// One column name, or a list of them.
fn strings(x: &Expr) -> Result<Vec<String>, Diag> {
    match &x.kind {
        ExprKind::Tensor(items) if !items.is_empty() => items.iter().map(string_arg).collect(),
        _ => Ok(vec![string_arg(x)?]),
    }
}

/// One input's file in `inputs(...)`: `csv(path, columns = ..., scale =
/// ...)` or `npy(path, scale = ...)`.
pub(super) fn feed_file(e: &Expr) -> Result<(crate::data::Columns, f32, Option<Learnt>), Diag> {
    let (name, args) = call_of(
        e,
        "an input's file",
        "csv(\"a.csv\", columns = [\"x1\", \"x2\"])",
    )?;
    let formals: &[(&str, &str)] = match name.name.as_str() {
        "csv" => &[("path", ""), ("columns", "all"), ("scale", "1")],
        "npy" => &[("path", ""), ("scale", "1")],
        _ => {
            return Err(unknown(name, "input file", &["csv", "npy"]).with_notes(vec![
                "help: `inputs(x = csv(\"a.csv\", columns = [\"x1\", \"x2\"]), z = npy(\"z.npy\"))`".into(),
            ]))
        }
    };
    let bound = bind_formals(name, formals, args, e.span)?;
    let arg = |i: usize| bound[i].map(|ai| &args[ai].value);
    let path = string_arg(arg(0).expect("bind_args checked required arguments"))?.into();
    let (file, scale) = match name.name.as_str() {
        "csv" => {
            let columns = arg(1).map(strings).transpose()?;
            (crate::data::Columns::Csv { path, columns }, arg(2))
        }
        _ => (crate::data::Columns::Npy { path }, arg(1)),
    };
    let (scale, learnt) = scale_arg(scale)?;
    Ok((file, scale, learnt))
}
