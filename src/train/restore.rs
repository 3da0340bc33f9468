//! Weights and checkpoints into a graph's parameter table, by name: a
//! parameter the file lacks, or holds with another shape, is one
//! diagnostic at the parameters' declarations that names the file.

use super::{checkpoint, Position};
use crate::diag::{self, code, Diag};
use crate::ir::{Graph, ParamId, Role};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use std::collections::HashMap;
use std::path::Path;

/// Loads parameters (and, from a checkpoint, optimizer state) by name;
/// returns where the checkpoint was taken (`None` for plain weights).
/// A parameter the file lacks, or holds with another shape, is an error
/// at its declaration.
pub fn restore(
    g: &Graph,
    params: &mut SecondaryMap<ParamId, Tensor>,
    path: &Path,
) -> Result<Option<Position>, Diag> {
    let (tensors, meta) = checkpoint::load(path).map_err(|e| {
        let help = match e {
            checkpoint::CheckpointError::Read { .. } => "help: check the path",
            _ => "help: weights and checkpoints are safetensors files written by `nnc train --save`; this one may be truncated or of another kind",
        };
        diag::error(code::FILE, e.to_string()).with_notes(vec![help.into()])
    })?;
    // Plain weights carry no optimizer state: a fresh one starts.
    let wrong: Vec<(ParamId, Option<&Tensor>)> = g
        .params
        .iter()
        .filter_map(|(id, p)| match tensors.get(&p.name) {
            Some(t) if t.shape == params[id].shape => None,
            None if p.role == Role::State && !meta.contains_key("epoch") => None,
            found => Some((id, found)),
        })
        .collect();
    if !wrong.is_empty() {
        return Err(not_this_model(g, params, path, &tensors, &wrong));
    }
    for (id, p) in g.params.iter() {
        if let Some(t) = tensors.get(&p.name) {
            params[id] = t.clone();
        }
    }
    Position::read(&meta, path)
}

/// The parameters of `g` that the file at `path` lacks or holds with
/// another shape (`wrong`, at least one, each with the file's tensor if
/// any), as one diagnostic at the first one's declaration.
fn not_this_model(
    g: &Graph,
    params: &SecondaryMap<ParamId, Tensor>,
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    wrong: &[(ParamId, Option<&Tensor>)],
) -> Diag {
    let file = path.display();
    let label = |id: ParamId, found: Option<&Tensor>| match found {
        Some(t) => format!("{:?} here, {:?} in `{file}`", params[id].shape, t.shape),
        None => format!("not in `{file}`"),
    };
    let (first, found) = wrong[0];
    let name = &g.params[first].name;
    let message = match found {
        Some(t) => format!(
            "`{name}` has shape {:?} in `{file}`, but the model declares {:?}",
            t.shape, params[first].shape
        ),
        None => format!("`{file}` has no tensor `{name}`"),
    };
    // The others, once per declaration (an optimizer's states share
    // its span).
    let mut spans = vec![g.params[first].span];
    let mut labels = vec![g.params[first].span.primary(label(first, found))];
    for &(id, found) in &wrong[1..] {
        let span = g.params[id].span;
        if labels.len() < 6 && !spans.contains(&span) {
            spans.push(span);
            labels.push(span.secondary(label(id, found)));
        }
    }
    let mut notes = Vec::new();
    let mut trainable = g.params.values().filter(|p| p.role == Role::Trainable);
    if trainable.clone().next().is_some() && trainable.all(|p| !tensors.contains_key(&p.name)) {
        let mut held: Vec<&str> = tensors.keys().map(String::as_str).collect();
        held.sort_unstable();
        let shown: Vec<String> = held.iter().take(4).map(|n| format!("`{n}`")).collect();
        notes.push(match held.len() - shown.len() {
            _ if shown.is_empty() => format!("note: `{file}` holds no tensors"),
            0 => format!(
                "note: `{file}` holds none of this model's parameters, only {}",
                shown.join(", ")
            ),
            more => format!(
                "note: `{file}` holds none of this model's parameters, but {} and {more} more",
                shown.join(", ")
            ),
        });
    } else if wrong.len() > 1 {
        notes.push(format!(
            "note: {} of the model's {} parameters and optimizer states are missing from `{file}` or of another shape",
            wrong.len(),
            g.params.len()
        ));
    }
    notes.push(
        if wrong.iter().all(|(id, _)| g.params[*id].role == Role::State) {
            "help: this is the state of another optimizer, or of a model with other parameters: resume with the `optimizer` it was trained with"
        } else {
            "help: give weights saved from this model (`nnc train FILE --save W.safetensors`)"
        }
        .into(),
    );
    diag::error(code::INPUT, message)
        .with_labels(labels)
        .with_notes(notes)
}
