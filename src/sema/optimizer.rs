//! An optimizer as a `train` block describes it: which rule and its
//! hyper-parameters. Data only; the update it makes a training step do
//! is built by the optimizer pass (`passes::optimizer`).

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
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

/// A rule with its learning rate and weight decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Optimizer {
    pub kind: Kind,
    pub lr: f32,
    pub weight_decay: f32,
}
