//! The figures a `train` block's `metrics = [...]` names (data only; the
//! training loop computes them, `train::metrics`).

/// One figure on the validation rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Accuracy,
    /// `top_k(k = 5)`: the label among the k highest scores.
    TopK(usize),
    Precision,
    Recall,
    F1,
    /// `confusion_matrix`: printed at the end of training.
    Confusion,
    Mae,
    Rmse,
    R2,
}

impl Metric {
    /// The name in the log and the epoch lines (`val_f1`, `val_top3`).
    pub fn key(self) -> String {
        let name = match self {
            Metric::Accuracy => "accuracy".to_string(),
            Metric::TopK(k) => format!("top{k}"),
            Metric::Precision => "precision".into(),
            Metric::Recall => "recall".into(),
            Metric::F1 => "f1".into(),
            Metric::Confusion => "confusion_matrix".into(),
            Metric::Mae => "mae".into(),
            Metric::Rmse => "rmse".into(),
            Metric::R2 => "r2".into(),
        };
        format!("val_{name}")
    }

    /// Whether it is a classifier's figure (else a regressor's).
    pub fn for_classes(self) -> bool {
        !matches!(self, Metric::Mae | Metric::Rmse | Metric::R2)
    }
}
