//! How `nnc run` prints its outputs: text for people, JSON for programs.

use crate::tensor::{format_f32, format_tensor, Tensor};
use serde_json::{json, Map, Value};

/// `name = 0.5` for scalars, `name: f32[2, 3] = [[…]]` for tensors.
pub fn text(outputs: &[(String, Tensor)]) -> String {
    let mut out = String::new();
    for (name, t) in outputs {
        if t.shape.is_empty() {
            out.push_str(&format!("{name} = {}\n", format_f32(t.data[0])));
        } else {
            let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            let body = format_tensor(t, 6);
            // Continuation lines line up under the opening bracket.
            let head = format!("{name}: f32[{}] = ", dims.join(", "));
            let body = body.replace('\n', &format!("\n{}", " ".repeat(head.len())));
            out.push_str(&format!("{head}{body}\n"));
        }
    }
    out
}

/// `{"outputs": {"NAME": {"shape": [...], "data": [...]}, ...}}`, in
/// declaration order. A non-finite value prints as `null` (JSON has no NaN).
pub fn json(outputs: &[(String, Tensor)]) -> String {
    let mut map = Map::new();
    for (name, t) in outputs {
        map.insert(name.clone(), tensor_json(t));
    }
    json!({ "outputs": map }).to_string()
}

/// `{"loss": L, "grads": {"PARAM": {"shape": [...], "data": [...]}, ...}}`.
pub fn grad_json(loss: f32, grads: &[(String, Tensor)]) -> String {
    let mut map = Map::new();
    for (name, t) in grads {
        map.insert(name.clone(), tensor_json(t));
    }
    json!({ "loss": json_number(loss), "grads": map }).to_string()
}

/// A JSON number for an f32 (its shortest decimal), `null` when not finite.
pub fn json_number(v: f32) -> Value {
    serde_json::Number::from_f64(f64::from(v))
        .map_or(Value::Null, |n| Value::Number(shortest(v, n)))
}

fn tensor_json(t: &Tensor) -> Value {
    let data: Vec<Value> = t.data.iter().map(|&v| json_number(v)).collect();
    json!({ "shape": t.shape, "data": data })
}

/// The f32's own shortest decimal (`0.1`, not `0.10000000149011612`).
fn shortest(v: f32, fallback: serde_json::Number) -> serde_json::Number {
    format_f32(v)
        .parse::<serde_json::Number>()
        .unwrap_or(fallback)
}
