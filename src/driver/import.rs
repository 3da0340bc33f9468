//! `nnc import model.onnx -o model.nn`: an ONNX model as a `.nn` file and
//! its weights as a safetensors file ([`crate::onnx::import`]).

use super::args::ImportArgs;
use super::outcome::Outcome;
use crate::diag::{self, code, Diagnostics, SourceMap};
use crate::pipeline::{self, Stage};
use std::path::{Path, PathBuf};

pub fn command(args: &ImportArgs) -> Result<Outcome, Outcome> {
    let fail = Outcome::failed;
    let weights = args
        .params_out
        .clone()
        .unwrap_or_else(|| args.output.with_extension("safetensors"));
    let shown = args.model.display().to_string();
    for out in [&args.output, &weights] {
        if same_file(out, &args.model) {
            return Err(fail(
                diag::error(
                    code::FILE,
                    format!("`{}` would overwrite the model it imports", out.display()),
                )
                .with_notes(vec![
                    "help: give another path with `-o` or `--params-out`".into(),
                ]),
            ));
        }
    }
    let bytes = std::fs::read(&args.model).map_err(|e| {
        fail(
            diag::error(
                code::FILE,
                format!("cannot read `{shown}`: {}", pipeline::io_reason(&e)),
            )
            .with_notes(vec!["help: give the path of an .onnx file".into()]),
        )
    })?;
    let imported = crate::onnx::import::import(&bytes, &shown, &weights.display().to_string())
        .map_err(fail)?;
    // The translation must check as any file does; a failure here is
    // nnc's, not the model's.
    let name = args.output.display().to_string();
    let checked = pipeline::compile(&name, &imported.text, Stage::Ir);
    if checked.diags.has_errors() {
        return Err(fail(
            diag::error(
                code::INTERNAL,
                format!("internal compiler error: the translation of `{shown}` does not check"),
            )
            .with_notes(vec![checked.render(false)]),
        ));
    }
    let tensors: Vec<(String, &crate::tensor::Tensor)> = imported
        .params
        .iter()
        .map(|(n, t)| (n.clone(), t))
        .collect();
    let meta = [("source".to_string(), shown.clone())]
        .into_iter()
        .collect();
    crate::train::checkpoint::save(&weights, &tensors, &meta)
        .map_err(|e| fail(diag::error(code::FILE, e.to_string())))?;
    crate::train::checkpoint::write_atomic(&args.output, imported.text.as_bytes()).map_err(
        |e| {
            fail(diag::error(
                code::FILE,
                format!("cannot write `{name}`: {}", pipeline::io_reason(&e)),
            ))
        },
    )?;
    let lets = imported
        .text
        .lines()
        .filter(|l| l.starts_with("let "))
        .count();
    Ok(Outcome {
        stdout: format!(
            "wrote {name} ({lets} lets) and {} ({} parameters)\nrun it: nnc run {name} --params {} --input NAME=FILE\n",
            weights.display(),
            imported.params.len(),
            weights.display()
        ),
        sources: SourceMap::new(),
        diags: Diagnostics::new(),
    })
}

/// Whether two paths name one existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> Option<PathBuf> { std::fs::canonicalize(p).ok() };
    matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}
