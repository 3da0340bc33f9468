//! `LSTM` and `GRU` as the standard library's `lstm` and `gru`, with the
//! packed ONNX weights rearranged into nnc's layouts.

use super::values::*;
use super::{node_error, pb, Layout, Origin, Translator};
use crate::diag::Diag;
use crate::tensor::Tensor;

impl Translator {
    /// `LSTM` and `GRU` (forward, one layer, default activations) as the
    /// stdlib's `lstm` and `gru` over the sequence.
    pub(super) fn recurrent(
        &mut self,
        n: &pb::NodeProto,
        attrs: &Attrs,
        args: &[Option<Value>],
    ) -> Result<(), Diag> {
        let op = n.op_type.clone().unwrap_or_default();
        let lstm = op == "LSTM";
        let err = |m: String| node_error(n, m);
        let dir = attrs
            .string("direction")
            .unwrap_or_else(|| "forward".into());
        if dir != "forward" {
            return Err(err(format!(
                "direction `{dir}` (nnc translates forward recurrences)"
            )));
        }
        if attrs.get("activations").is_some()
            || attrs.get("clip").is_some()
            || attrs.int("layout", 0) != 0
            || attrs.int("input_forget", 0) != 0
        {
            return Err(err(
                "activations, clip, layout or input_forget other than the defaults".into(),
            ));
        }
        if !lstm && attrs.int("linear_before_reset", 0) != 1 {
            return Err(err("a GRU with linear_before_reset = 0 (nnc's gru_cell is PyTorch's, linear_before_reset = 1)".into()));
        }
        if args.get(4).cloned().flatten().is_some() {
            return Err(err("sequence_lens (sequences of different lengths)".into()));
        }
        let x = args[0].clone().ok_or_else(|| err("no input".into()))?;
        let xs = x.shape();
        if xs.len() != 3 {
            return Err(err("an input that is not [T, B, I]".into()));
        }
        let gates = if lstm { 4 } else { 3 };
        let weight = |k: usize| -> Result<(String, Vec<usize>, Vec<f64>), Diag> {
            let name = n
                .input
                .get(k)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| err(format!("input {k} is missing")))?;
            let init = self
                .inits
                .get(name)
                .ok_or_else(|| err(format!("`{name}` is not an initializer")))?;
            let (s, v) = tensor_values(init).map_err(|e| err(format!("`{name}`: {e}")))?;
            Ok((name.clone(), s, v))
        };
        let (wn, ws, wv) = weight(1)?;
        let (rn, rs, rv) = weight(2)?;
        let h = rs
            .get(2)
            .copied()
            .ok_or_else(|| err("R is not [1, G·H, H]".into()))?;
        let i = ws
            .get(2)
            .copied()
            .ok_or_else(|| err("W is not [1, G·H, I]".into()))?;
        if ws[..2] != [1, gates * h] || rs[..2] != [1, gates * h] {
            return Err(err(format!(
                "W {ws:?} and R {rs:?} for {gates} gates of hidden size {h}"
            )));
        }
        // nnc's gate k is ONNX's gate order[k].
        let order: &[usize] = if lstm { &[0, 2, 3, 1] } else { &[1, 0, 2] };
        // [G·H, cols] rows of gate `src` transposed into [cols, H].
        let per_gate = |vals: &[f64], cols: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(gates * cols * h);
            for &src in order {
                for c in 0..cols {
                    for r in 0..h {
                        out.push(vals[(src * h + r) * cols + c] as f32);
                    }
                }
            }
            out
        };
        let wx = per_gate(&wv, i);
        let wh = per_gate(&rv, h);
        let (bx, bh) = match n.input.get(3).filter(|s| !s.is_empty()) {
            Some(_) => {
                let (_, bs, bv) = weight(3)?;
                let bv = &bv;
                if bs != [1, 2 * gates * h] {
                    return Err(err(format!("B is {bs:?}, not [1, {}]", 2 * gates * h)));
                }
                let pick = |off: usize| -> Vec<f32> {
                    order
                        .iter()
                        .flat_map(|&src| (0..h).map(move |r| bv[off + src * h + r] as f32))
                        .collect()
                };
                (pick(0), pick(gates * h))
            }
            None => (vec![0.0; gates * h], vec![0.0; gates * h]),
        };
        let node = identifier(
            n.name
                .as_deref()
                .unwrap_or(if lstm { "lstm" } else { "gru" }),
        );
        let wxp = self.param_derived(&format!("{node}.wx"), &wn, vec![gates, i, h], wx);
        let whp = self.param_derived(&format!("{node}.wh"), &rn, vec![gates, h, h], wh);
        let bname = n.input.get(3).cloned().unwrap_or_default();
        let (t, b) = (xs[0].clone(), xs[1].clone());
        let init_state = |k: usize, this: &mut Self| -> Result<String, Diag> {
            match args.get(k).cloned().flatten() {
                None => Ok(format!(
                    "zeros({})",
                    shape_text(&[b.clone(), Dim::N(h as i64)])
                )),
                Some(v) => {
                    if let Value::Floats { data, .. } = &v {
                        if data.iter().all(|&z| z == 0.0) {
                            return Ok(format!(
                                "zeros({})",
                                shape_text(&[b.clone(), Dim::N(h as i64)])
                            ));
                        }
                    }
                    let e = this.operand(&v, &n.input[k]);
                    Ok(format!(
                        "reshape({e}, {})",
                        shape_text(&[b.clone(), Dim::N(h as i64)])
                    ))
                }
            }
        };
        let xe = self.operand(&x, &n.input[0]);
        let h0 = init_state(5, self)?;
        let seq = if lstm {
            let bsum: Vec<f32> = bx.iter().zip(&bh).map(|(a, c)| a + c).collect();
            let bp = self.param_derived(&format!("{node}.b"), &bname, vec![gates, h], bsum);
            let c0 = init_state(6, self)?;
            format!("lstm({xe}, lstm_state({h0}, {c0}), {wxp}, {whp}, {bp})")
        } else {
            let bxp = self.param_derived(&format!("{node}.bx"), &bname, vec![gates, h], bx);
            let bhp = self.param_derived(&format!("{node}.bh"), &bname, vec![gates, h], bh);
            format!("gru({xe}, {h0}, {wxp}, {whp}, {bxp}, {bhp})")
        };
        let states = self.fresh(&format!("{node}_states"));
        self.lets.push(format!("let {states} = {seq}"));
        let hd = Dim::N(h as i64);
        let (h_all, h_last, c_last) = if lstm {
            (
                format!("lstm_h({states})"),
                format!("lstm_h(last({states}))"),
                Some(format!("lstm_c(last({states}))")),
            )
        } else {
            (states.clone(), format!("last({states})"), None)
        };
        let outs = [
            (0, h_all, vec![t, Dim::N(1), b.clone(), hd.clone()]),
            (1, h_last, vec![Dim::N(1), b.clone(), hd.clone()]),
        ];
        for (k, e, shape) in outs {
            if let Some(o) = n.output.get(k).filter(|o| !o.is_empty()) {
                self.bind(o, format!("reshape({e}, {})", shape_text(&shape)), shape);
            }
        }
        if let (Some(o), Some(e)) = (n.output.get(2).filter(|o| !o.is_empty()), c_last) {
            let shape = vec![Dim::N(1), b, hd];
            self.bind(o, format!("reshape({e}, {})", shape_text(&shape)), shape);
        }
        Ok(())
    }

    fn param_derived(
        &mut self,
        name: &str,
        init: &str,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> String {
        let id = self.fresh(name);
        let dims: Shape = shape.iter().map(|&d| Dim::N(d as i64)).collect();
        self.decls.push(format!(
            "param {id}: {} = zeros()  // from {init}, rearranged",
            shape_text(&dims)
        ));
        self.params.push((id.clone(), Tensor::new(shape, data)));
        self.origins.push(Origin {
            param: id.clone(),
            initializer: init.to_string(),
            layout: Layout::Derived,
        });
        id
    }
}
