//! ONNX's `Scan` as the language's `scan`, and `ScatterND` (with
//! `reduction = "add"`) as `scatter_add`: the two operators `nnc export`
//! writes for loops and graph networks, so that its models come back.
//!
//! A `Scan` translates when it has the form of nnc's `scan`: one state
//! variable, whose value after each step is the one scan output (the
//! body outputs the same value twice), and every scan input and output
//! running along axis 0 in one direction. Its body becomes a function of
//! the `.nn` file — the state first, then one step of each scan input,
//! as `scan` passes them — written where the node is, so the body reads
//! the values and parameters of the graph around it by name, as ONNX
//! subgraphs read their enclosing scope. A reverse scan keeps its step t
//! at index t in both languages.

use super::values::*;
use super::{node_error, pb, Translator};
use crate::diag::Diag;
use std::collections::HashSet;

impl Translator {
    pub(super) fn scan(
        &mut self,
        n: &pb::NodeProto,
        args: &[Option<Value>],
        opset: i64,
    ) -> Result<(), Diag> {
        let err = |m: String| node_error(n, m);
        let attrs = Attrs(&n.attribute);
        if opset < 9 {
            return Err(err(
                "a Scan of opset 8 (batched, with sequence lengths) has no counterpart in nnc"
                    .into(),
            ));
        }
        let body = attrs
            .get("body")
            .and_then(|a| a.g.as_ref())
            .ok_or_else(|| err("it has no body graph".into()))?;
        let m = attrs.int("num_scan_inputs", 0).max(0) as usize;
        let states = args.len().saturating_sub(m);
        if states != 1 || m == 0 {
            return Err(err(format!(
                "{states} state variables and {m} scan inputs: nnc's scan carries one state over at least one sequence"
            )));
        }
        if body.input.len() != 1 + m || body.output.len() != 2 {
            return Err(err(format!(
                "its body takes {} inputs and gives {} outputs: nnc's scan gives the state after each step, so it takes {} and gives 2",
                body.input.len(),
                body.output.len(),
                1 + m
            )));
        }
        let out_name = |k: usize| body.output[k].name.clone().unwrap_or_default();
        if source_of(body, &out_name(0)) != source_of(body, &out_name(1)) {
            return Err(err(
                "its scan output is not its state after each step, the one output of nnc's scan"
                    .into(),
            ));
        }
        let uniform = |name: &str, len: usize| -> Result<i64, Diag> {
            let v = attrs.ints(name).unwrap_or_else(|| vec![0; len]);
            match v.first() {
                Some(&d) if v.len() == len && v.iter().all(|&x| x == d) => Ok(d),
                _ => Err(err(format!(
                    "its {name} differ: nnc's scan runs every sequence one way"
                ))),
            }
        };
        let reverse = uniform("scan_input_directions", m)? == 1;
        if (uniform("scan_output_directions", 1)? == 1) != reverse {
            return Err(err(
                "its output runs the other way from its inputs: nnc's scan keeps step t at index t"
                    .into(),
            ));
        }
        if uniform("scan_input_axes", m)? != 0 || uniform("scan_output_axes", 1)? != 0 {
            return Err(err(
                "it scans along an axis other than 0, the one nnc's scan runs along".into(),
            ));
        }
        let value = |k: usize| {
            args[k]
                .clone()
                .ok_or_else(|| err(format!("input {k} is missing")))
        };
        let init = value(0)?;
        let carry = init.shape();
        let xs: Vec<Value> = (1..=m).map(value).collect::<Result<_, _>>()?;
        if xs.iter().any(|x| x.shape().is_empty()) {
            return Err(err("a scan input is a scalar, with no steps".into()));
        }
        let steps = xs[0].shape()[0].clone();
        let init_e = self.operand(&init, &n.input[0]);
        let xs_e: Vec<String> = xs
            .iter()
            .zip(&n.input[1..])
            .map(|(v, raw)| self.operand(v, raw))
            .collect();

        // The body, translated in a scope of its own: its lets, its
        // readers' counts, its absorbed nodes; the values around it stay
        // readable.
        let out = n.output.get(1).cloned().unwrap_or_default();
        let f = self.fresh(&format!("{out}_step"));
        // What the body binds is its own: the values around it come back
        // after it (a body value may reuse an outer value's name).
        let outer_values = self.values.clone();
        let mut sig = Vec::new();
        for (k, input) in body.input.iter().enumerate() {
            let shape: Shape = match k {
                0 => carry.clone(),
                _ => xs[k - 1].shape()[1..].to_vec(),
            };
            let raw = input.name.clone().unwrap_or_default();
            let id = self.fresh(&raw);
            sig.push(format!("{id}: {}", shape_text(&shape)));
            self.values.insert(raw, Value::Named { name: id, shape });
        }
        self.add_initializers(body);
        let outer_lets = std::mem::take(&mut self.lets);
        let outer_readers = std::mem::replace(&mut self.readers, super::readers(body));
        let outer_absorbed = std::mem::take(&mut self.absorbed);
        let result = (|| {
            for (i, bn) in body.node.iter().enumerate() {
                if !self.absorbed.contains(&i) {
                    self.node(body, i, bn, opset)?;
                }
            }
            let v = self
                .value(&out_name(0))
                .map_err(|e| err(format!("its body's output: {e}")))?;
            Ok(self.operand(&v, &out_name(0)))
        })();
        let lets = std::mem::replace(&mut self.lets, outer_lets);
        self.readers = outer_readers;
        self.absorbed = outer_absorbed;
        self.values = outer_values;
        let result = result?;

        let mut text = format!("fn {f}({}) -> {} {{\n", sig.join(", "), shape_text(&carry));
        for l in &lets {
            text.push_str(&format!("  {l}\n"));
        }
        text.push_str(&format!("  {result}\n}}"));
        self.lets.push(text);
        let mut stacked = vec![steps];
        stacked.extend(carry.iter().cloned());
        let rev = if reverse { ", reverse = true" } else { "" };
        let call = format!("scan({f}, {init_e}, {}{rev})", xs_e.join(", "));
        let all = if out.is_empty() {
            format!("{f}_states")
        } else {
            out.clone()
        };
        self.bind(&all, call, stacked);
        // The final state: the last step's, at index 0 for a reverse scan.
        let last = n.output.first().cloned().unwrap_or_default();
        if !last.is_empty() && self.readers.get(&last).copied().unwrap_or(0) > 0 {
            let v = self.value(&all).map_err(err)?;
            let s = self.operand(&v, &all);
            let e = if reverse {
                format!(
                    "reshape(slice({s}, axis = 0, start = 0, end = 1), {})",
                    shape_text(&carry)
                )
            } else {
                format!("last({s})")
            };
            self.bind(&last, e, carry);
        }
        Ok(())
    }

    /// `ScatterND` with `reduction = "add"` and one index per update row
    /// (`indices [E, 1]`, `updates [E, ..D]`, `data [V, ..D]`): `data`
    /// plus `scatter_add(updates, indices, n = V)` (only the sum when
    /// `data` is known to be zeros).
    pub(super) fn scatter_nd(
        &mut self,
        n: &pb::NodeProto,
        out: &str,
        data: Value,
        idx: Value,
        updates: Value,
    ) -> Result<(), Diag> {
        let err = |m: String| node_error(n, m);
        let attrs = Attrs(&n.attribute);
        let reduction = attrs.string("reduction").unwrap_or_else(|| "none".into());
        if reduction != "add" {
            return Err(err(format!(
                "a ScatterND with reduction `{reduction}`: nnc sums rows into place (`scatter_add`, reduction `add`) only"
            )));
        }
        let (ds, is, us) = (data.shape(), idx.shape(), updates.shape());
        let rows = match (&is[..], ds.first()) {
            ([e, Dim::N(1)], Some(Dim::N(v))) if us.first() == Some(e) && us[1..] == ds[1..] => {
                (e.clone(), *v)
            }
            _ => {
                return Err(err(format!(
                    "indices {}, updates {} and data {}: nnc's scatter_add takes one row index per update row ([E, 1], [E, ..D] into [V, ..D], V a number)",
                    shape_text(&is),
                    shape_text(&us),
                    shape_text(&ds)
                )))
            }
        };
        let (e, v) = rows;
        let ix = self.operand(&idx, &n.input[1]);
        let up = self.operand(&updates, &n.input[2]);
        let sum = format!(
            "scatter_add({up}, reshape({ix}, {}), n = {v})",
            shape_text(&[e])
        );
        let zeros = matches!(&data, Value::Floats { data, .. } if data.iter().all(|&x| x == 0.0));
        let expr = if zeros {
            sum
        } else {
            format!("{} + {sum}", self.operand(&data, &n.input[0]))
        };
        self.bind(out, expr, ds);
        Ok(())
    }
}

/// The value `name` is a copy of, through the body's `Identity` nodes.
fn source_of(body: &pb::GraphProto, name: &str) -> String {
    let mut name = name.to_string();
    let mut seen = HashSet::new();
    while seen.insert(name.clone()) {
        let Some(n) = body.node.iter().find(|n| n.output.first() == Some(&name)) else {
            break;
        };
        match (n.op_type.as_deref(), n.input.first()) {
            (Some("Identity"), Some(i)) => name = i.clone(),
            _ => break,
        }
    }
    name
}
