//! `nnc compile` writes a shared library and a C header: a C program
//! built against the header (`cc -std=c99 -Wall -Werror`) runs each
//! library, and its outputs agree with the reference interpreter's on the
//! same inputs and weights. Also: weights embedded with `--params` and
//! replaced at run time, two models in one program, and the errors.

use cranelift_entity::SecondaryMap;
use nnc::backend::{interp, BackendKind, Engine};
use nnc::pipeline::{self, Stage};
use nnc::tensor::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn nnc(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("nnc runs")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The inputs and outputs a header declares, in `NAME_run`'s order:
/// (name, length) from its `/* input `x`: [2, 3]. */` comments.
/// Names and lengths of a header's inputs or outputs.
type Declared = Vec<(String, usize)>;

fn declared(header: &str) -> (Declared, Declared) {
    let (mut ins, mut outs) = (Vec::new(), Vec::new());
    for line in header.lines() {
        for (kind, list) in [("/* input `", &mut ins), ("/* output `", &mut outs)] {
            if let Some(rest) = line.strip_prefix(kind) {
                let (name, shape) = rest.split_once("`: [").expect("a shape");
                let dims = shape.split(']').next().expect("dims");
                let len = dims
                    .split(", ")
                    .filter(|d| !d.is_empty())
                    .map(|d| d.parse::<usize>().expect("a number"))
                    .product();
                list.push((name.to_string(), len));
            }
        }
    }
    (ins, outs)
}

/// A C program that reads `in.bin` (every input, in order), runs the
/// model `name` and writes `out.bin` (every output, in order).
fn harness(name: &str, ins: &[(String, usize)], outs: &[(String, usize)]) -> String {
    let mut c = format!(
        "#include <stdio.h>\n#include <stdlib.h>\n#include \"{name}.h\"\n\n\
         static float *take(FILE *f, size_t n) {{\n\
         \x20   float *p = malloc(n * sizeof(float) + 1);\n\
         \x20   if (!p || (f && fread(p, sizeof(float), n, f) != n)) {{ fprintf(stderr, \"short input\\n\"); exit(2); }}\n\
         \x20   return p;\n}}\n\n\
         int main(void) {{\n\
         \x20   FILE *in = fopen(\"in.bin\", \"rb\");\n\
         \x20   if (!in) {{ perror(\"in.bin\"); return 2; }}\n"
    );
    let mut args = vec!["m".to_string()];
    for (i, (_, len)) in ins.iter().enumerate() {
        c.push_str(&format!("    float *i{i} = take(in, {len});\n"));
        args.push(format!("i{i}"));
    }
    for (i, (_, len)) in outs.iter().enumerate() {
        c.push_str(&format!("    float *o{i} = take(NULL, {len});\n"));
        args.push(format!("o{i}"));
    }
    c.push_str(&format!(
        "    {name}_model *m = {name}_new();\n\
         \x20   if (!m) {{ fprintf(stderr, \"new: %s\\n\", {name}_last_error()); return 1; }}\n\
         \x20   if ({name}_run({args}) != {up}_OK) {{ fprintf(stderr, \"run: %s\\n\", {name}_last_error()); return 1; }}\n\
         \x20   FILE *out = fopen(\"out.bin\", \"wb\");\n",
        args = args.join(", "),
        up = name.to_uppercase()
    ));
    for (i, (_, len)) in outs.iter().enumerate() {
        c.push_str(&format!("    fwrite(o{i}, sizeof(float), {len}, out);\n"));
    }
    c.push_str(&format!(
        "    fclose(out);\n    {name}_free(m);\n    return 0;\n}}\n"
    ));
    c
}

/// Writes the C program `c` to `dir/main.c`, builds it with `cc -std=c99
/// -Wall -Werror` and the linker arguments `link` (libraries are found
/// beside the program at run time), runs it there and returns what it
/// printed; the build and the run must succeed.
fn run_c(dir: &Path, c: &str, link: &[&str]) -> String {
    std::fs::write(dir.join("main.c"), c).expect("write main.c");
    let cc = Command::new("cc")
        .args([
            "-std=c99", "-Wall", "-Werror", "-pthread", "-o", "main", "main.c",
        ])
        .args(link)
        .arg("-Wl,-rpath,$ORIGIN")
        .current_dir(dir)
        .output()
        .expect("cc runs");
    assert!(
        cc.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let ran = Command::new(dir.join("main"))
        .current_dir(dir)
        .output()
        .expect("the program runs");
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert!(
        ran.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    out
}

/// Input values: small whole numbers (valid indices for the tables of the
/// examples, ordinary values for the rest).
fn input_values(len: usize, salt: usize) -> Vec<f32> {
    (0..len).map(|k| ((k * 7 + salt * 3) % 3) as f32).collect()
}

/// Writes `dir/in.bin` for the [`harness`]: each input of `ins` (names
/// and lengths) filled with [`input_values`], in order; returns them.
fn write_inputs(dir: &Path, ins: &[(String, usize)]) -> Vec<(String, Vec<f32>)> {
    let values: Vec<(String, Vec<f32>)> = ins
        .iter()
        .enumerate()
        .map(|(k, (n, len))| (n.clone(), input_values(*len, k)))
        .collect();
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()))
        .collect();
    std::fs::write(dir.join("in.bin"), bytes).expect("in.bin");
    values
}

/// The interpreter's outputs for `file` with these inputs, by the
/// library's graph; `params` None uses the initialisers (seed 0).
fn reference(
    file: &str,
    dims: &[(String, usize)],
    ins: &[(String, Vec<f32>)],
    params: Option<&SecondaryMap<nnc::ir::ParamId, Tensor>>,
) -> Vec<Tensor> {
    run_on(BackendKind::Interp, file, dims, ins, params)
}

/// The outputs of `file`'s library graph on `backend` (the JIT: what
/// `nnc run` computes).
fn run_on(
    backend: BackendKind,
    file: &str,
    dims: &[(String, usize)],
    ins: &[(String, Vec<f32>)],
    params: Option<&SecondaryMap<nnc::ir::ParamId, Tensor>>,
) -> Vec<Tensor> {
    let src = std::fs::read_to_string(root().join(file)).expect("example");
    let c = pipeline::compile(file, &src, Stage::Ir);
    assert!(!c.diags.has_errors(), "{}", c.render(false));
    let g = nnc::aot::library_graph(c.graph.as_ref().expect("graph"), c.train.as_ref())
        .expect("a library graph");
    let syms =
        nnc::driver::graphs::bind_dims(&g, dims, c.train.as_ref().map(|t| t.batch)).expect("dims");
    let mut inputs = SecondaryMap::new();
    for (name, data) in ins {
        let (id, info) = g
            .inputs
            .iter()
            .find(|(_, i)| &i.name == name)
            .expect("input");
        let shape = nnc::backend::bind::concrete_shape(&g, &syms, &info.ty.shape, info.span)
            .expect("shape");
        inputs[id] = Some(Tensor::new(shape, data.clone()));
    }
    let mut p = match params {
        Some(p) => p.clone(),
        None => interp::init_params(&g, 0),
    };
    Engine::new(backend, &g)
        .run(&mut p, &inputs)
        .expect("the reference runs")
}

fn read_floats(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("out.bin")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Against the interpreter: within 1e-4 (relative, absolute below 1).
fn assert_close(got: &[f32], want: &[Tensor], what: &str) {
    assert_within(
        got,
        want,
        |b| 1e-4 * b.abs().max(1.0),
        &format!("{what} (interpreter)"),
    );
}

/// Against the JIT (`nnc run`, the same kernels): within 1e-6 relative.
fn assert_as_jit(got: &[f32], want: &[Tensor], what: &str) {
    assert_within(got, want, |b| 1e-6 * b.abs(), &format!("{what} (JIT)"));
}

fn assert_within(got: &[f32], want: &[Tensor], tol: impl Fn(f32) -> f32, what: &str) {
    let want: Vec<f32> = want.iter().flat_map(|t| t.data.iter().copied()).collect();
    assert_eq!(got.len(), want.len(), "{what}: output length");
    for (k, (&a, &b)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= tol(b),
            "{what}: element {k}: library {a}, reference {b}"
        );
    }
}

/// Compiles `file` with `args`, runs it from C on fixed inputs and
/// compares with the interpreter.
fn agrees(file: &str, name: &str, dims: &[(&str, usize)]) {
    let dir = common::temp_dir(&format!("aot-{name}"));
    let mut args = vec![
        "compile".to_string(),
        root().join(file).display().to_string(),
    ];
    args.extend([
        "-o".into(),
        format!("{name}.so"),
        "--name".into(),
        name.into(),
    ]);
    for (d, n) in dims {
        args.extend(["--dim".into(), format!("{d}={n}")]);
    }
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = nnc(&argv, &dir);
    assert!(
        o.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("int {name}_run(")), "{stdout}");
    let header = std::fs::read_to_string(dir.join(format!("{name}.h"))).expect("header");
    let (ins, outs) = declared(&header);
    assert!(!outs.is_empty(), "{file}: the header declares no output");
    let values = write_inputs(&dir, &ins);
    run_c(
        &dir,
        &harness(name, &ins, &outs),
        &[&format!("./{name}.so")],
    );
    let dims: Vec<(String, usize)> = dims.iter().map(|(d, n)| (d.to_string(), *n)).collect();
    let got = read_floats(&dir.join("out.bin"));
    assert_close(&got, &reference(file, &dims, &values, None), file);
    let jit = run_on(BackendKind::Jit, file, &dims, &values, None);
    assert_as_jit(&got, &jit, file);
}

#[test]
fn a_dense_network_from_c_agrees_with_the_interpreter() {
    agrees("examples/bench/mlp_infer.nn", "mlp", &[("B", 3)]);
    // A `train` file: the library runs its `predict` (batch from --dim).
    agrees("examples/digits_mlp.nn", "digits", &[("B", 5)]);
}

#[test]
fn convolutions_attention_and_graphs_from_c_agree_with_the_interpreter() {
    agrees("examples/lenet_mnist.nn", "lenet", &[("B", 2)]);
    agrees("examples/transformer_reverse.nn", "tr", &[("B", 2)]);
    agrees("examples/gcn_karate.nn", "gcn", &[("B", 5)]);
}

#[test]
fn loops_powers_and_wide_kernels_from_c_agree_with_the_interpreter() {
    agrees("tests/fixtures/aot/lstm_pow.nn", "lstm_pow", &[("B", 3)]);
}

/// The weights: embedded from `--params`, replaced at run time by
/// `NAME_load_params` (all or nothing: a file of another model changes
/// none), and bad arguments answered with error codes and messages.
#[test]
fn weights_are_embedded_replaced_at_run_time_and_bad_calls_are_errors() {
    let dir = common::temp_dir("aot-params");
    let file = "examples/bench/mlp_infer.nn";
    let src = std::fs::read_to_string(root().join(file)).expect("example");
    let c = pipeline::compile(file, &src, Stage::Ir);
    let g = c.graph.expect("graph");
    // Two sets of weights other than the initialisers' (seed 0).
    let save = |seed: u64, path: &Path| {
        let p = interp::init_params(&g, seed);
        let tensors: Vec<(String, &Tensor)> = g
            .params
            .iter()
            .map(|(id, info)| (info.name.clone(), &p[id]))
            .collect();
        nnc::train::checkpoint::save(path, &tensors, &Default::default()).expect("save");
        p
    };
    let w7 = save(7, &dir.join("w7.safetensors"));
    let w9 = save(9, &dir.join("w9.safetensors"));
    std::fs::write(dir.join("other.safetensors"), b"not a safetensors file").expect("write");
    // Weights of another model (xor's), as `nnc train --save` writes them.
    let o = nnc(
        &[
            "train",
            &root().join("examples/xor.nn").display().to_string(),
            "--epochs",
            "1",
            "--save",
            "xor.safetensors",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = nnc(
        &[
            "compile",
            &root().join(file).display().to_string(),
            "--dim",
            "B=2",
            "--params",
            "w7.safetensors",
            "-o",
            "lib/net.so",
            "--name",
            "net",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("lib/net.h").is_file() && dir.join("lib/net.so").is_file());
    let x = input_values(2 * 784, 0);
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("in.bin"), bytes).expect("in.bin");
    let main = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lib/net.h"

static void dump(const char *path, const float *y) {
    FILE *f = fopen(path, "wb");
    fwrite(y, sizeof(float), NET_LOGITS_LEN, f);
    fclose(f);
}

int main(void) {
    static float x[NET_MLP_X_LEN], y[NET_LOGITS_LEN];
    FILE *in = fopen("in.bin", "rb");
    if (!in || fread(x, sizeof(float), NET_MLP_X_LEN, in) != NET_MLP_X_LEN) return 2;
    net_model *m = net_new();
    if (!m || net_run(m, x, y) != NET_OK) return 3;
    dump("embedded.bin", y);
    int rc = net_load_params(m, "xor.safetensors");
    printf("xor: %d %s\n", rc, net_last_error());
    rc = net_load_params(m, "other.safetensors");
    printf("other: %d %s\n", rc, net_last_error());
    rc = net_load_params(m, "missing.safetensors");
    printf("missing: %d %s\n", rc, net_last_error());
    if (net_run(m, x, y) != NET_OK) return 4;
    dump("unchanged.bin", y);
    if (net_load_params(m, "w9.safetensors") != NET_OK) return 5;
    if (net_run(m, x, y) != NET_OK) return 6;
    dump("loaded.bin", y);
    rc = net_run(m, NULL, y);
    printf("null input: %d %s\n", rc, net_last_error());
    rc = net_run(NULL, x, y);
    printf("null model: %d %s\n", rc, net_last_error());
    /* The runs read the input in place and never write it. */
    static float again[NET_MLP_X_LEN];
    rewind(in);
    if (fread(again, sizeof(float), NET_MLP_X_LEN, in) != NET_MLP_X_LEN) return 7;
    printf("input kept: %d\n", memcmp(x, again, sizeof x) == 0);
    net_free(m);
    net_free(NULL);
    return 0;
}
"#;
    let out = run_c(&dir, main, &["lib/net.so", "-Wl,-rpath,$ORIGIN/lib"]);
    let dims = [("B".to_string(), 2)];
    let ins = [("Mlp.x".to_string(), x)];
    let with7 = reference(file, &dims, &ins, Some(&w7));
    let with9 = reference(file, &dims, &ins, Some(&w9));
    assert_close(
        &read_floats(&dir.join("embedded.bin")),
        &with7,
        "embedded weights",
    );
    assert_close(
        &read_floats(&dir.join("unchanged.bin")),
        &with7,
        "after failed loads",
    );
    assert_close(
        &read_floats(&dir.join("loaded.bin")),
        &with9,
        "loaded weights",
    );
    assert!(
        out.contains("other: 2 ") && out.contains("not a safetensors file"),
        "{out}"
    );
    assert!(
        out.contains("missing: 2 ") && out.contains("missing.safetensors"),
        "{out}"
    );
    assert!(
        out.contains("null input: 1 ") && out.contains("`Mlp.x` is null"),
        "{out}"
    );
    assert!(out.contains("null model: 1 "), "{out}");
    assert!(out.contains("input kept: 1"), "{out}");
    let jit7 = run_on(BackendKind::Jit, file, &dims, &ins, Some(&w7));
    let jit9 = run_on(BackendKind::Jit, file, &dims, &ins, Some(&w9));
    assert_as_jit(
        &read_floats(&dir.join("embedded.bin")),
        &jit7,
        "embedded weights",
    );
    assert_as_jit(
        &read_floats(&dir.join("loaded.bin")),
        &jit9,
        "loaded weights",
    );
    assert!(
        out.contains("xor: 2 ") && out.contains("has no tensor `Mlp.w1`"),
        "{out}"
    );
}

/// Two libraries in one program: each exports its own names only (the
/// runtime inside each is hidden), and both run.
#[test]
fn two_models_link_into_one_program() {
    let dir = common::temp_dir("aot-two");
    for (file, name) in [
        ("examples/xor.nn", "xor"),
        ("examples/digits_mlp.nn", "digits_mlp"),
    ] {
        let o = nnc(
            &[
                "compile",
                &root().join(file).display().to_string(),
                "-o",
                &format!("{name}.so"),
            ],
            &dir,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let nm = Command::new("nm")
            .args(["-D", "--defined-only", &format!("{name}.so")])
            .current_dir(&dir)
            .output()
            .expect("nm");
        let syms = String::from_utf8_lossy(&nm.stdout);
        let exported: Vec<&str> = syms
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        assert!(!exported.is_empty(), "{name}: nothing exported");
        for s in &exported {
            assert!(
                s.starts_with(&format!("{name}_")),
                "{name}.so exports `{s}`"
            );
        }
    }
    let main = r#"#include <stdio.h>
#include "xor.h"
#include "digits_mlp.h"

int main(void) {
    xor_model *a = xor_new();
    digits_mlp_model *b = digits_mlp_new();
    if (!a || !b) return 1;
    static float x[DIGITS_MLP_MLP_X_LEN(7)], p[DIGITS_MLP_PREDICT_LEN(7)];
    float xx[XOR_XOR_X_LEN(4)] = {0}, y[XOR_PREDICT_LEN(4)];
    if (xor_run(a, 4, xx, y) != XOR_OK || digits_mlp_run(b, 7, x, p) != DIGITS_MLP_OK) return 2;
    printf("ok %zu %zu\n", XOR_PREDICT_LEN(4), DIGITS_MLP_PREDICT_LEN(7));
    xor_free(a);
    digits_mlp_free(b);
    return 0;
}
"#;
    let out = run_c(&dir, main, &["./xor.so", "./digits_mlp.so"]);
    assert_eq!(out.trim(), "ok 4 70"); // 4 rows of xor, 7 digits × 10 classes
}

/// What cannot be built is a diagnostic (exit 1), and nothing is left
/// behind.
#[test]
fn libraries_that_cannot_be_built_are_clear_errors() {
    let dir = common::temp_dir("aot-errors");
    let mlp = root()
        .join("examples/bench/mlp_infer.nn")
        .display()
        .to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["-o", "m.dll", "--dim", "B=1"], "not .so, .a or .o"),
        (
            &["--target-cpu", "pentium9", "--dim", "B=1"],
            "not a CPU level",
        ),
        (&["--name", "9lives", "--dim", "B=1"], "not a C identifier"),
    ];
    // A batch that the model sums over cannot take any size at run time.
    let mixed = dir.join("mixed.nn");
    std::fs::write(
        &mixed,
        "model M {\n  input x: [B, 3]\n}\n\noutput y = M.x - mean(M.x)\n",
    )
    .expect("mixed.nn");
    let mixed = mixed.display().to_string();
    let mut runs: Vec<(Vec<&str>, &str)> = cases
        .iter()
        .map(|(args, msg)| {
            let mut argv = vec!["compile", mlp.as_str()];
            argv.extend_from_slice(args);
            (argv, *msg)
        })
        .collect();
    runs.push((
        vec!["compile", mixed.as_str()],
        "a reduction over the rows: rows of `B` are not computed alone",
    ));
    for (argv, msg) in runs {
        let args = &argv[2..];
        let o = nnc(&argv, &dir);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    std::fs::remove_file(&mixed).expect("mixed.nn");
    let no_cc = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(["compile", &mlp, "--dim", "B=1"])
        .env("CC", "/nonexistent/cc")
        .current_dir(&dir)
        .output()
        .expect("nnc runs");
    let err = String::from_utf8_lossy(&no_cc.stderr);
    assert_eq!(no_cc.status.code(), Some(1), "{err}");
    assert!(
        err.contains("was not found") && err.contains("apt-get install gcc"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `examples/aot/digits.c` end to end, as its comment and README say:
/// train the digits MLP, compile it with the trained weights for one row
/// at a time, build the C program and classify the data set.
#[test]
fn the_c_example_classifies_the_digits_with_trained_weights() {
    let dir = common::temp_dir("aot-example");
    let model = root().join("examples/digits_mlp.nn").display().to_string();
    let o = nnc(
        &[
            "train",
            &model,
            "--epochs",
            "5",
            "--save",
            "digits.safetensors",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = nnc(
        &[
            "compile",
            &model,
            "--params",
            "digits.safetensors",
            "--dim",
            "B=1",
            "-o",
            "digits.so",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let example = root().join("examples/aot/digits.c");
    let cc = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Werror", "-I.", "-o", "classify"])
        .arg(&example)
        .args(["./digits.so", "-Wl,-rpath,$ORIGIN"])
        .current_dir(&dir)
        .output()
        .expect("cc");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let ran = Command::new(dir.join("classify"))
        .arg(root().join("examples/data/digits.csv"))
        .current_dir(&dir)
        .output()
        .expect("runs");
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let acc: f64 = out
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {out}"));
    assert!(out.starts_with("1797 rows"), "{out}");
    assert!(acc >= 0.9, "{out}");
    // The Rust example, through `extern "C"`, gives the same line.
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--edition", "2021", "-o", "classify-rs"])
        .arg(root().join("examples/aot/digits.rs"))
        .args([
            "-C",
            "link-arg=./digits.so",
            "-C",
            "link-arg=-Wl,-rpath,$ORIGIN",
        ])
        .current_dir(&dir)
        .output()
        .expect("rustc");
    assert!(
        rustc.status.success(),
        "{}",
        String::from_utf8_lossy(&rustc.stderr)
    );
    let rs = Command::new(dir.join("classify-rs"))
        .arg(root().join("examples/data/digits.csv"))
        .current_dir(&dir)
        .output()
        .expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&rs.stdout),
        out,
        "{}",
        String::from_utf8_lossy(&rs.stderr)
    );
    // The Python example, through ctypes and NumPy, likewise (in CI a
    // Python with NumPy is required; elsewhere its absence is reported).
    match python_with_numpy() {
        Some(py) => {
            let run = Command::new(py)
                .arg(root().join("examples/aot/digits.py"))
                .arg(dir.join("digits.so"))
                .arg(root().join("examples/data/digits.csv"))
                .output()
                .expect("python runs");
            assert_eq!(
                String::from_utf8_lossy(&run.stdout),
                out,
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
        }
        None if std::env::var_os("CI").is_some() => {
            panic!("no python3 with numpy (CI installs python3-numpy)")
        }
        None => eprintln!("skipped examples/aot/digits.py: no python3 with numpy"),
    }
}

/// A Python that imports NumPy: `PYTHON`, the system's, or the first
/// `python3` on the path.
fn python_with_numpy() -> Option<String> {
    let candidates = [
        std::env::var("PYTHON").ok(),
        Some("/usr/bin/python3".into()),
        Some("python3".into()),
    ];
    candidates.into_iter().flatten().find(|py| {
        Command::new(py)
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Three batches of 8 rows for the digits MLP (pixels, and one-hot
/// labels), also written to `dir/in.bin` for a C program to read.
fn digits_batches(dir: &Path) -> Vec<(Vec<f32>, Vec<f32>)> {
    let batches: Vec<(Vec<f32>, Vec<f32>)> = (0..3)
        .map(|b| {
            let x = input_values(8 * 64, b);
            let y = (0..80)
                .map(|k| f32::from(u8::from(k % 10 == (k / 10 + b) % 10)))
                .collect();
            (x, y)
        })
        .collect();
    let bytes: Vec<u8> = batches
        .iter()
        .flat_map(|(x, y)| {
            x.iter()
                .chain(y)
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::write(dir.join("in.bin"), bytes).expect("in.bin");
    batches
}

/// `NAME_train_step` from C: three Adam steps of the digits MLP on fixed
/// batches give the interpreter's losses, and the weights and optimizer
/// state `NAME_save_params` writes are the interpreter's after the same
/// steps; a file from `nnc train --save`-like weights (no optimizer
/// state) loads.
#[test]
fn training_steps_from_c_agree_with_the_interpreter() {
    let dir = common::temp_dir("aot-train");
    let file = "examples/digits_mlp.nn";
    let o = nnc(
        &[
            "compile",
            &root().join(file).display().to_string(),
            "--dim",
            "B=8",
            "-o",
            "digits.so",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("int digits_train_step(digits_model *m, const float *Mlp_x, const float *Mlp_y, float *loss)"),
        "{stdout}"
    );
    let batches = digits_batches(&dir);
    let main = r#"#include <stdio.h>
#include "digits.h"

int main(void) {
    static float x[DIGITS_MLP_X_LEN], y[DIGITS_MLP_Y_LEN], losses[3];
    FILE *in = fopen("in.bin", "rb");
    digits_model *m = digits_new();
    if (!in || !m) return 2;
    for (int s = 0; s < 3; s++) {
        if (fread(x, sizeof(float), DIGITS_MLP_X_LEN, in) != DIGITS_MLP_X_LEN) return 3;
        if (fread(y, sizeof(float), DIGITS_MLP_Y_LEN, in) != DIGITS_MLP_Y_LEN) return 3;
        if (digits_train_step(m, x, y, &losses[s]) != DIGITS_OK) {
            fprintf(stderr, "step: %s\n", digits_last_error());
            return 4;
        }
    }
    if (digits_save_params(m, "after.safetensors") != DIGITS_OK) return 5;
    FILE *out = fopen("out.bin", "wb");
    fwrite(losses, sizeof(float), 3, out);
    fclose(out);
    int rc = digits_train_step(m, NULL, y, &losses[0]);
    printf("null: %d %s\n", rc, digits_last_error());
    digits_free(m);
    return 0;
}
"#;
    let out = run_c(&dir, main, &["./digits.so"]);
    assert!(
        out.contains("null: 1 train_step: input `Mlp.x` is null"),
        "{out}"
    );
    // The interpreter, on the step graph, from the same initial values.
    let src = std::fs::read_to_string(root().join(file)).expect("example");
    let c = pipeline::compile(file, &src, Stage::Ir);
    let (g, t) = (c.graph.expect("graph"), c.train.expect("train block"));
    let steps = pipeline::train_steps(&g, &t).expect("step graph");
    let sg = &steps[0].step.graph;
    let mut params = interp::init_params(sg, 0);
    let mut losses = Vec::new();
    for (x, y) in &batches {
        let mut inputs = SecondaryMap::new();
        for (name, data, width) in [("Mlp.x", x, 64), ("Mlp.y", y, 10)] {
            let (id, _) = sg
                .inputs
                .iter()
                .find(|(_, i)| i.name == name)
                .expect("input");
            inputs[id] = Some(Tensor::new(vec![8, width], data.clone()));
        }
        let outs = Engine::new(BackendKind::Interp, sg)
            .step(&mut params, &inputs)
            .expect("interpreter step");
        losses.push(outs[0].clone());
    }
    assert_close(&read_floats(&dir.join("out.bin")), &losses, "losses");
    // And the JIT (what `nnc train` runs), step by step, within 1e-6.
    let mut jit_params = interp::init_params(sg, 0);
    let mut jit = Engine::new(BackendKind::Jit, sg);
    let mut jit_losses = Vec::new();
    for (x, y) in &batches {
        let mut inputs = SecondaryMap::new();
        for (name, data, width) in [("Mlp.x", x, 64), ("Mlp.y", y, 10)] {
            let (id, _) = sg
                .inputs
                .iter()
                .find(|(_, i)| i.name == name)
                .expect("input");
            inputs[id] = Some(Tensor::new(vec![8, width], data.clone()));
        }
        let outs = jit.step(&mut jit_params, &inputs).expect("JIT step");
        jit_losses.push(outs[0].clone());
    }
    jit.sync(&mut jit_params).expect("sync");
    assert_as_jit(&read_floats(&dir.join("out.bin")), &jit_losses, "losses");
    let (saved, _) = nnc::train::checkpoint::load(&dir.join("after.safetensors")).expect("saved");
    assert_eq!(
        saved.len(),
        sg.params.len(),
        "every parameter and state saved"
    );
    for (id, p) in sg.params.iter() {
        let got = &saved[&p.name];
        assert_eq!(got.shape, params[id].shape, "{}", p.name);
        assert_as_jit(&got.data, std::slice::from_ref(&jit_params[id]), &p.name);
        for (k, (&a, &b)) in got.data.iter().zip(&params[id].data).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{}[{k}]: library {a}, interpreter {b}",
                p.name
            );
        }
    }
}

/// `-o NAME.a` and `-o NAME.o`: the wrappers and kernels, linked into a
/// program with the runtime archive as `nnc compile` prints; two models
/// share one runtime.
#[test]
fn static_archives_and_objects_link_into_one_program() {
    let dir = common::temp_dir("aot-static");
    let mut link = Vec::new();
    for (file, out, dims) in [
        ("examples/xor.nn", "xor.a", None),
        ("examples/digits_mlp.nn", "digits.o", Some("B=1")),
    ] {
        let model = root().join(file).display().to_string();
        let mut args = vec!["compile", model.as_str(), "-o", out];
        if let Some(d) = dims {
            args.extend(["--dim", d]);
        }
        let o = nnc(&args, &dir);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("link a program with: cc PROGRAM.c "))
            .unwrap_or_else(|| panic!("no link line: {stdout}"))
            .to_string();
        link.push(line);
    }
    let main = r#"#include <stdio.h>
#include "xor.h"
#include "digits.h"

int main(void) {
    xor_model *a = xor_new();
    digits_model *b = digits_new();
    if (!a || !b) return 1;
    static float x[DIGITS_MLP_X_LEN], p[DIGITS_PREDICT_LEN];
    float xx[XOR_XOR_X_LEN(4)] = {0}, y[XOR_PREDICT_LEN(4)];
    if (xor_run(a, 4, xx, y) != XOR_OK || digits_run(b, x, p) != DIGITS_OK) return 2;
    printf("ok %zu %d\n", XOR_PREDICT_LEN(4), DIGITS_PREDICT_LEN);
    xor_free(a);
    digits_free(b);
    return 0;
}
"#;
    // The printed lines name each output and the same runtime: one copy.
    let xor_args: Vec<&str> = link[0].split_whitespace().collect();
    let digits_args: Vec<&str> = link[1].split_whitespace().collect();
    assert_eq!(xor_args[1..], digits_args[1..], "one runtime for both");
    let mut args = vec![digits_args[0]];
    args.extend(&xor_args);
    let out = run_c(&dir, main, &args);
    assert_eq!(out.trim(), "ok 4 10");
}

/// `--target aarch64-unknown-linux-gnu`: an AArch64 relocatable object
/// with the kernels, their table, the plan and the weights, the wrappers'
/// C source and the header (valid C, checked here on the host); linking
/// needs an AArch64 toolchain and runtime, which this test does not have.
#[test]
fn cross_compiling_writes_an_aarch64_object_and_its_c_sources() {
    let dir = common::temp_dir("aot-cross");
    for (file, name) in [
        ("tests/fixtures/aot/lstm_pow.nn", "lstm_pow"),
        ("examples/lenet_mnist.nn", "lenet_mnist"),
    ] {
        let model = root().join(file).display().to_string();
        let o = nnc(
            &[
                "compile",
                &model,
                "--target",
                "aarch64-unknown-linux-gnu",
                "--dim",
                "B=2",
            ],
            &dir,
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            stdout.contains(&format!("CC PROGRAM.c {name}.c {name}.o libnnc.a")),
            "{stdout}"
        );
        let elf = Command::new("readelf")
            .args(["-W", "-h", "-s", &format!("{name}.o")])
            .current_dir(&dir)
            .output()
            .expect("readelf");
        let text = String::from_utf8_lossy(&elf.stdout);
        assert!(
            text.contains("AArch64") && text.contains("REL (Relocatable file)"),
            "{text}"
        );
        for sym in ["kernels", "plan", "params"] {
            assert!(
                text.contains(&format!("{name}__nnc_{sym}")),
                "{sym}: {text}"
            );
        }
        let cc = Command::new("cc")
            .args([
                "-std=c99",
                "-Wall",
                "-Werror",
                "-fsyntax-only",
                &format!("{name}.c"),
            ])
            .current_dir(&dir)
            .output()
            .expect("cc");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
    }
    let model = root().join("examples/xor.nn").display().to_string();
    for (args, msg) in [
        (vec!["-o", "x.so"], "writes an object, not `x.so`"),
        (vec!["--target-cpu", "native"], "describes this machine"),
    ] {
        let mut argv = vec![
            "compile",
            model.as_str(),
            "--target",
            "aarch64-unknown-linux-gnu",
        ];
        argv.extend(args);
        let o = nnc(&argv, &dir);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(msg), "{err}");
    }
}

/// `--dim B=2,5`: the batch is an argument of `NAME_run` and
/// `NAME_train_step`, each size compiled gives the interpreter's outputs,
/// and a size not compiled is an error naming those that were.
#[test]
fn a_dimension_given_several_sizes_is_a_run_time_argument() {
    let dir = common::temp_dir("aot-dims");
    let file = "examples/digits_mlp.nn";
    let model = root().join(file).display().to_string();
    let o = nnc(
        &["compile", &model, "--dim", "B=5,2", "-o", "digits.so"],
        &dir,
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains(
            "int digits_run(digits_model *m, size_t B, const float *Mlp_x, float *predict)"
        ),
        "{stdout}"
    );
    let header = std::fs::read_to_string(dir.join("digits.h")).expect("header");
    assert!(
        header.contains("#define DIGITS_MLP_X_LEN(B) ((size_t)(B) * 64)"),
        "{header}"
    );
    let main = r#"#include <stdio.h>
#include <stdlib.h>
#include "digits.h"

int main(void) {
    digits_model *m = digits_new();
    if (!m) return 1;
    FILE *out = fopen("out.bin", "wb");
    for (size_t b = 2; b <= 5; b += 3) {
        float *x = malloc(DIGITS_MLP_X_LEN(b) * sizeof(float));
        float *p = malloc(DIGITS_PREDICT_LEN(b) * sizeof(float));
        for (size_t i = 0; i < DIGITS_MLP_X_LEN(b); i++) x[i] = (float)((i * 7 + b) % 3);
        if (digits_run(m, b, x, p) != DIGITS_OK) return 2;
        fwrite(p, sizeof(float), DIGITS_PREDICT_LEN(b), out);
        free(x);
        free(p);
    }
    fclose(out);
    static float x[DIGITS_MLP_X_LEN(3)], p[DIGITS_PREDICT_LEN(3)], y[DIGITS_MLP_Y_LEN(3)], loss;
    int rc = digits_run(m, 3, x, p);
    printf("run 3: %d %s\n", rc, digits_last_error());
    rc = digits_train_step(m, 3, x, y, &loss);
    printf("train 3: %d %s\n", rc, digits_last_error());
    digits_free(m);
    return 0;
}
"#;
    let out = run_c(&dir, main, &["./digits.so"]);
    assert!(
        out.contains("run 3: 1 run: B = 3 was not compiled into this library; it has B = 2; B = 5"),
        "{out}"
    );
    assert!(
        out.contains("train 3: 1 train_step: B = 3 was not compiled"),
        "{out}"
    );
    let got = read_floats(&dir.join("out.bin"));
    let mut want = Vec::new();
    for b in [2usize, 5] {
        let x: Vec<f32> = (0..b * 64).map(|i| ((i * 7 + b) % 3) as f32).collect();
        let dims = [("B".to_string(), b)];
        want.extend(reference(file, &dims, &[("Mlp.x".to_string(), x)], None));
    }
    assert_close(&got, &want, "B = 2 and B = 5");
}

/// The headers of the examples, as a person reads them (insta snapshots).
#[test]
fn headers_of_the_examples() {
    let dir = common::temp_dir("aot-headers");
    for (file, name, dims) in [
        ("examples/digits_mlp.nn", "digits", None),
        ("examples/xor.nn", "xor", None),
        ("examples/lenet_mnist.nn", "lenet", Some("B=1")),
        ("examples/bench/mlp_infer.nn", "mlp", Some("B=1,8,128")),
    ] {
        let out = dir.join(format!("{name}.so")).display().to_string();
        let mut args = vec!["compile", file, "-o", out.as_str()];
        if let Some(d) = dims {
            args.extend(["--dim", d]);
        }
        let o = nnc(&args, &root());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let header = std::fs::read_to_string(dir.join(format!("{name}.h"))).expect("header");
        insta::assert_snapshot!(format!("header_{name}"), header);
    }
}

/// The code's target: x86-64-v3 by default (AVX2 and FMA, no AVX-512:
/// the kernels never touch a zmm register or a mask), and x86-64-v2
/// without AVX at all (no VEX instructions; the fused multiply-adds
/// become calls to the C library's `fmaf`). The runtime's own routines
/// choose AVX-512 or AVX2 at run time. The object and the library
/// declare that level (read with the `object` crate).
#[test]
fn the_default_target_uses_avx2_and_fma_but_not_avx512() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let dir = common::temp_dir("aot-target");
    let model = root()
        .join("tests/fixtures/aot/lstm_pow.nn")
        .display()
        .to_string();
    for (cpu, out) in [("x86-64-v3", "v3.so"), ("x86-64-v2", "v2.so")] {
        let o = nnc(
            &[
                "compile",
                &model,
                "--dim",
                "B=2",
                "--target-cpu",
                cpu,
                "-o",
                out,
                "--name",
                "m",
                "--keep-temps",
            ],
            &dir,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let dis = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn", "m.kernels.o"])
            .current_dir(&dir)
            .output()
            .expect("objdump");
        let text = String::from_utf8_lossy(&dis.stdout);
        assert!(text.contains("m__nnc_k0"), "{text}");
        assert!(
            !text.contains("zmm") && !text.contains("%k1"),
            "{cpu}: AVX-512 in the kernels"
        );
        match cpu {
            "x86-64-v3" => assert!(text.contains("vfmadd"), "{cpu}: no FMA"),
            _ => {
                assert!(
                    !text.contains("vfmadd") && !text.contains("ymm"),
                    "{cpu}: AVX in the kernels"
                );
                assert!(
                    !text.lines().any(|l| l
                        .trim_start()
                        .split('\t')
                        .nth(1)
                        .is_some_and(|i| i.starts_with('v'))),
                    "{cpu}: a VEX instruction"
                );
            }
        }
        // The level is declared in the object and kept in the library, so
        // the loader refuses it on a CPU below it.
        let want = match cpu {
            "x86-64-v3" => object::elf::GNU_PROPERTY_X86_ISA_1_V3,
            _ => object::elf::GNU_PROPERTY_X86_ISA_1_V2,
        };
        for file in ["m.kernels.o", out] {
            assert_eq!(isa_needed(&dir.join(file)), Some(want), "{cpu}: {file}");
        }
        std::fs::remove_file(dir.join("m.kernels.o")).expect("kernels.o");
    }
}

/// The "x86 ISA needed" property of an ELF file's `.note.gnu.property`.
fn isa_needed(path: &Path) -> Option<u32> {
    use object::read::elf::{ElfFile64, FileHeader, SectionHeader};
    let data = std::fs::read(path).expect("an ELF file");
    let elf = ElfFile64::<object::Endianness>::parse(&*data).expect("ELF");
    let endian = elf.endian();
    let sections = elf.elf_header().sections(endian, &*data).expect("sections");
    for section in sections.iter() {
        let Some(mut notes) = section.notes(endian, &*data).expect("notes") else {
            continue;
        };
        while let Some(note) = notes.next().expect("a note") {
            let Some(mut props) = note.gnu_properties(endian) else {
                continue;
            };
            while let Some(p) = props.next().expect("a property") {
                if p.pr_type() == object::elf::GNU_PROPERTY_X86_ISA_1_NEEDED {
                    return Some(p.data_u32(endian).expect("a u32"));
                }
            }
        }
    }
    None
}

/// A folder holding `mlp.so` and `mlp.h`: examples/bench/mlp_infer.nn
/// compiled for `batch` rows.
fn mlp_library(name: &str, batch: usize) -> common::TempDir {
    let dir = common::temp_dir(name);
    let model = root().join("examples/bench/mlp_infer.nn");
    let dim = format!("B={batch}");
    let args = [
        "compile",
        &model.display().to_string(),
        "--dim",
        &dim,
        "-o",
        "mlp.so",
    ];
    let o = nnc(&args, &dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    dir
}

/// Eight threads share one loaded model, each running through a context
/// of its own (`NAME_context_new`), twenty times on inputs of its own:
/// every output is the one the model gives on one thread.
#[test]
fn eight_threads_with_their_own_contexts_give_the_single_thread_outputs() {
    let dir = mlp_library("aot-threads", 4);
    let main = r#"#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "mlp.h"

#define THREADS 8
static mlp_model *shared;
static float x[THREADS][MLP_MLP_X_LEN], want[THREADS][MLP_LOGITS_LEN];
static int bad[THREADS];

static void *work(void *arg) {
    int t = (int)(size_t)arg;
    mlp_model *c = mlp_context_new(shared);
    float y[MLP_LOGITS_LEN];
    if (!c) { bad[t] = -1; return NULL; }
    for (int r = 0; r < 20; r++) {
        if (mlp_run(c, x[t], y) != MLP_OK || memcmp(y, want[t], sizeof y) != 0) bad[t]++;
    }
    mlp_free(c);
    return NULL;
}

int main(void) {
    shared = mlp_new();
    if (!shared) return 1;
    for (int t = 0; t < THREADS; t++) {
        for (int i = 0; i < MLP_MLP_X_LEN; i++) x[t][i] = (float)((i * 7 + t * 5) % 11) / 11.0f;
        if (mlp_run(shared, x[t], want[t]) != MLP_OK) return 2;
    }
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, work, (void *)(size_t)t);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    int total = 0;
    for (int t = 0; t < THREADS; t++) total += bad[t];
    printf("%d runs differed\n", total);
    printf("distinct: %d\n", memcmp(want[0], want[1], sizeof want[0]) != 0);
    mlp_free(shared);
    return 0;
}
"#;
    let out = run_c(&dir, main, &["./mlp.so"]);
    assert_eq!(out.trim(), "0 runs differed\ndistinct: 1");
}

/// A context shares its model's weights rather than copying them: once
/// the model loads weights twice as large (every layer's; the biases are
/// zeros), the context created before gives logits 2³ times the first
/// (exactly: a ReLU MLP without bias, scaled by powers of two). A context
/// cannot change the weights it shares.
#[test]
fn a_context_reads_its_models_weights_and_cannot_change_them() {
    let dir = mlp_library("aot-context-shares", 2);
    let save = r#"#include "mlp.h"
int main(void) {
    mlp_model *m = mlp_new();
    return !m || mlp_save_params(m, "w.safetensors") != MLP_OK;
}
"#;
    run_c(&dir, save, &["./mlp.so"]);
    let (tensors, meta) = nnc::train::checkpoint::load(&dir.join("w.safetensors")).expect("loads");
    let doubled: Vec<(String, nnc::tensor::Tensor)> = tensors
        .into_iter()
        .map(|(name, mut t)| {
            t.data.iter_mut().for_each(|v| *v *= 2.0);
            (name, t)
        })
        .collect();
    let refs: Vec<(String, &nnc::tensor::Tensor)> =
        doubled.iter().map(|(n, t)| (n.clone(), t)).collect();
    nnc::train::checkpoint::save(&dir.join("w2.safetensors"), &refs, &meta).expect("saves");
    let main = r#"#include <stdio.h>
#include <string.h>
#include "mlp.h"

int main(void) {
    static float x[MLP_MLP_X_LEN], y1[MLP_LOGITS_LEN], y2[MLP_LOGITS_LEN];
    for (int i = 0; i < MLP_MLP_X_LEN; i++) x[i] = (float)(i % 9) / 9.0f;
    mlp_model *m = mlp_new();
    mlp_model *c = m ? mlp_context_new(m) : NULL;
    if (!c || mlp_run(c, x, y1) != MLP_OK) return 1;
    int refused = mlp_load_params(c, "w2.safetensors");
    printf("context load_params: %d %d\n", refused == MLP_ERR_ARGUMENT,
           strstr(mlp_last_error(), "shares its model's weights") != NULL);
    if (mlp_load_params(m, "w2.safetensors") != MLP_OK || mlp_run(c, x, y2) != MLP_OK) return 2;
    int scaled = 0, nonzero = 0;
    for (int i = 0; i < MLP_LOGITS_LEN; i++) {
        scaled += y2[i] == 8.0f * y1[i];
        nonzero += y1[i] != 0.0f;
    }
    printf("%d of %d logits scaled by 8, %d nonzero\n", scaled, MLP_LOGITS_LEN, nonzero > 0);
    mlp_free(c);
    mlp_free(m);
    return 0;
}
"#;
    let out = run_c(&dir, main, &["./mlp.so"]);
    assert_eq!(
        out.trim(),
        "context load_params: 1 1\n20 of 20 logits scaled by 8, 1 nonzero"
    );
}

/// An input's or output's shape in a header, `None` where it holds the
/// row dimension `B`.
type RowShape = (String, Vec<Option<usize>>);

fn row_shapes(header: &str) -> (Vec<RowShape>, Vec<RowShape>) {
    let (mut ins, mut outs) = (Vec::new(), Vec::new());
    for line in header.lines() {
        for (kind, list) in [("/* input `", &mut ins), ("/* output `", &mut outs)] {
            if let Some(rest) = line.strip_prefix(kind) {
                let (name, shape) = rest.split_once("`: [").expect("a shape");
                let dims = shape.split(']').next().expect("dims");
                let dims = dims
                    .split(", ")
                    .filter(|d| !d.is_empty())
                    .map(|d| (d != "B").then(|| d.parse::<usize>().expect("a number")))
                    .collect();
                list.push((name.to_string(), dims));
            }
        }
    }
    (ins, outs)
}

/// Around the row axis (none: the whole array, one "row"): the elements
/// before it and after it.
fn outer_inner(shape: &[Option<usize>]) -> (usize, usize, bool) {
    match shape.iter().position(|d| d.is_none()) {
        Some(a) => (
            shape[..a].iter().flatten().product(),
            shape[a + 1..].iter().flatten().product(),
            true,
        ),
        None => (1, shape.iter().flatten().product(), false),
    }
}

/// A symbolic batch left without a size takes any size at run time:
/// for every batch size from 1 to 64, each row of the outputs is the row
/// that running its example alone gives (within 1e-5 relative: the
/// library cuts the rows into the chunks it compiled, 64, 32, …, 1, and a
/// GEMM of one row sums in another order than one of many), and the 64-row outputs are the
/// interpreter's and the JIT's. Dense layers, convolutions, an LSTM,
/// attention, a graph network's gather, rows on a middle axis and an
/// output the same for every row.
#[test]
fn any_batch_size_gives_the_rows_of_each_example_alone() {
    const N: usize = 64;
    for (file, name) in [
        ("examples/bench/mlp_infer.nn", "mlp"),
        ("examples/lenet_mnist.nn", "lenet"),
        ("tests/fixtures/aot/lstm_pow.nn", "lstm"),
        ("examples/transformer_reverse.nn", "tr"),
        ("examples/gcn_karate.nn", "gcn"),
        ("tests/fixtures/aot/rows_axis.nn", "seq"),
    ] {
        let dir = common::temp_dir(&format!("aot-rows_{name}"));
        let model = root().join(file).display().to_string();
        let o = nnc(
            &[
                "compile",
                &model,
                "-o",
                &format!("{name}.so"),
                "--name",
                name,
            ],
            &dir,
        );
        assert!(
            o.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let header = std::fs::read_to_string(dir.join(format!("{name}.h"))).expect("header");
        assert!(
            header.contains(&format!("int {name}_run({name}_model *m, size_t B,")),
            "{file}: {header}"
        );
        let (ins, outs) = row_shapes(&header);
        let table = |list: &[RowShape]| {
            let cols: Vec<(usize, usize, bool)> =
                list.iter().map(|(_, s)| outer_inner(s)).collect();
            let f = |k: usize| -> Vec<String> {
                cols.iter()
                    .map(|c| match k {
                        0 => c.0.to_string(),
                        1 => c.1.to_string(),
                        _ => u8::from(c.2).to_string(),
                    })
                    .collect()
            };
            format!(
                "{{{}}}, {{{}}}, {{{}}}",
                f(0).join(", "),
                f(1).join(", "),
                f(2).join(", ")
            )
        };
        let (ni, no) = (ins.len(), outs.len());
        let mut args = vec!["m".to_string(), "b".into()];
        args.extend((0..ni).map(|k| format!("in[{k}]")));
        args.extend((0..no).map(|k| format!("out[{k}]")));
        let c = format!(
            r#"#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "{name}.h"

#define N {N}
struct io {{ size_t outer[{ni_}], inner[{ni_}]; int rows[{ni_}]; }};
struct oo {{ size_t outer[{no}], inner[{no}]; int rows[{no}]; }};
static const struct io I = {{{it}}};
static const struct oo O = {{{ot}}};

static size_t len(size_t outer, size_t inner, int rows, size_t b) {{ return outer * inner * (rows ? b : 1); }}

/* Rows from..from+b of an array of N rows (or all of one without rows). */
static void take(float *dst, const float *src, size_t outer, size_t inner, int rows, size_t b, size_t from) {{
    if (!rows) {{ memcpy(dst, src, outer * inner * sizeof(float)); return; }}
    for (size_t o = 0; o < outer; o++)
        memcpy(dst + o * b * inner, src + (o * N + from) * inner, b * inner * sizeof(float));
}}

int main(void) {{
    FILE *f = fopen("in.bin", "rb");
    if (!f) return 2;
    float *full[{ni_}], *in[{ni_}], *out[{no}], *alone[{no}];
    for (int k = 0; k < {ni}; k++) {{
        size_t n = len(I.outer[k], I.inner[k], I.rows[k], N);
        full[k] = malloc(n * sizeof(float));
        in[k] = malloc(n * sizeof(float));
        if (fread(full[k], sizeof(float), n, f) != n) return 2;
    }}
    fclose(f);
    for (int k = 0; k < {no}; k++) {{
        out[k] = malloc(len(O.outer[k], O.inner[k], O.rows[k], N) * sizeof(float));
        alone[k] = malloc(len(O.outer[k], O.inner[k], O.rows[k], N) * sizeof(float));
    }}
    {name}_model *m = {name}_new();
    if (!m) return 3;
    size_t b = 1;
    /* Each example alone: row r of `alone`. */
    for (size_t r = 0; r < N; r++) {{
        for (int k = 0; k < {ni}; k++) take(in[k], full[k], I.outer[k], I.inner[k], I.rows[k], 1, r);
        if ({name}_run({args}) != {up}_OK) {{ printf("run 1: %s\n", {name}_last_error()); return 4; }}
        for (int k = 0; k < {no}; k++) {{
            if (!O.rows[k]) {{ memcpy(alone[k], out[k], O.outer[k] * O.inner[k] * sizeof(float)); continue; }}
            for (size_t o = 0; o < O.outer[k]; o++)
                memcpy(alone[k] + (o * N + r) * O.inner[k], out[k] + o * O.inner[k], O.inner[k] * sizeof(float));
        }}
    }}
    double worst = 0;
    for (b = 1; b <= N; b++) {{
        for (int k = 0; k < {ni}; k++) take(in[k], full[k], I.outer[k], I.inner[k], I.rows[k], b, 0);
        if ({name}_run({args}) != {up}_OK) {{ printf("run %zu: %s\n", b, {name}_last_error()); return 4; }}
        for (int k = 0; k < {no}; k++) {{
            float *want = malloc(len(O.outer[k], O.inner[k], O.rows[k], b) * sizeof(float));
            take(want, alone[k], O.outer[k], O.inner[k], O.rows[k], b, 0);
            for (size_t i = 0; i < len(O.outer[k], O.inner[k], O.rows[k], b); i++) {{
                double d = fabs((double)out[k][i] - want[i]) / fmax(1.0, fabs(want[i]));
                if (!(d <= worst)) worst = d;
            }}
            free(want);
        }}
    }}
    FILE *w = fopen("out.bin", "wb");
    for (int k = 0; k < {no}; k++) fwrite(out[k], sizeof(float), len(O.outer[k], O.inner[k], O.rows[k], N), w);
    fclose(w);
    printf("worst %g\n", worst);
    {name}_free(m);
    return 0;
}}
"#,
            ni_ = ni.max(1),
            it = table(&ins),
            ot = table(&outs),
            args = args.join(", "),
            up = name.to_uppercase(),
        );
        let values: Vec<(String, Vec<f32>)> = ins
            .iter()
            .enumerate()
            .map(|(k, (n, s))| {
                let (outer, inner, rows) = outer_inner(s);
                (
                    n.clone(),
                    input_values(outer * inner * if rows { N } else { 1 }, k),
                )
            })
            .collect();
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()))
            .collect();
        std::fs::write(dir.join("in.bin"), bytes).expect("in.bin");
        let printed = run_c(&dir, &c, &[&format!("./{name}.so"), "-lm"]);
        let worst: f64 = printed
            .trim()
            .strip_prefix("worst ")
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{file}: {printed}"));
        // The GEMM sums in another order for one row than for a block of
        // rows: equal to rounding, not bit for bit.
        eprintln!("{file}: worst relative difference from the examples alone {worst:e}");
        assert!(
            worst <= 1e-5,
            "{file}: a row differs from its example alone by {worst}"
        );
        let dims = [("B".to_string(), N)];
        let got = read_floats(&dir.join("out.bin"));
        assert_close(&got, &reference(file, &dims, &values, None), file);
        assert_as_jit(
            &got,
            &run_on(BackendKind::Jit, file, &dims, &values, None),
            file,
        );
    }
}

/// Whether `qemu-x86_64` can run programs here (it emulates the CPUs
/// below); in CI (`NNC_REQUIRE_QEMU`) its absence fails the test.
fn qemu_x86() -> bool {
    let found = Command::new("qemu-x86_64").arg("--version").output();
    match found.is_ok_and(|o| o.status.success()) {
        true => true,
        false if std::env::var_os("NNC_REQUIRE_QEMU").is_some() => {
            panic!("no qemu-x86_64 (Debian: qemu-user)")
        }
        false => {
            eprintln!("skipped: no qemu-x86_64 (Debian: qemu-user)");
            false
        }
    }
}

/// A library built for the default target (x86-64-v3) runs on a CPU
/// without AVX-512 — `qemu-x86_64 -cpu Haswell`, AVX2 and FMA, where the
/// runtime's routines choose their AVX2 code — and gives the
/// interpreter's outputs; on a CPU below its level (`-cpu Nehalem`,
/// x86-64-v2) the loader refuses it with a message, and the same model
/// built with `--target-cpu x86-64-v2` runs there and agrees.
#[test]
fn a_portable_library_runs_without_avx512_and_is_refused_below_its_level() {
    if !cfg!(target_arch = "x86_64") || !qemu_x86() {
        return;
    }
    let dir = common::temp_dir("aot-portable");
    let file = "tests/fixtures/aot/lstm_pow.nn";
    let model = root().join(file).display().to_string();
    let mut built = Vec::new();
    for (name, cpu) in [("v3", None), ("v2", Some("x86-64-v2"))] {
        let mut args = vec!["compile", &model, "--dim", "B=3", "--name", name, "-o"];
        let out = format!("{name}.so");
        args.push(&out);
        if let Some(c) = cpu {
            args.extend(["--target-cpu", c]);
        }
        let o = nnc(&args, &dir);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let header = std::fs::read_to_string(dir.join(format!("{name}.h"))).expect("header");
        let (ins, outs) = declared(&header);
        std::fs::write(dir.join("main.c"), harness(name, &ins, &outs)).expect("main.c");
        let cc = Command::new("cc")
            .args([
                "-std=c99",
                "-Wall",
                "-Werror",
                "-o",
                name,
                "main.c",
                &format!("./{out}"),
            ])
            .arg("-Wl,-rpath,$ORIGIN")
            .current_dir(&dir)
            .output()
            .expect("cc");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        built.push((name, ins));
    }
    let (_, ins) = &built[0];
    let values = write_inputs(&dir, ins);
    let want = reference(file, &[("B".to_string(), 3)], &values, None);
    let emulate = |cpu: &str, program: &str| {
        let _ = std::fs::remove_file(dir.join("out.bin"));
        Command::new("qemu-x86_64")
            .args(["-cpu", cpu, &format!("./{program}")])
            .current_dir(&dir)
            .output()
            .expect("qemu-x86_64")
    };
    for (cpu, program) in [("Haswell", "v3"), ("Haswell", "v2"), ("Nehalem", "v2")] {
        let ran = emulate(cpu, program);
        assert!(
            ran.status.success(),
            "{program} on {cpu}: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
        let got = read_floats(&dir.join("out.bin"));
        assert_close(&got, &want, &format!("{file}: {program} on {cpu}"));
    }
    let refused = emulate("Nehalem", "v3");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "v3 ran on Nehalem");
    assert!(
        err.contains("CPU ISA level is lower than required"),
        "{err}"
    );
}

/// What running AArch64 code here needs: the cross C compiler, the
/// emulator and nnc's runtime built for AArch64 (`NNC_RUNTIME_AARCH64`,
/// else `cargo build --release --lib --target aarch64-unknown-linux-gnu`'s
/// output in this tree). `None` with the reason when one is missing.
fn aarch64_tools() -> Result<PathBuf, String> {
    for tool in ["aarch64-linux-gnu-gcc", "qemu-aarch64"] {
        let found = Command::new(tool).arg("--version").output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Err(format!(
                "no `{tool}` (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)"
            ));
        }
    }
    let runtime = std::env::var_os("NNC_RUNTIME_AARCH64")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/aarch64-unknown-linux-gnu/release/libnnc.a"));
    match runtime.is_file() {
        true => Ok(runtime),
        false => Err(format!(
            "no AArch64 runtime at {} (rustup target add aarch64-unknown-linux-gnu; \
             cargo build --release --lib --target aarch64-unknown-linux-gnu)",
            runtime.display()
        )),
    }
}

/// `--target aarch64-unknown-linux-gnu` output, linked with the runtime
/// built for AArch64 by the Debian cross compiler, runs under
/// `qemu-aarch64`: the digits C example prints the host library's line
/// (the same rows classified right), and the outputs of the digits MLP
/// and of an LSTM with powers and transcendentals are the interpreter's.
/// Skipped, saying why, where the tools are missing; `.ci/run` installs
/// them and sets `NNC_REQUIRE_AARCH64`.
#[test]
fn aarch64_libraries_run_under_qemu_and_agree_with_the_host() {
    let runtime = match aarch64_tools() {
        Ok(r) => r,
        Err(why) if std::env::var_os("NNC_REQUIRE_AARCH64").is_some() => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = common::temp_dir("aot-qemu");
    let digits = root().join("examples/digits_mlp.nn").display().to_string();
    let csv = root().join("examples/data/digits.csv");
    let cross_link = |name: &str, program: &Path, out: &str| {
        let cc = Command::new("aarch64-linux-gnu-gcc")
            .args(["-std=c99", "-Wall", "-Werror", "-O2", "-I.", "-o", out])
            .arg(program)
            .args([&format!("{name}.c"), &format!("{name}.o")])
            .arg(&runtime)
            .args(["-Wl,--gc-sections", "-lpthread", "-ldl", "-lm"])
            .current_dir(&dir)
            .output()
            .expect("aarch64-linux-gnu-gcc");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
    };
    let qemu = |program: &str, args: &[&Path]| {
        let ran = Command::new("qemu-aarch64")
            .args(["-L", "/usr/aarch64-linux-gnu"])
            .arg(program)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("qemu-aarch64");
        let out = String::from_utf8_lossy(&ran.stdout).into_owned();
        assert!(
            ran.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&ran.stderr)
        );
        out
    };
    // The C example, one image at a time, on the host and on AArch64.
    for out in ["digits.so", "digits.o"] {
        let mut args = vec!["compile", digits.as_str(), "--dim", "B=1", "-o", out];
        if out.ends_with(".o") {
            args.extend(["--target", "aarch64-unknown-linux-gnu"]);
        }
        let o = nnc(&args, &dir);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let cc = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Werror", "-I.", "-o", "classify-host"])
        .arg(root().join("examples/aot/digits.c"))
        .args(["./digits.so", "-Wl,-rpath,$ORIGIN"])
        .current_dir(&dir)
        .output()
        .expect("cc");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let ran = Command::new(dir.join("classify-host"))
        .arg(&csv)
        .current_dir(&dir)
        .output()
        .expect("classify");
    let host = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert!(host.starts_with("1797 rows"), "{host}");
    cross_link("digits", &root().join("examples/aot/digits.c"), "classify");
    assert_eq!(qemu("./classify", &[&csv]), host);
    // Every output element against the interpreter.
    for (file, name, b) in [
        ("examples/digits_mlp.nn", "mlp", 5),
        ("tests/fixtures/aot/lstm_pow.nn", "lstm", 3),
    ] {
        let model = root().join(file).display().to_string();
        let o = nnc(
            &[
                "compile",
                &model,
                "--dim",
                &format!("B={b}"),
                "--target",
                "aarch64-unknown-linux-gnu",
                "-o",
                &format!("{name}.o"),
            ],
            &dir,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let header = std::fs::read_to_string(dir.join(format!("{name}.h"))).expect("header");
        let (ins, outs) = declared(&header);
        let values = write_inputs(&dir, &ins);
        std::fs::write(dir.join("harness.c"), harness(name, &ins, &outs)).expect("harness.c");
        cross_link(name, &dir.join("harness.c"), "harness");
        qemu("./harness", &[]);
        let dims = [("B".to_string(), b)];
        let got = read_floats(&dir.join("out.bin"));
        assert_close(&got, &reference(file, &dims, &values, None), file);
    }
}

/// A model trained with `scale = standardize` carries its learnt means
/// and deviations in its weights: the library built with them gives what
/// `nnc run` gives with the checkpoint (the JIT, 1e-6; the interpreter,
/// 1e-4) — and not what the same weights give unscaled.
#[test]
fn a_learnt_scaling_is_embedded_with_the_weights() {
    let dir = common::temp_dir("aot-standardize");
    let data = root().join("examples/data/iris.csv");
    let src = std::fs::read_to_string(root().join("examples/iris.nn"))
        .expect("example")
        .replace("data/iris.csv", &data.display().to_string())
        .replace("scale = 1/8", "scale = standardize");
    assert!(src.contains("standardize"));
    let file = dir.join("iris_std.nn");
    std::fs::write(&file, &src).expect("model");
    let file = file.display().to_string();
    let o = nnc(
        &["train", &file, "--epochs", "3", "--save", "w.safetensors"],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = nnc(
        &[
            "compile",
            &file,
            "--dim",
            "B=3",
            "--params",
            "w.safetensors",
            "-o",
            "iris_std.so",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let header = std::fs::read_to_string(dir.join("iris_std.h")).expect("header");
    let (ins, outs) = declared(&header);
    assert_eq!(ins.len(), 1, "{header}");
    // Measurements in centimetres, as the data file has them.
    let values = vec![(
        ins[0].0.clone(),
        vec![5.1, 3.5, 1.4, 0.2, 6.2, 2.9, 4.3, 1.3, 7.7, 3.0, 6.1, 2.3],
    )];
    let bytes: Vec<u8> = values[0]
        .1
        .iter()
        .flat_map(|v: &f32| v.to_le_bytes())
        .collect();
    std::fs::write(dir.join("in.bin"), bytes).expect("in.bin");
    run_c(&dir, &harness("iris_std", &ins, &outs), &["./iris_std.so"]);
    let got = read_floats(&dir.join("out.bin"));
    let c = pipeline::compile(&file, &src, Stage::Ir);
    let g = nnc::aot::library_graph(c.graph.as_ref().expect("graph"), c.train.as_ref())
        .expect("library graph");
    let mut params = interp::init_params(&g, 0);
    nnc::train::restore(&g, &mut params, &dir.join("w.safetensors")).expect("weights");
    let dims = [("B".to_string(), 3)];
    assert_as_jit(
        &got,
        &run_on(BackendKind::Jit, &file, &dims, &values, Some(&params)),
        "standardized",
    );
    assert_close(
        &got,
        &reference(&file, &dims, &values, Some(&params)),
        "standardized",
    );
    // The same weights without the scaling (center 0, spread 1).
    let mut unscaled = params.clone();
    for (id, p) in g.params.iter() {
        if p.name.starts_with("standardize.") {
            let fill = if p.name.ends_with(".std") { 1.0 } else { 0.0 };
            unscaled[id].data.iter_mut().for_each(|v| *v = fill);
        }
    }
    let plain = reference(&file, &dims, &values, Some(&unscaled));
    let differs = plain[0]
        .data
        .iter()
        .zip(&got)
        .any(|(a, b)| (a - b).abs() > 1e-3);
    assert!(differs, "the scaling changes the outputs");
}

/// A learning rate that varies: `NAME_set_epoch` sets the epoch the
/// schedule reads and the steps count the warmup, so three steps from C
/// (two in epoch 0, one in epoch 1) leave the weights the interpreter's
/// steps leave when fed the rates `nnc train` feeds. A plateau schedule,
/// which follows a validation loss, is refused.
#[test]
fn a_varying_learning_rate_follows_the_epoch_set_from_c() {
    let dir = common::temp_dir("aot-lr");
    let src = std::fs::read_to_string(root().join("examples/digits_mlp.nn"))
        .expect("example")
        .replace(
            "optimizer = adam(lr = 2e-3)",
            "optimizer = adam(lr = 2e-3, schedule = step(every = 1, gamma = 0.5), warmup = 2)",
        );
    assert!(src.contains("warmup = 2"));
    std::fs::write(dir.join("digits.nn"), &src).expect("write");
    let o = nnc(
        &["compile", "digits.nn", "--dim", "B=8", "-o", "digits.so"],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("int digits_set_epoch(digits_model *m, unsigned long long epoch)"),
        "{stdout}"
    );
    let batches = digits_batches(&dir);
    let main = r#"#include <stdio.h>
#include "digits.h"

int main(void) {
    static float x[DIGITS_MLP_X_LEN], y[DIGITS_MLP_Y_LEN];
    const unsigned long long epochs[3] = {0, 0, 1};
    float loss;
    FILE *in = fopen("in.bin", "rb");
    digits_model *m = digits_new();
    if (!in || !m) return 2;
    for (int s = 0; s < 3; s++) {
        if (fread(x, sizeof(float), DIGITS_MLP_X_LEN, in) != DIGITS_MLP_X_LEN) return 3;
        if (fread(y, sizeof(float), DIGITS_MLP_Y_LEN, in) != DIGITS_MLP_Y_LEN) return 3;
        if (digits_set_epoch(m, epochs[s]) != DIGITS_OK) return 4;
        if (digits_train_step(m, x, y, &loss) != DIGITS_OK) {
            fprintf(stderr, "step: %s\n", digits_last_error());
            return 4;
        }
    }
    if (digits_save_params(m, "after.safetensors") != DIGITS_OK) return 5;
    int rc = digits_set_epoch(NULL, 1);
    printf("null: %d %s\n", rc, digits_last_error());
    digits_free(m);
    return 0;
}
"#;
    let out = run_c(&dir, main, &["./digits.so"]);
    assert!(out.contains("null: 1 set_epoch: a null model"), "{out}");
    // The interpreter, fed the rate of each (epoch, step).
    let c = pipeline::compile("digits.nn", &src, Stage::Ir);
    let (g, t) = (c.graph.expect("graph"), c.train.expect("train block"));
    let steps = pipeline::train_steps(&g, &t).expect("step graph");
    let sg = &steps[0].step.graph;
    let (lr_id, _) = sg
        .inputs
        .iter()
        .find(|(_, i)| i.name.starts_with(nnc::ir::LR_INPUT_PREFIX))
        .expect("a learning-rate input");
    let mut params = interp::init_params(sg, 0);
    let mut rates = Vec::new();
    for (s, ((x, y), epoch)) in batches.iter().zip([0u64, 0, 1]).enumerate() {
        let mut inputs = SecondaryMap::new();
        for (name, data, width) in [("Mlp.x", x, 64), ("Mlp.y", y, 10)] {
            let (id, _) = sg
                .inputs
                .iter()
                .find(|(_, i)| i.name == name)
                .expect("input");
            inputs[id] = Some(Tensor::new(vec![8, width], data.clone()));
        }
        let rate = t.optimizer.rate(epoch, s as u64, 1.0);
        rates.push(rate);
        inputs[lr_id] = Some(Tensor::scalar(rate));
        Engine::new(BackendKind::Interp, sg)
            .step(&mut params, &inputs)
            .expect("interpreter step");
    }
    // Warmup's halves, then the step schedule's halving at epoch 1.
    assert_eq!(rates, [1e-3, 2e-3, 1e-3]);
    let (saved, _) = nnc::train::checkpoint::load(&dir.join("after.safetensors")).expect("saved");
    for (id, p) in sg.params.iter() {
        let got = &saved[&p.name];
        for (k, (&a, &b)) in got.data.iter().zip(&params[id].data).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{}[{k}]: library {a}, interpreter {b}",
                p.name
            );
        }
    }
    // Plateau schedules are refused.
    let plateau = src.replace(
        "schedule = step(every = 1, gamma = 0.5), warmup = 2",
        "schedule = reduce_on_plateau()",
    );
    std::fs::write(dir.join("plateau.nn"), plateau).expect("write");
    let o = nnc(
        &["compile", "plateau.nn", "--dim", "B=8", "-o", "plateau.so"],
        &dir,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`reduce_on_plateau` follows the validation loss"),
        "{err}"
    );
    assert!(!dir.join("plateau.so").exists());
}
