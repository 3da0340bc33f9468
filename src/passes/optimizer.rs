//! Optimizers compiled into the training step (being written).
