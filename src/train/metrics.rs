//! The figures a `train` block's `metrics = [...]` asks for, computed on
//! the validation rows after every epoch from the model's predictions
//! and the labels: for a classifier (targets fed one-hot) accuracy,
//! top-k accuracy, macro-averaged precision, recall and F1 (each class's
//! figure, then their mean, as scikit-learn's `average="macro"`, a class
//! with no predicted or no true row counting 0) and the confusion
//! matrix; for a regressor (targets fed as values) MAE, RMSE and R².

pub use crate::sema::metrics::Metric;

/// Predictions and labels of the validation rows.
pub enum Outcomes<'a> {
    /// `scores` has `classes` values a row; `labels` a class index a row.
    Classes {
        scores: &'a [f32],
        classes: usize,
        labels: &'a [f32],
    },
    /// One value a row and its target.
    Values {
        predicted: &'a [f32],
        targets: &'a [f32],
    },
}

/// The confusion matrix: `m[true][predicted]` counts, the prediction
/// being each row's arg-max (the first of equals).
pub fn confusion(scores: &[f32], classes: usize, labels: &[f32]) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0usize; classes]; classes];
    for (row, &label) in scores.chunks(classes).zip(labels) {
        let p = argmax(row);
        if let Some(r) = m.get_mut(label as usize) {
            r[p] += 1;
        }
    }
    m
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (k, &v)| if v > b.1 { (k, v) } else { b },
        )
        .0
}

/// Each class's precision and recall from a confusion matrix (0 where
/// the class was never predicted, or never true).
fn per_class(m: &[Vec<usize>]) -> Vec<(f64, f64)> {
    let n = m.len();
    (0..n)
        .map(|c| {
            let tp = m[c][c] as f64;
            let predicted: usize = (0..n).map(|t| m[t][c]).sum();
            let actual: usize = m[c].iter().sum();
            let ratio = |d: usize| if d == 0 { 0.0 } else { tp / d as f64 };
            (ratio(predicted), ratio(actual))
        })
        .collect()
}

/// The value of `metric` on `out`; `None` when it does not apply (a
/// classification figure for a regressor, or the other way round; the
/// confusion matrix, which is no single number).
pub fn value(metric: Metric, out: &Outcomes) -> Option<f64> {
    match (metric, out) {
        (
            Metric::Accuracy | Metric::TopK(_),
            Outcomes::Classes {
                scores,
                classes,
                labels,
            },
        ) => {
            let k = match metric {
                Metric::TopK(k) => k,
                _ => 1,
            };
            let right = scores
                .chunks(*classes)
                .zip(*labels)
                .filter(|(row, &label)| {
                    // The label is among the k largest: fewer than k
                    // scores beat it (ties go to the label).
                    let own = row.get(label as usize).copied().unwrap_or(f32::NAN);
                    row.iter().filter(|&&v| v > own).count() < k
                })
                .count();
            Some(right as f64 / labels.len().max(1) as f64)
        }
        (
            Metric::Precision | Metric::Recall | Metric::F1,
            Outcomes::Classes {
                scores,
                classes,
                labels,
            },
        ) => {
            let pr = per_class(&confusion(scores, *classes, labels));
            let each = pr.iter().map(|&(p, r)| match metric {
                Metric::Precision => p,
                Metric::Recall => r,
                _ if p + r == 0.0 => 0.0,
                _ => 2.0 * p * r / (p + r),
            });
            Some(each.sum::<f64>() / (*classes).max(1) as f64)
        }
        (Metric::Mae | Metric::Rmse | Metric::R2, Outcomes::Values { predicted, targets }) => {
            let n = targets.len().max(1) as f64;
            let diffs = predicted
                .iter()
                .zip(*targets)
                .map(|(&p, &t)| f64::from(p) - f64::from(t));
            Some(match metric {
                Metric::Mae => diffs.map(f64::abs).sum::<f64>() / n,
                Metric::Rmse => (diffs.map(|d| d * d).sum::<f64>() / n).sqrt(),
                _ => {
                    let mean = targets.iter().map(|&t| f64::from(t)).sum::<f64>() / n;
                    let tot: f64 = targets.iter().map(|&t| (f64::from(t) - mean).powi(2)).sum();
                    let res: f64 = diffs.map(|d| d * d).sum();
                    1.0 - res / tot
                }
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes, six rows; the arg-max predictions are
    /// 0, 1, 1, 2, 0, 1 against the labels 0, 1, 2, 2, 1, 1.
    fn six() -> (Vec<f32>, Vec<f32>) {
        let scores = vec![
            0.9, 0.05, 0.05, // 0
            0.1, 0.8, 0.1, // 1
            0.2, 0.5, 0.3, // 1 (label 2; second choice 2)
            0.1, 0.2, 0.7, // 2
            0.6, 0.3, 0.1, // 0 (label 1; second choice 1)
            0.2, 0.7, 0.1, // 1
        ];
        (scores, vec![0.0, 1.0, 2.0, 2.0, 1.0, 1.0])
    }

    fn on<'a>(s: &'a [f32], l: &'a [f32]) -> Outcomes<'a> {
        Outcomes::Classes {
            scores: s,
            classes: 3,
            labels: l,
        }
    }

    #[test]
    fn classification_figures_by_hand() {
        let (s, l) = six();
        let m = confusion(&s, 3, &l);
        // true 0: [1,0,0]; true 1: [1,2,0]; true 2: [0,1,1]
        assert_eq!(m, vec![vec![1, 0, 0], vec![1, 2, 0], vec![0, 1, 1]]);
        let v = |metric| value(metric, &on(&s, &l)).unwrap();
        assert!((v(Metric::Accuracy) - 4.0 / 6.0).abs() < 1e-12);
        // Top-2: the two misses have their label second.
        assert!((v(Metric::TopK(2)) - 1.0).abs() < 1e-12);
        // Precision: class 0 1/2, class 1 2/3, class 2 1/1.
        let p = (0.5 + 2.0 / 3.0 + 1.0) / 3.0;
        assert!((v(Metric::Precision) - p).abs() < 1e-12);
        // Recall: class 0 1/1, class 1 2/3, class 2 1/2.
        let r = (1.0 + 2.0 / 3.0 + 0.5) / 3.0;
        assert!((v(Metric::Recall) - r).abs() < 1e-12);
        // F1 per class: 2/3, 2/3, 2/3.
        assert!((v(Metric::F1) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(value(Metric::Mae, &on(&s, &l)), None);
    }

    #[test]
    fn a_class_never_predicted_counts_zero() {
        // Both rows predicted 0; class 1 is never predicted.
        let s = [0.9, 0.1, 0.8, 0.2];
        let l = [0.0, 1.0];
        let o = Outcomes::Classes {
            scores: &s,
            classes: 2,
            labels: &l,
        };
        // Precision: 1/2 and 0; recall: 1 and 0; F1: 2/3 and 0.
        assert!((value(Metric::Precision, &o).unwrap() - 0.25).abs() < 1e-12);
        assert!((value(Metric::Recall, &o).unwrap() - 0.5).abs() < 1e-12);
        assert!((value(Metric::F1, &o).unwrap() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn regression_figures_by_hand() {
        let p = [2.0, 4.0, 5.0, 9.0];
        let t = [1.0, 4.0, 7.0, 8.0];
        let o = Outcomes::Values {
            predicted: &p,
            targets: &t,
        };
        // Errors 1, 0, -2, 1: MAE 1, RMSE √(6/4); the targets' mean is 5,
        // their squares about it 16 + 1 + 4 + 9 = 30, so R² = 1 − 6/30.
        assert!((value(Metric::Mae, &o).unwrap() - 1.0).abs() < 1e-12);
        assert!((value(Metric::Rmse, &o).unwrap() - 1.5f64.sqrt()).abs() < 1e-12);
        assert!((value(Metric::R2, &o).unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(value(Metric::F1, &o), None);
    }
}
