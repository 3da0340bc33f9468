//! How `nnc summary` prints: a table for people, JSON for programs.

use super::{Memory, Summary};
use crate::exec::memory::human;
use serde_json::{json, Value};

/// The counting rule, as the text's footer states it.
const FLOPS_RULE: &str = "\
FLOPs: a multiply-add counts 2 (a matmul 2·m·k·n, a convolution
2·N·O·OH·OW·C·KH·KW), an elementwise op 1 per element, a reduction 1 per
element read, a pooling k² per output; data movement and random draws 0.";

/// The table, the totals and the training step.
pub fn text(s: &Summary) -> String {
    let mut out = format!("{}: {}\n\n", s.file, sizes_line(s));
    let headings: Vec<String> = s.layers.iter().map(heading).collect();
    let label_w = s
        .layers
        .iter()
        .map(|l| l.label.chars().count() + 2)
        .chain(headings.iter().map(|h| h.chars().count()))
        .chain(["Layer".len()])
        .max()
        .unwrap_or(5);
    let cells: Vec<[String; 4]> = s
        .layers
        .iter()
        .map(|l| {
            let shape = match l.outputs {
                0 | 1 => l.shape.clone(),
                n => format!("{} and {} more", l.shape, n - 1),
            };
            [
                shape,
                grouped(l.param_elements),
                grouped(l.flops),
                human(l.activation_bytes),
            ]
        })
        .collect();
    let titles = ["Output shape", "Params", "FLOPs", "Activations"];
    let mut widths = titles.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let total_w = label_w + widths.iter().map(|w| w + 2).sum::<usize>();
    let rule = "=".repeat(total_w);
    out += &format!(
        "{:<label_w$}  {:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}\n{rule}\n",
        "Layer",
        titles[0],
        titles[1],
        titles[2],
        titles[3],
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2],
        w3 = widths[3],
    );
    let mut last_heading = None;
    for ((l, c), h) in s.layers.iter().zip(&cells).zip(&headings) {
        if last_heading != Some(h) {
            out += &format!("{h}\n");
            last_heading = Some(h);
        }
        let label = format!("  {}", l.label);
        out += &format!(
            "{label}{pad}  {:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            pad = " ".repeat(label_w - label.chars().count()),
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
    }
    if s.layers.is_empty() {
        out += "(nothing is computed: no output, loss or predict)\n";
    }
    out += &format!("{rule}\n");
    let unread: Vec<&str> = s
        .params
        .iter()
        .filter(|p| p.layer.is_none())
        .map(|p| p.name.as_str())
        .collect();
    let total = s.param_elements();
    let trainable = s.trainable_elements();
    let kinds = if total == 0 {
        String::new()
    } else if total == trainable {
        "all trainable".to_string()
    } else {
        format!(
            "{} trainable, {} state (not trained)",
            grouped(trainable),
            grouped(total - trainable)
        )
    };
    out += &match total {
        0 => "Parameters:   none\n".to_string(),
        _ => format!(
            "Parameters:   {} ({}), {kinds}\n",
            grouped(total),
            human(total * 4)
        ),
    };
    if !unread.is_empty() {
        out += &format!(
            "              of which read by no row above: {}\n",
            unread.join(", ")
        );
    }
    let per = if per_example(s) { " per example" } else { "" };
    out += &format!("FLOPs:        {}{per}\n", grouped(s.flops()));
    out += &format!(
        "Activations:  {}{per} (the values each row hands on, f32)\n",
        human(s.activation_bytes())
    );
    if !s.outputs_left_out.is_empty() {
        out += &format!(
            "Not in the table: the outputs `nnc run` prints ({}); the table is the training's forward pass.\n",
            s.outputs_left_out.join(", ")
        );
    }
    out += &format!("\n{FLOPS_RULE}\n");
    if let Some(t) = &s.train {
        for ph in &t.phases {
            out += &step_text(t, ph);
        }
    }
    out
}

/// The sizes the table is for.
fn sizes_line(s: &Summary) -> String {
    if s.sizes.is_empty() {
        return "no symbolic dimensions".into();
    }
    let bound: Vec<String> = s
        .sizes
        .iter()
        .map(|(n, v, _)| format!("{n} = {v}"))
        .collect();
    let defaulted: Vec<&str> = s
        .sizes
        .iter()
        .filter(|(_, _, given)| !given)
        .map(|(n, _, _)| n.as_str())
        .collect();
    if defaulted.is_empty() {
        bound.join(", ")
    } else {
        format!(
            "{}, per example (`--dim {}=SIZE` sets {})",
            bound.join(", "),
            defaulted[0],
            if defaulted.len() == 1 {
                "it"
            } else {
                "the others likewise"
            }
        )
    }
}

/// Whether some dimension counts as 1 for want of `--dim`.
fn per_example(s: &Summary) -> bool {
    s.sizes.iter().any(|(_, _, given)| !given)
}

/// The heading a row is listed under: its statement's place, and which
/// call it is when the statement runs more than once.
fn heading(l: &super::Layer) -> String {
    let place = if l.context.is_empty() {
        "top level".to_string()
    } else {
        l.context.clone()
    };
    if l.runs > 1 {
        format!("{place} (call {} of {})", l.run, l.runs)
    } else {
        place
    }
}

fn step_text(t: &super::TrainStep, ph: &super::PhaseStep) -> String {
    let phase = if ph.name.is_empty() {
        String::new()
    } else {
        format!(", phase {}", ph.name)
    };
    // The sizes other than the batch's (`--dim`, inputs' values).
    let sizes: String = t
        .sizes
        .iter()
        .filter(|(_, v)| *v != t.batch)
        .map(|(n, v)| format!(", {n} = {v}"))
        .collect();
    let mut out = format!(
        "\nTraining step{phase} at batch {}{sizes} ({}): {} FLOPs\n",
        t.batch,
        ph.optimizer,
        grouped(ph.flops)
    );
    match &ph.memory {
        Memory::Planned(parts) => {
            out += "Memory its compiled program plans:\n";
            let name_w = parts.iter().map(|(p, _)| p.name().len()).max().unwrap_or(0);
            let amounts: Vec<String> = parts.iter().map(|(_, b)| human(*b)).collect();
            let total = human(ph.memory.total());
            let amount_w = amounts
                .iter()
                .map(String::len)
                .chain([total.len()])
                .max()
                .unwrap_or(0);
            for ((p, _), a) in parts.iter().zip(&amounts) {
                let note = match p.note() {
                    "" => String::new(),
                    n => format!("  {n}"),
                };
                out += &format!("  {:<name_w$}  {a:>amount_w$}{note}\n", p.name());
            }
            out += &format!("  {:<name_w$}  {total:>amount_w$}\n", "total");
        }
        Memory::OverBudget {
            needed,
            limit,
            from,
        } => {
            out += &format!(
                "Memory its compiled program plans: {}, more than {} ({from}): `nnc train` would stop before its first step\n",
                human(*needed),
                human(*limit)
            );
        }
    }
    out
}

/// A whole number with its thousands separated by commas.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The summary as one JSON object.
pub fn json(s: &Summary) -> String {
    let sizes: serde_json::Map<String, Value> = s
        .sizes
        .iter()
        .map(|(n, v, _)| (n.clone(), json!(v)))
        .collect();
    let layers: Vec<Value> = s
        .layers
        .iter()
        .map(|l| {
            json!({
                "context": l.context,
                "statement": l.label,
                "line": l.line,
                "call": l.run,
                "calls": l.runs,
                "output_shape": l.shape,
                "outputs": l.outputs,
                "params": l.params,
                "param_elements": l.param_elements,
                "flops": l.flops,
                "activation_bytes": l.activation_bytes,
            })
        })
        .collect();
    let params: Vec<Value> = s
        .params
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "shape": p.shape,
                "elements": p.elements,
                "trainable": p.trainable,
                "layer": p.layer,
            })
        })
        .collect();
    let train = s.train.as_ref().map(|t| {
        let phases: Vec<Value> = t
            .phases
            .iter()
            .map(|ph| {
                let memory = match &ph.memory {
                    Memory::Planned(parts) => {
                        let bytes: serde_json::Map<String, Value> = parts
                            .iter()
                            .map(|(p, b)| (p.name().replace(' ', "_"), json!(b)))
                            .collect();
                        json!({ "bytes": bytes, "total_bytes": ph.memory.total() })
                    }
                    Memory::OverBudget {
                        needed,
                        limit,
                        from,
                    } => json!({
                        "total_bytes": needed,
                        "over_budget": { "limit_bytes": limit, "limit_from": from },
                    }),
                };
                json!({
                    "phase": ph.name,
                    "optimizer": ph.optimizer,
                    "flops": ph.flops,
                    "memory": memory,
                })
            })
            .collect();
        let sizes: serde_json::Map<String, Value> =
            t.sizes.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
        json!({ "batch": t.batch, "sizes": sizes, "phases": phases })
    });
    json!({
        "file": s.file,
        "sizes": sizes,
        "per_example": per_example(s),
        "layers": layers,
        "params": params,
        "outputs_left_out": s.outputs_left_out,
        "totals": {
            "params": s.param_elements(),
            "trainable_params": s.trainable_elements(),
            "param_bytes": s.param_elements() * 4,
            "flops": s.flops(),
            "activation_bytes": s.activation_bytes(),
        },
        "train": train,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        assert_eq!(super::grouped(0), "0");
        assert_eq!(super::grouped(999), "999");
        assert_eq!(super::grouped(1000), "1,000");
        assert_eq!(super::grouped(1234567), "1,234,567");
    }
}
