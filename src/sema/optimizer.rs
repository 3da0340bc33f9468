//! An optimizer as a `train` block describes it: which rule and its
//! hyper-parameters. Data only; the update it makes a training step do
//! is built by the optimizer pass (`passes::optimizer`).

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Sgd,
    Momentum {
        momentum: f32,
        nesterov: bool,
    },
    Adam {
        beta1: f32,
        beta2: f32,
        eps: f32,
        bias_correction: bool,
        decoupled: bool,
    },
}

/// A rule with its learning rate and weight decay, the schedule that
/// varies the rate, and the gradient clipping before the rule.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Optimizer {
    pub kind: Kind,
    pub lr: f32,
    pub weight_decay: f32,
    /// How the rate changes from epoch to epoch (`schedule = …`).
    pub schedule: LrSchedule,
    /// Steps over which the rate rises linearly to its scheduled value
    /// (`warmup = N`): step s (from 0) takes (s + 1) / N of it.
    pub warmup: u64,
    /// Scale the gradients so that their global L2 norm is at most this
    /// (`clip_norm = C`), as `torch.nn.utils.clip_grad_norm_`.
    pub clip_norm: Option<f32>,
}

/// A learning-rate schedule over epochs e = 0, 1, … (the rate of every
/// step of epoch e), from the optimizer's rate η.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LrSchedule {
    /// η throughout.
    Constant,
    /// `step(every = k, gamma = γ)`: η·γ^⌊e/k⌋.
    Step { every: u64, gamma: f32 },
    /// `exponential(gamma = γ)`: η·γ^e.
    Exponential { gamma: f32 },
    /// `cosine(epochs = E, min_lr = m)`: m + (η − m)·(1 + cos(π·min(e, E)/E))/2.
    Cosine { epochs: u64, min_lr: f32 },
    /// `reduce_on_plateau(factor = f, patience = p, min_delta = d)`: the
    /// rate times f each time the validation loss (the training loss
    /// without validation rows) has not improved by more than d for p
    /// epochs; kept by the training loop.
    ReduceOnPlateau {
        factor: f32,
        patience: u64,
        min_delta: f32,
    },
}

impl Optimizer {
    /// The optimizer as a `train` block writes it, with the settings that
    /// differ from the defaults: `adam(lr = 0.01, schedule = cosine)`.
    pub fn describe(&self) -> String {
        let (name, mut args) = match self.kind {
            Kind::Sgd => ("sgd", vec![]),
            Kind::Momentum { momentum, nesterov } => (
                "momentum",
                [
                    (momentum != 0.9).then(|| format!("momentum = {momentum}")),
                    nesterov.then(|| "nesterov = true".to_string()),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            Kind::Adam {
                beta1,
                beta2,
                decoupled,
                ..
            } => (
                if decoupled { "adamw" } else { "adam" },
                [
                    (beta1 != 0.9).then(|| format!("beta1 = {beta1}")),
                    (beta2 != 0.999).then(|| format!("beta2 = {beta2}")),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
        };
        args.insert(0, format!("lr = {}", self.lr));
        if self.weight_decay != 0.0 {
            args.push(format!("weight_decay = {}", self.weight_decay));
        }
        let schedule = match self.schedule {
            LrSchedule::Constant => None,
            LrSchedule::Step { .. } => Some("step"),
            LrSchedule::Exponential { .. } => Some("exponential"),
            LrSchedule::Cosine { .. } => Some("cosine"),
            LrSchedule::ReduceOnPlateau { .. } => Some("reduce_on_plateau"),
        };
        if let Some(s) = schedule {
            args.push(format!("schedule = {s}"));
        }
        if self.warmup > 0 {
            args.push(format!("warmup = {}", self.warmup));
        }
        if let Some(c) = self.clip_norm {
            args.push(format!("clip_norm = {c}"));
        }
        format!("{name}({})", args.join(", "))
    }

    /// Whether the rate changes during training (it is then fed to each
    /// step instead of compiled in).
    pub fn varies(&self) -> bool {
        self.schedule != LrSchedule::Constant || self.warmup > 0
    }

    /// The rate at epoch `epoch` and global step `step` (both from 0),
    /// with `plateau` the factor a plateau schedule has reached.
    pub fn rate(&self, epoch: u64, step: u64, plateau: f32) -> f32 {
        let (lr, e) = (f64::from(self.lr), epoch as f64);
        let scheduled = match self.schedule {
            LrSchedule::Constant => lr,
            LrSchedule::Step { every, gamma } => {
                lr * f64::from(gamma).powi((epoch / every.max(1)) as i32)
            }
            LrSchedule::Exponential { gamma } => lr * f64::from(gamma).powf(e),
            LrSchedule::Cosine { epochs, min_lr } => {
                let m = f64::from(min_lr);
                let t = e.min(epochs as f64) / epochs.max(1) as f64;
                m + (lr - m) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
            LrSchedule::ReduceOnPlateau { .. } => lr * f64::from(plateau),
        };
        let warm = match self.warmup {
            0 => 1.0,
            w => ((step + 1) as f64 / w as f64).min(1.0),
        };
        (scheduled * warm) as f32
    }
}
