//! The interpreter's loop: runs a scan's body once per step.

use super::{run, Error, Feed};
use crate::ir::{Graph, InputId};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;

/// Runs `body` over the leading axis of `xs` from `init`; returns every
/// step's carry, stacked (step t at index t, whatever the direction).
pub fn run_scan(
    body: &Graph,
    init: &Tensor,
    xs: &[&Tensor],
    args: &[&Tensor],
    reverse: bool,
    out_shape: &[usize],
) -> Result<Tensor, Error> {
    let steps = xs
        .first()
        .map_or(0, |x| x.shape.first().copied().unwrap_or(0));
    let step_len: Vec<usize> = xs.iter().map(|x| x.shape[1..].iter().product()).collect();
    let carry_len = init.len();
    let ids: Vec<InputId> = body.inputs.keys().collect();
    let params = SecondaryMap::new();
    let mut out = vec![0.0f32; steps * carry_len];
    let mut carry = init.clone();
    let order: Box<dyn Iterator<Item = usize>> = if reverse {
        Box::new((0..steps).rev())
    } else {
        Box::new(0..steps)
    };
    for t in order {
        let mut inputs: SecondaryMap<InputId, Option<Tensor>> = SecondaryMap::new();
        inputs[ids[0]] = Some(carry);
        for (j, x) in xs.iter().enumerate() {
            let n = step_len[j];
            inputs[ids[1 + j]] = Some(Tensor::new(
                x.shape[1..].to_vec(),
                x.data[t * n..(t + 1) * n].to_vec(),
            ));
        }
        for (k, a) in args.iter().enumerate() {
            inputs[ids[1 + xs.len() + k]] = Some((*a).clone());
        }
        let mut outs = run(
            body,
            &Feed {
                params: &params,
                inputs: &inputs,
            },
        )?;
        // The typing rule gives the body exactly one output.
        carry = outs.pop().expect("a scan body has one output");
        out[t * carry_len..(t + 1) * carry_len].copy_from_slice(&carry.data);
    }
    Ok(Tensor::new(out_shape.to_vec(), out))
}
