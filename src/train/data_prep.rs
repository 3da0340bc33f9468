//! From a dataset to batches: checks the data against the model's inputs,
//! splits off the validation rows, orders each epoch and gathers batches.

use crate::data::{self, Source};
use crate::diag::{self, code, Diag, Span};
use crate::ir::{Dim, Graph, InputId, ParamId};
use crate::sema::{Feed, Feeds, TrainSpec};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64;
use std::path::Path;

/// How an input is fed from its values.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Class indices, fed one-hot over `classes` (input `[B, C]`, or
    /// `[B, L, C]` for L indices a row).
    OneHot { classes: usize },
    /// Values fed as they are (input `[B, ...]` with as many values a
    /// row); accuracy thresholds predictions and targets at 0.5.
    Values,
}

/// One input's values for every row of the data, `[N, width]`.
struct Column {
    input: InputId,
    values: Tensor,
    kind: Kind,
}

pub struct Prepared {
    columns: Vec<Column>,
    /// The column of the `targets` input, whose values are the labels
    /// accuracy and the metrics compare with.
    targets: Option<usize>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

pub(super) fn rebase(src: &Source, dir: &Path) -> Source {
    match src {
        Source::Csv { path, label, scale } => Source::Csv {
            path: dir.join(path),
            label: label.clone(),
            scale: *scale,
        },
        Source::Idx {
            images,
            labels,
            scale,
        } => Source::Idx {
            images: dir.join(images),
            labels: dir.join(labels),
            scale: *scale,
        },
        Source::Npy {
            features,
            labels,
            scale,
        } => Source::Npy {
            features: dir.join(features),
            labels: dir.join(labels),
            scale: *scale,
        },
    }
}

fn data_error(span: Span, e: &data::DataError) -> Diag {
    e.to_diag()
        .with_labels(vec![span.primary("data from here")])
}

/// How input `shape` (`[B, ...]`) takes `width` values a row: as they
/// are when its row has `width` elements, one-hot when its last axis is
/// the classes and the others hold `width` elements; `None` otherwise.
fn kind_for(shape: &[Dim], width: usize) -> Option<Kind> {
    let row: Option<Vec<usize>> = shape
        .get(1..)?
        .iter()
        .map(|d| match d {
            Dim::Known(k) => Some(*k as usize),
            Dim::Sym(_) => None,
        })
        .collect();
    let row = row?;
    if row.iter().product::<usize>() == width {
        return Some(Kind::Values);
    }
    let (&classes, rest) = row.split_last()?;
    (rest.iter().product::<usize>() == width).then_some(Kind::OneHot { classes })
}

/// [`data_error`] for the block's data files, whose paths start from
/// `base`, the `.nn` file's folder: a missing file's hint says so
/// (`DataError`'s own is for paths given on the command line).
fn load_error(span: Span, e: &data::DataError, base: &Path) -> Diag {
    let data::DataError::Read {
        path,
        kind: std::io::ErrorKind::NotFound,
        ..
    } = e
    else {
        return data_error(span, e);
    };
    let help = match path.strip_prefix(base) {
        Ok(written) if written.is_relative() => {
            let folder = if base.as_os_str().is_empty() {
                "the current directory".to_string()
            } else {
                format!("`{}`", base.display())
            };
            format!(
                "help: a data path in a `train` block is relative to the folder of the .nn file, {folder}: `{}` is `{}`",
                written.display(),
                path.display()
            )
        }
        _ => "help: check the path".into(),
    };
    diag::error(code::INPUT, e.to_string())
        .with_labels(vec![span.primary("data from here")])
        .with_notes(vec![help])
}

/// Loads the `train` block's data and checks it against the inputs.
pub fn prepare(g: &Graph, spec: &TrainSpec, base: &Path, seed: u64) -> Result<Prepared, Diag> {
    let Some(ds) = &spec.data else {
        return Err(
            diag::error(code::INPUT, "this `train` block has no `data`").with_labels(vec![spec
                .span
                .primary("add `data = csv(\"file.csv\", label = \"label\")` here")]),
        );
    };
    let (columns, targets) = match &ds.feeds {
        Feeds::Pair(source) => pair_columns(g, spec, ds.span, source, base)?,
        Feeds::Named(feeds) => named_columns(g, spec, feeds, base)?,
    };
    let n = columns[0].values.shape[0];
    let mut rows: Vec<usize> = (0..n).collect();
    rows.shuffle(&mut Pcg64::seed_from_u64(seed));
    let n_val = ((n as f64) * f64::from(spec.split)).round() as usize;
    let val = rows[..n_val].to_vec();
    let train = rows[n_val..].to_vec();
    if train.is_empty() {
        return Err(diag::error(
            code::INPUT,
            format!("no rows left to train on: {n} rows, {n_val} held out for validation"),
        )
        .with_labels(vec![ds.span.primary("this data")]));
    }
    Ok(Prepared {
        columns,
        targets,
        train,
        val,
    })
}

/// The pair form: the features and the labels of one source.
fn pair_columns(
    g: &Graph,
    spec: &TrainSpec,
    span: Span,
    source: &Source,
    base: &Path,
) -> Result<(Vec<Column>, Option<usize>), Diag> {
    let src = &rebase(source, base);
    let (Some(features), Some(targets)) = (spec.features, spec.targets) else {
        return Err(diag::error(code::INPUT, "no inputs to feed")
            .with_labels(vec![spec.span.primary("here")]));
    };
    let data = data::load(src).map_err(|e| load_error(span, &e, base))?;
    let fin = &g.inputs[features];
    let have = data.features.shape.get(1).copied().unwrap_or(0);
    if kind_for(&fin.ty.shape, have) != Some(Kind::Values) {
        return Err(diag::error(
            code::INPUT,
            format!(
                "the data has {have} features per row, but input `{}` is {}",
                fin.name,
                g.shape_str(&fin.ty.shape)
            ),
        )
        .with_labels(vec![
            fin.span.primary("this input takes the features"),
            span.secondary("the data comes from here"),
        ])
        .with_notes(vec![
            "help: the input's type must be [B, F] with F the number of feature columns".into(),
        ]));
    }
    let tin = &g.inputs[targets];
    let width = data.per_row;
    let Some(kind) = kind_for(&tin.ty.shape, width) else {
        return Err(diag::error(
            code::INPUT,
            format!(
                "input `{}` cannot take targets: its type is {}",
                tin.name,
                g.shape_str(&tin.ty.shape)
            ),
        )
        .with_labels(vec![tin.span.primary("this input takes the targets")])
        .with_notes(vec![format!(
            "help: the data has {width} label{} a row: use [B, C] for C classes (fed one-hot) or [B] for values, and [B, L, C] or [B, L] for L labels a row",
            if width == 1 { "" } else { "s" }
        )]));
    };
    if let Kind::OneHot { classes } = kind {
        data::check_class_labels(&data, classes, src).map_err(|e| data_error(span, &e))?;
    }
    let n = data.rows();
    let columns = vec![
        Column {
            input: features,
            values: data.features,
            kind: Kind::Values,
        },
        Column {
            input: targets,
            values: Tensor::new(vec![n, width], data.labels),
            kind,
        },
    ];
    Ok((columns, Some(1)))
}

/// The named form: each input from its own file, the files' rows aligned.
fn named_columns(
    g: &Graph,
    spec: &TrainSpec,
    feeds: &[Feed],
    base: &Path,
) -> Result<(Vec<Column>, Option<usize>), Diag> {
    let mut columns: Vec<Column> = Vec::with_capacity(feeds.len());
    for f in feeds {
        let file = f.file.rebase(base);
        let values = file
            .load(f.scale)
            .map_err(|e| load_error(f.span, &e, base))?;
        let info = &g.inputs[f.input];
        let width = values.shape[1];
        let Some(kind) = kind_for(&info.ty.shape, width) else {
            return Err(diag::error(
                code::INPUT,
                format!(
                    "`{}` gives {width} value{} a row, but input `{}` is {}",
                    file.path().display(),
                    if width == 1 { "" } else { "s" },
                    info.name,
                    g.shape_str(&info.ty.shape)
                ),
            )
            .with_labels(vec![
                f.span.primary("the values come from here"),
                info.span.secondary("this input takes them"),
            ])
            .with_notes(vec![format!(
                "help: an input [B, d1, ...] takes d1·... values a row as they are, or class indices one-hot over its last axis ([B, C] for one index a row)"
            )]));
        };
        if let Kind::OneHot { classes } = kind {
            data::check_classes(&values, classes, &file).map_err(|e| data_error(f.span, &e))?;
        }
        if let Some(first) = columns.first() {
            let (n, m) = (first.values.shape[0], values.shape[0]);
            if n != m {
                return Err(diag::error(
                    code::INPUT,
                    format!(
                        "`{}` has {m} rows, but `{}` has {n}",
                        file.path().display(),
                        feeds[0].file.rebase(base).path().display()
                    ),
                )
                .with_labels(vec![
                    f.span.primary(format!("{m} rows")),
                    feeds[0].span.secondary(format!("{n} rows")),
                ])
                .with_notes(vec![
                    "help: row i of every file makes example i: the files need the same number of rows".into(),
                ]));
            }
        }
        columns.push(Column {
            input: f.input,
            values,
            kind,
        });
    }
    let targets = spec
        .targets
        .and_then(|t| columns.iter().position(|c| c.input == t));
    Ok((columns, targets))
}

/// The order of the training rows in epoch `epoch` (0-based).
pub fn epoch_order(train: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = train.to_vec();
    let mix = seed ^ (epoch as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    order.shuffle(&mut Pcg64::seed_from_u64(mix));
    order
}

impl Prepared {
    /// The first `n` rows epoch 1 takes (fewer when the training rows
    /// are fewer).
    pub fn first_batch(&self, seed: u64, n: usize) -> Vec<usize> {
        let mut order = epoch_order(&self.train, seed, 0);
        order.truncate(n);
        order
    }

    /// The inputs for a batch of rows.
    pub fn batch(&self, g: &Graph, rows: &[usize]) -> SecondaryMap<InputId, Option<Tensor>> {
        let mut inputs = SecondaryMap::new();
        for c in &self.columns {
            let w = c.values.shape[1];
            let of = |r: usize| &c.values.data[r * w..(r + 1) * w];
            let mut shape = vec![rows.len()];
            shape.extend(g.inputs[c.input].ty.shape.iter().skip(1).map(|d| match d {
                Dim::Known(k) => *k as usize,
                Dim::Sym(_) => 1, // excluded by `kind_for`
            }));
            let t = match c.kind {
                Kind::OneHot { classes } => {
                    let mut y = vec![0.0; rows.len() * w * classes];
                    for (i, &r) in rows.iter().enumerate() {
                        for (k, &label) in of(r).iter().enumerate() {
                            y[(i * w + k) * classes + label as usize] = 1.0;
                        }
                    }
                    Tensor::new(shape, y)
                }
                Kind::Values => {
                    let mut x = Vec::with_capacity(rows.len() * w);
                    for &r in rows {
                        x.extend_from_slice(of(r));
                    }
                    Tensor::new(shape, x)
                }
            };
            inputs[c.input] = Some(t);
        }
        inputs
    }

    /// Sets the parameters of the learnt scalings (`table` names them,
    /// `params` holds its values) from the training rows.
    pub fn set_learnt(
        &self,
        g: &Graph,
        spec: &TrainSpec,
        table: &Graph,
        params: &mut SecondaryMap<ParamId, Tensor>,
    ) -> Result<(), Diag> {
        for (name, values) in self.learnt(g, spec)? {
            if let Some((id, _)) = table.params.iter().find(|(_, p)| p.name == name) {
                let shape = params[id].shape.clone();
                params[id] = Tensor::new(shape, values);
            }
        }
        Ok(())
    }

    /// Each learnt scaling's center and spread, from the training rows
    /// of its input's values: by the parameters' names.
    fn learnt(&self, g: &Graph, spec: &TrainSpec) -> Result<Vec<(String, Vec<f32>)>, Diag> {
        let Some(ds) = &spec.data else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for &(input, l) in &ds.learnt {
            let Some(c) = self.columns.iter().find(|c| c.input == input) else {
                continue;
            };
            if c.kind != Kind::Values {
                return Err(diag::error(
                    code::INPUT,
                    format!(
                        "input `{}` is fed class indices one-hot: there is nothing to scale",
                        g.inputs[input].name
                    ),
                )
                .with_labels(vec![ds.span.primary("scaled here")])
                .with_notes(vec![
                    "help: scale the inputs fed values, not the classes".into(),
                ]));
            }
            let w = c.values.shape[1];
            let values = self
                .train
                .iter()
                .flat_map(|&r| c.values.data[r * w..(r + 1) * w].iter().copied());
            let (center, spread) = l.fit(values, w);
            let [cn, sn] = l.params(&g.inputs[input].name);
            out.push((cn, center));
            out.push((sn, spread));
        }
        Ok(out)
    }

    /// The labels of `rows` (one a row, as the data gives them) and, for
    /// targets fed one-hot, the number of classes; `None` without a
    /// targets input or for rows with several labels (a sequence), which
    /// the metrics do not cover.
    pub fn labels(&self, rows: &[usize]) -> Option<(Vec<f32>, Option<usize>)> {
        let c = &self.columns[self.targets?];
        if c.values.shape[1] != 1 {
            return None;
        }
        let labels = rows.iter().map(|&r| c.values.data[r]).collect();
        let classes = match c.kind {
            Kind::OneHot { classes } => Some(classes),
            Kind::Values => None,
        };
        Some((labels, classes))
    }

    /// Whether accuracy can be computed: the block names its targets.
    pub fn has_targets(&self) -> bool {
        self.targets.is_some()
    }

    /// How many labels `predict` gets right (the arg-max class for
    /// one-hot targets, the side of 0.5 for values), and how many there
    /// were; (0, 0) without targets.
    pub fn count_correct(&self, predict: &Tensor, rows: &[usize]) -> (usize, usize) {
        let Some(c) = self.targets.map(|t| &self.columns[t]) else {
            return (0, 0);
        };
        let w = c.values.shape[1];
        let total = rows.len() * w;
        let per = predict.data.len() / total.max(1);
        let mut correct = 0;
        for (i, &r) in rows.iter().enumerate() {
            for k in 0..w {
                let at = i * w + k;
                let p = &predict.data[at * per..(at + 1) * per];
                let label = c.values.data[r * w + k];
                let right = match c.kind {
                    Kind::OneHot { .. } => {
                        let best =
                            p.iter()
                                .enumerate()
                                .fold(
                                    (0, f32::NEG_INFINITY),
                                    |b, (c, &v)| if v > b.1 { (c, v) } else { b },
                                );
                        best.0 == label as usize
                    }
                    Kind::Values => (p[0] > 0.5) == (label > 0.5),
                };
                correct += usize::from(right);
            }
        }
        (correct, total)
    }
}
