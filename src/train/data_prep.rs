//! From a dataset to batches: checks the data against the model's inputs,
//! splits off the validation rows, orders each epoch and gathers batches.

use crate::data::{self, Dataset, Source};
use crate::diag::{self, code, Diag, Span};
use crate::ir::{Dim, Graph, InputId};
use crate::sema::TrainSpec;
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64;
use std::path::Path;

/// How targets are fed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Targets {
    /// Class indices, fed one-hot over `classes` (input `[B, C]`).
    OneHot { classes: usize },
    /// Values fed as they are (input `[B]` or `[B, 1]`); accuracy
    /// thresholds predictions and targets at 0.5.
    Values,
}

pub struct Prepared {
    data: Dataset,
    features: InputId,
    targets: InputId,
    kind: Targets,
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
    let (Some(features), Some(targets)) = (spec.features, spec.targets) else {
        return Err(diag::error(code::INPUT, "no inputs to feed")
            .with_labels(vec![spec.span.primary("here")]));
    };
    let src = rebase(&ds.source, base);
    let data = data::load(&src).map_err(|e| load_error(ds.span, &e, base))?;
    let fin = &g.inputs[features];
    let per_row: Option<u64> = fin
        .ty
        .shape
        .iter()
        .skip(1)
        .map(|d| match d {
            Dim::Known(k) => Some(*k),
            Dim::Sym(_) => None,
        })
        .product();
    let have = data.features.shape.get(1).copied().unwrap_or(0) as u64;
    if fin.ty.shape.is_empty() || per_row != Some(have) {
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
            ds.span.secondary("the data comes from here"),
        ])
        .with_notes(vec![
            "help: the input's type must be [B, F] with F the number of feature columns".into(),
        ]));
    }
    let tin = &g.inputs[targets];
    let width = data.per_row as u64;
    // One label a row: [B] or [B, 1] values, [B, C] one-hot classes.
    // L labels a row (a sequence): [B, L] values, [B, L, C] one-hot.
    let kind = match tin.ty.shape.as_slice() {
        [_] | [_, Dim::Known(1)] if width == 1 => Targets::Values,
        [_, Dim::Known(c)] if width == 1 => Targets::OneHot {
            classes: *c as usize,
        },
        [_, Dim::Known(l)] if *l == width => Targets::Values,
        [_, Dim::Known(l), Dim::Known(c)] if *l == width => Targets::OneHot {
            classes: *c as usize,
        },
        _ => {
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
            )]))
        }
    };
    if let Targets::OneHot { classes } = kind {
        data::check_class_labels(&data, classes, &src).map_err(|e| data_error(ds.span, &e))?;
    }
    let n = data.rows();
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
        data,
        features,
        targets,
        kind,
        train,
        val,
    })
}

/// The order of the training rows in epoch `epoch` (0-based).
pub fn epoch_order(train: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = train.to_vec();
    let mix = seed ^ (epoch as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    order.shuffle(&mut Pcg64::seed_from_u64(mix));
    order
}

impl Prepared {
    /// The inputs for a batch of rows.
    pub fn batch(&self, g: &Graph, rows: &[usize]) -> SecondaryMap<InputId, Option<Tensor>> {
        let f = self.data.features.shape[1];
        let mut x = Vec::with_capacity(rows.len() * f);
        for &r in rows {
            x.extend_from_slice(&self.data.features.data[r * f..(r + 1) * f]);
        }
        let mut shape = vec![rows.len()];
        shape.extend(
            g.inputs[self.features]
                .ty
                .shape
                .iter()
                .skip(1)
                .map(|d| match d {
                    Dim::Known(k) => *k as usize,
                    Dim::Sym(_) => 1, // excluded by `prepare`
                }),
        );
        let w = self.data.per_row;
        let labels = |r: usize| &self.data.labels[r * w..(r + 1) * w];
        let mut y_shape = g.inputs[self.targets].ty.shape.iter().map(|d| match d {
            Dim::Known(k) => *k as usize,
            Dim::Sym(_) => rows.len(), // the batch axis
        });
        let _ = y_shape.next();
        let mut y_dims = vec![rows.len()];
        y_dims.extend(y_shape);
        let y = match self.kind {
            Targets::OneHot { classes } => {
                let mut y = vec![0.0; rows.len() * w * classes];
                for (i, &r) in rows.iter().enumerate() {
                    for (k, &label) in labels(r).iter().enumerate() {
                        y[(i * w + k) * classes + label as usize] = 1.0;
                    }
                }
                Tensor::new(y_dims, y)
            }
            Targets::Values => {
                let y: Vec<f32> = rows
                    .iter()
                    .flat_map(|&r| labels(r).iter().copied())
                    .collect();
                Tensor::new(y_dims, y)
            }
        };
        let mut inputs = SecondaryMap::new();
        inputs[self.features] = Some(Tensor::new(shape, x));
        inputs[self.targets] = Some(y);
        inputs
    }

    /// The labels of `rows` (one a row, as the data gives them) and, for
    /// targets fed one-hot, the number of classes; `None` for rows with
    /// several labels (a sequence), which the metrics do not cover.
    pub fn labels(&self, rows: &[usize]) -> Option<(Vec<f32>, Option<usize>)> {
        if self.data.per_row != 1 {
            return None;
        }
        let labels = rows.iter().map(|&r| self.data.labels[r]).collect();
        let classes = match self.kind {
            Targets::OneHot { classes } => Some(classes),
            Targets::Values => None,
        };
        Some((labels, classes))
    }

    /// How many labels `predict` gets right (the arg-max class for
    /// one-hot targets, the side of 0.5 for values), and how many there
    /// were.
    pub fn count_correct(&self, predict: &Tensor, rows: &[usize]) -> (usize, usize) {
        let w = self.data.per_row;
        let total = rows.len() * w;
        let per = predict.data.len() / total.max(1);
        let mut correct = 0;
        for (i, &r) in rows.iter().enumerate() {
            for k in 0..w {
                let at = i * w + k;
                let p = &predict.data[at * per..(at + 1) * per];
                let label = self.data.labels[r * w + k];
                let right = match self.kind {
                    Targets::OneHot { .. } => {
                        let best =
                            p.iter()
                                .enumerate()
                                .fold(
                                    (0, f32::NEG_INFINITY),
                                    |b, (c, &v)| if v > b.1 { (c, v) } else { b },
                                );
                        best.0 == label as usize
                    }
                    Targets::Values => (p[0] > 0.5) == (label > 0.5),
                };
                correct += usize::from(right);
            }
        }
        (correct, total)
    }
}
