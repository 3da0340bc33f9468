//! Fuzzing harnesses: the functions the cargo-fuzz targets in `fuzz/`
//! call, and that `tests/fuzz_regressions.rs` runs on every input the
//! campaign kept. Each takes arbitrary bytes and must return normally:
//! errors (`Result::Err`, diagnostics) are the expected answer to bad
//! input, while a panic, an abort or a hang is a bug — in the compiler, or
//! in the harness's own assertions about what the compiler must do.
//!
//! - [`parse_check`]: any UTF-8 text through the whole front end.
//! - [`compile_run`]: well-typed programs built from the bytes, compiled,
//!   differentiated and run on both backends.
//! - [`differential`]: the same programs on extreme input values; the JIT
//!   and the interpreter must agree.
//! - [`loaders`]: the dataset and checkpoint loaders on arbitrary files.

use crate::backend::{interp, BackendKind, Engine};
use crate::ir::{Graph, InputId, ParamId};
use crate::pipeline::{self, Stage};
use crate::tensor::Tensor;
use cranelift_entity::SecondaryMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

mod program;
use program::{Bytes, Program};

/// Checks the front end on arbitrary text: `data` (skipped unless it is
/// UTF-8) is compiled to IR and its diagnostics rendered; when it compiles
/// and names a loss, it is differentiated, and when it has a `train` block
/// its step graphs are built. None of this may panic; errors are fine.
pub fn parse_check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let c = pipeline::compile("fuzz.nn", text, Stage::Ir);
    let _ = c.render(false);
    let Some(g) = &c.graph else {
        return;
    };
    if let Ok(loss) = pipeline::find_loss(g, c.train.as_ref()) {
        let _ = pipeline::grad_graph(g, loss);
    }
    if let Some(t) = &c.train {
        let _ = pipeline::train_steps(g, t);
    }
}

/// Checks compilation and execution of well-typed programs: the bytes
/// drive a generator of programs that use the language's tensor ops on
/// shapes of rank 0 to 4 (see [`Program`]). Each program must compile
/// without errors (it is well-typed by construction); it is then run on
/// the JIT and the interpreter and, when it has a loss, differentiated and
/// its gradient graph run on both. A backend may answer `Err`; it may not
/// panic or abort.
pub fn compile_run(data: &[u8]) {
    let mut src = Bytes::new(data);
    let p = Program::generate(&mut src, false);
    let g = p.compile();
    for kind in [BackendKind::Jit, BackendKind::Interp] {
        let mut params = interp::init_params(&g, 0);
        let _ = Engine::new(kind, &g).run(&mut params, &SecondaryMap::new());
    }
    if let Some(loss) = p.loss_node(&g) {
        let Ok(gg) = pipeline::grad_graph(&g, loss) else {
            return;
        };
        for kind in [BackendKind::Jit, BackendKind::Interp] {
            let mut params = interp::init_params(&gg.graph, 0);
            let _ = Engine::new(kind, &gg.graph).run(&mut params, &SecondaryMap::new());
        }
    }
}

/// Checks that the JIT agrees with the interpreter (the reference): a
/// program from the same generator as [`compile_run`] (restricted as
/// described on [`Program::generate`]), its parameters set from the bytes
/// with extreme values among them (±88…89 around `exp`'s overflow, ±1e38,
/// subnormals, signed zeros, −∞ masks before a softmax or a max). Both
/// backends must succeed or both fail; their outputs, and the loss and
/// gradients when there is a loss, must agree as [`agree`] says.
pub fn differential(data: &[u8]) {
    differential_on(data, BackendKind::Jit);
}

/// [`differential`] with `kind` as the backend checked against the
/// interpreter.
pub fn differential_on(data: &[u8], kind: BackendKind) {
    let mut src = Bytes::new(data);
    let p = Program::generate(&mut src, true);
    let g = p.compile();
    let values = p.values(&mut src);
    let loss_scale = compare(&p, &g, &values, "outputs", None, kind);
    if let Some(loss) = p.loss_node(&g) {
        let gg = match pipeline::grad_graph(&g, loss) {
            Ok(gg) => gg,
            Err(e) => panic!(
                "a well-typed loss failed to differentiate: {}\n--- program ---\n{}",
                e.message, p.source
            ),
        };
        // The gradient graph's parameters keep their names.
        compare(&p, &gg.graph, &values, "gradients", Some(loss_scale), kind);
    }
}

/// Checks the loaders on arbitrary files: the first byte picks one (CSV,
/// IDX plain, IDX gzip-compressed, `.npy`, a safetensors checkpoint); the
/// rest becomes the file (two files, split where the next two bytes say,
/// for the loaders that read features and labels apart). Loading may
/// fail; a dataset it returns must be consistent (`[N, F]` features, `N`
/// rows of labels), and checking its class labels must not panic either.
pub fn loaders(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch_dir();
    let split = |rest: &[u8]| -> (Vec<u8>, Vec<u8>) {
        if rest.len() < 2 {
            return (rest.to_vec(), Vec::new());
        }
        let k = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let k = k.min(body.len());
        (body[..k].to_vec(), body[k..].to_vec())
    };
    let scale = [1.0, 1.0 / 255.0, 0.0, -2.5][usize::from(which >> 4) % 4];
    let source = match which % 5 {
        0 => {
            let (label, text) = match rest.split_first() {
                Some((&l, t)) => (l, t),
                None => (0, rest),
            };
            let label: Vec<String> = match label % 6 {
                0 => vec!["label".into()],
                1 => vec!["y".into()],
                2 => vec!["y".into(), "label".into()],
                3 => vec![],
                4 => vec!["y".into(), "y".into()],
                _ => {
                    // The first header cell, whatever it is.
                    let first = text.split(|&b| b == b',' || b == b'\n').next();
                    vec![String::from_utf8_lossy(first.unwrap_or(b"")).into_owned()]
                }
            };
            let path = write(&dir, "data.csv", text);
            crate::data::Source::Csv { path, label, scale }
        }
        1 | 2 => {
            let (mut images, mut labels) = split(rest);
            if which % 5 == 2 {
                images = gzip(&images);
                labels = gzip(&labels);
            }
            crate::data::Source::Idx {
                images: write(&dir, "images.idx", &images),
                labels: write(&dir, "labels.idx", &labels),
                scale,
            }
        }
        3 => {
            let (features, labels) = split(rest);
            crate::data::Source::Npy {
                features: write(&dir, "features.npy", &features),
                labels: write(&dir, "labels.npy", &labels),
                scale,
            }
        }
        _ => {
            let path = write(&dir, "ckpt.safetensors", rest);
            if let Ok((tensors, _meta)) = crate::train::checkpoint::load(&path) {
                for (name, t) in &tensors {
                    let n: usize = t.shape.iter().product();
                    assert_eq!(n, t.data.len(), "tensor `{name}`: shape and data disagree");
                }
            }
            return;
        }
    };
    let Ok(ds) = crate::data::load(&source) else {
        return;
    };
    assert_eq!(ds.features.shape.len(), 2, "features are [N, F]");
    let n: usize = ds.features.shape.iter().product();
    assert_eq!(
        n,
        ds.features.data.len(),
        "features: shape and data disagree"
    );
    assert_eq!(
        ds.features.shape[0] * ds.per_row,
        ds.labels.len(),
        "one row of labels per row of features"
    );
    let _ = ds.rows();
    let classes = usize::from(which >> 3) + 1;
    let _ = crate::data::check_class_labels(&ds, classes, &source);
}

/// A folder of this process's own (the fuzzer may run several processes).
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nnc-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cannot create the fuzzer's scratch folder");
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("cannot write the fuzzer's scratch file");
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// Runs `g` on both backends with `values` for its parameters (the others
/// at their initial values) and checks that they agree. The loss is
/// compared at the scale of its terms: `loss_scale` when given, else
/// taken from `g`'s output `y` ([`Program::loss_scale`]), and returned.
fn compare(
    p: &Program,
    g: &Graph,
    values: &[(String, Tensor)],
    what: &str,
    loss_scale: Option<f64>,
    kind: BackendKind,
) -> f64 {
    let mut params = interp::init_params(g, 0);
    for (id, info) in g.params.iter() {
        if let Some((_, t)) = values.iter().find(|(n, _)| *n == info.name) {
            params[id] = t.clone();
        }
    }
    let inputs: SecondaryMap<InputId, Option<Tensor>> = SecondaryMap::new();
    let run = |kind| {
        let mut ps: SecondaryMap<ParamId, Tensor> = params.clone();
        Engine::new(kind, g).run(&mut ps, &inputs)
    };
    let want = run(BackendKind::Interp);
    let got = run(kind);
    let shown = || {
        let mut s = String::new();
        for (n, t) in values {
            let _ = writeln!(s, "{n} = {:?}", t.data);
        }
        format!("--- program ---\n{}--- values ---\n{s}", p.source)
    };
    let (want, got) = match (want, got) {
        (Ok(w), Ok(j)) => (w, j),
        (Err(_), Err(_)) => return loss_scale.unwrap_or(0.0),
        (w, j) => panic!(
            "{what}: the interpreter {} but {kind:?} {}\n{}",
            w.map_or_else(|e| format!("failed ({e})"), |_| "ran".into()),
            j.map_or_else(|e| format!("failed ({e})"), |_| "ran".into()),
            shown()
        ),
    };
    assert_eq!(want.len(), got.len(), "{what}: output count\n{}", shown());
    let output = |name: &str| {
        let k = g.outputs.iter().position(|o| o.name == name)?;
        want.get(k)
    };
    let loss_scale =
        loss_scale.unwrap_or_else(|| output("y").map_or(0.0, |y| p.loss_scale(y, values)));
    for (k, (w, j)) in want.iter().zip(&got).enumerate() {
        let name = g.outputs.get(k).map_or("?", |o| o.name.as_str());
        let scale = if name == "loss" { loss_scale } else { 0.0 };
        assert_eq!(w.shape, j.shape, "{what}: shape of `{name}`\n{}", shown());
        for (i, (&x, &y)) in w.data.iter().zip(&j.data).enumerate() {
            assert!(
                agree_at(x, y, scale),
                "{what}: `{name}`[{i}]: interpreter {x:e}, {kind:?} {y:e}\n{}",
                shown()
            );
        }
    }
    loss_scale
}

/// Whether two results agree: both NaN, equal (infinities included), or
/// within a relative error of 1e-5, with an absolute floor of 1e-6. The
/// floor is for results near 0 computed from values of order 1 (the
/// generator's values lie in [−4, 4] or saturate to 0, ±1, ±∞ or NaN):
/// there two correct results may differ by an ulp or two of the values
/// they came from, not of themselves — `sigmoid` of a large negative
/// number as `e / (1 + e)`, a softmax probability near underflow, a
/// gradient that is a sum of bounded terms cancelling to nearly 0. 1e-6
/// is about eight ulps of a value near 1, far below any real disagreement.
/// (Cancellation that magnifies such differences, e.g. `exp` of a
/// difference of two sums, is kept out by the generator's strict mode,
/// not allowed for here.)
pub fn agree(x: f32, y: f32) -> bool {
    agree_at(x, y, 0.0)
}

/// [`agree`] for a result computed as a sum whose terms' magnitudes add up
/// to `scale`: the relative error of 1e-5 is taken of `scale` when it is
/// larger than the results (two orders of summing cancelling terms agree
/// to a few ulps of the terms, not of the result).
pub fn agree_at(x: f32, y: f32, scale: f64) -> bool {
    if x.is_nan() || y.is_nan() {
        return x.is_nan() && y.is_nan();
    }
    if x == y {
        return true;
    }
    if x.is_infinite() || y.is_infinite() {
        return false;
    }
    let diff = (f64::from(x) - f64::from(y)).abs();
    let magnitude = f64::from(x.abs().max(y.abs())).max(scale);
    diff <= 1e-6 || diff <= 1e-5 * magnitude
}
