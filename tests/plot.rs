//! Pictures: `nnc compile --emit dot|dot-ir|dot-grad` (Graphviz text,
//! snapshot and parsed) and `nnc plot` / `nnc train --plot` (an SVG
//! parsed as XML, a PNG decoded).

mod common;

use common::{nnc, temp_dir, text};
use graphviz_rust::dot_structures::{EdgeTy, Graph, Id, Stmt, Vertex};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const EMITS: [&str; 3] = ["dot-ir", "dot-grad", "dot"];

fn emit(file: &str, what: &str) -> std::process::Output {
    nnc(&["--color", "never", "compile", file, "--emit", what])
}

fn emitted(file: &str, what: &str) -> String {
    let o = emit(file, what);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{file} {what}: {}",
        text(&o.stderr)
    );
    text(&o.stdout)
}

#[test]
fn dot_snapshots() {
    for name in ["xor", "gru_sine"] {
        for what in EMITS {
            let dot = emitted(&format!("examples/{name}.nn"), what);
            insta::assert_snapshot!(format!("{name}_{}", what.replace('-', "_")), dot);
        }
    }
}

/// What a parsed `dot` file declares.
#[derive(Default)]
struct Declared {
    /// Node id → how many times it is declared.
    nodes: BTreeMap<String, usize>,
    /// Edges (from, to).
    edges: Vec<(String, String)>,
    /// Cluster ids (`cluster_` taken off), with their labels.
    clusters: Vec<(String, String)>,
}

fn plain(id: &Id) -> String {
    match id {
        Id::Plain(s) | Id::Escaped(s) | Id::Html(s) | Id::Anonymous(s) => s.clone(),
    }
}

fn walk(stmts: &[Stmt], out: &mut Declared) {
    for s in stmts {
        match s {
            Stmt::Node(n) => *out.nodes.entry(plain(&n.id.0)).or_default() += 1,
            Stmt::Edge(e) => {
                let vertex = |v: &Vertex| match v {
                    Vertex::N(n) => plain(&n.0),
                    Vertex::S(_) => panic!("nnc draws edges between nodes only"),
                };
                match &e.ty {
                    EdgeTy::Pair(a, b) => out.edges.push((vertex(a), vertex(b))),
                    EdgeTy::Chain(_) => panic!("nnc draws one edge a statement"),
                }
            }
            Stmt::Subgraph(g) => {
                let id = plain(&g.id);
                let id = id
                    .strip_prefix("cluster_")
                    .expect("every subgraph is a cluster");
                let label = g.stmts.iter().find_map(|s| match s {
                    Stmt::Attribute(a) if plain(&a.0) == "label" => Some(plain(&a.1)),
                    _ => None,
                });
                out.clusters
                    .push((id.to_string(), label.expect("a cluster has a label")));
                walk(&g.stmts, out);
            }
            Stmt::Attribute(_) | Stmt::GAttribute(_) => {}
        }
    }
}

/// Parses `dot` as Graphviz and checks what makes it well formed beyond
/// the grammar: one `digraph`, every node declared once, every edge
/// between declared nodes, cluster ids unique.
fn well_formed(dot: &str, what: &str) -> Declared {
    let graph = graphviz_rust::parse(dot).unwrap_or_else(|e| panic!("{what}: {e}\n{dot}"));
    let Graph::DiGraph { stmts, .. } = graph else {
        panic!("{what}: not a digraph");
    };
    let mut d = Declared::default();
    walk(&stmts, &mut d);
    assert!(!d.nodes.is_empty(), "{what}: no nodes");
    for (id, n) in &d.nodes {
        assert_eq!(*n, 1, "{what}: node {id} declared {n} times");
    }
    for (a, b) in &d.edges {
        assert!(
            d.nodes.contains_key(a) && d.nodes.contains_key(b),
            "{what}: edge {a} -> {b} between undeclared nodes"
        );
    }
    let ids: BTreeSet<&String> = d.clusters.iter().map(|c| &c.0).collect();
    assert_eq!(ids.len(), d.clusters.len(), "{what}: a cluster id twice");
    d
}

/// Every example, every graph: well formed, and the fused graph has one
/// cluster per kernel `--emit fused` lists (loop bodies' kernels, which
/// it does not list, aside), with the same kinds in the same order.
#[test]
fn every_example_emits_well_formed_dot_with_a_cluster_per_kernel() {
    let mut files: Vec<PathBuf> = std::fs::read_dir("examples")
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "nn"))
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    for f in &files {
        let file = f.to_str().expect("a UTF-8 path");
        for what in EMITS {
            let o = emit(file, what);
            if what == "dot-grad" && o.status.code() == Some(1) {
                // A file with no loss (neuron.nn) has no gradient graph.
                assert!(
                    text(&o.stderr).contains("nothing to differentiate"),
                    "{file}: {}",
                    text(&o.stderr)
                );
                continue;
            }
            assert_eq!(
                o.status.code(),
                Some(0),
                "{file} {what}: {}",
                text(&o.stderr)
            );
            let d = well_formed(&text(&o.stdout), &format!("{file} {what}"));
            if what != "dot" {
                continue;
            }
            let fused = emitted(file, "fused");
            let kernels: Vec<String> = fused
                .lines()
                .filter(|l| l.starts_with("kernel "))
                .map(|l| l.split(' ').nth(2).expect("a kind").to_lowercase())
                .collect();
            let top: Vec<String> = d
                .clusters
                .iter()
                .filter(|(id, _)| top_kernel(id))
                .map(|(_, label)| {
                    label
                        .trim_matches('"')
                        .rsplit(' ')
                        .next()
                        .expect("a kind")
                        .to_string()
                })
                .collect();
            assert_eq!(top, kernels, "{file}: the clusters of --emit dot");
        }
    }
}

/// Whether a cluster is a kernel of the program or of a phase (`k3`,
/// `p1_k3`), not a loop body's (`b0_k1`) or a phase (`p1`).
fn top_kernel(id: &str) -> bool {
    let rest = match id.split_once('_') {
        Some((p, rest)) if p.starts_with('p') => rest,
        Some(_) => return false,
        None => id,
    };
    rest.starts_with('k') && !rest.contains('_')
}

/// A file named with quotes and a backslash: the title stays one string.
#[test]
fn dot_escapes_quotes_and_backslashes() {
    let dir = temp_dir("dot-escape");
    let path = dir.join("my \"best\" \\ model.nn");
    std::fs::copy("examples/neuron.nn", &path).expect("copy");
    let o = emit(path.to_str().expect("UTF-8"), "dot-ir");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let dot = text(&o.stdout);
    assert!(
        dot.contains(r#"label="my \"best\" \\ model.nn: IR""#),
        "{dot}"
    );
    let Graph::DiGraph { stmts, .. } = graphviz_rust::parse(&dot).expect("dot") else {
        panic!("not a digraph");
    };
    let title = stmts.iter().find_map(|s| match s {
        Stmt::Attribute(a) if plain(&a.0) == "label" => Some(plain(&a.1)),
        _ => None,
    });
    assert_eq!(title.as_deref(), Some(r#""my \"best\" \\ model.nn: IR""#));
}

/// Loop bodies are kept in a hash map: the text must not depend on its
/// order (each run of the binary seeds it afresh).
#[test]
fn dot_is_the_same_every_run() {
    let first = emitted("examples/lstm_sine.nn", "dot");
    assert!(first.contains("(loop body)"), "{first}");
    for _ in 0..3 {
        assert_eq!(emitted("examples/lstm_sine.nn", "dot"), first);
    }
}

/// A file with two phases draws each as a cluster holding its kernels.
#[test]
fn phases_are_clusters_of_their_kernels() {
    let dot = emitted("examples/gan_mixture.nn", "dot");
    let d = well_formed(&dot, "gan");
    let phases: Vec<&str> = d
        .clusters
        .iter()
        .filter(|(id, _)| !id.contains('_'))
        .map(|(_, label)| label.as_str())
        .collect();
    assert_eq!(phases, [r#""phase discriminator""#, r#""phase generator""#]);
    assert!(d.clusters.iter().any(|(id, _)| id == "p1_k1"));
}

// ---------------------------------------------------------------- plot

/// Iris with metrics and a varying learning rate, its data path absolute.
fn iris_with_metrics(dir: &Path) -> PathBuf {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/iris.csv");
    let src = std::fs::read_to_string("examples/iris.nn")
        .expect("example")
        .replace("data/iris.csv", &data.display().to_string())
        .replace(
            "optimizer = adam(lr = 1e-2)",
            "optimizer = adam(lr = 1e-2, schedule = cosine(epochs = 6))\n  metrics = [accuracy, f1]",
        );
    assert!(src.contains("metrics = [accuracy, f1]"));
    let path = dir.join("iris.nn");
    std::fs::write(&path, src).expect("model");
    path
}

/// A log of a real six-epoch run: train_loss, val_loss, val_accuracy, lr
/// and val_f1.
fn training_log(dir: &Path) -> PathBuf {
    let model = iris_with_metrics(dir);
    let log = dir.join("metrics.jsonl");
    let o = nnc(&[
        "train",
        model.to_str().expect("UTF-8"),
        "--epochs",
        "6",
        "--log",
        log.to_str().expect("UTF-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    log
}

fn plot(log: &Path, out: &Path) -> std::process::Output {
    nnc(&[
        "--color",
        "never",
        "plot",
        log.to_str().expect("UTF-8"),
        "-o",
        out.to_str().expect("UTF-8"),
    ])
}

/// The panels of the iris log: loss (train and validation), accuracy,
/// lr, f1; two columns of 480 × 320 pixels.
const PANELS: [&str; 4] = ["loss", "accuracy", "lr", "f1"];
const SERIES: [&str; 5] = ["train_loss", "val_loss", "val_accuracy", "lr", "val_f1"];
const SIZE: (u32, u32) = (2 * 480, 2 * 320);

#[test]
fn plot_writes_an_svg_with_a_panel_per_figure_and_a_curve_per_series() {
    let dir = temp_dir("plot-svg");
    let log = training_log(&dir);
    let out = dir.join("curves.svg");
    let o = plot(&log, &out);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        format!(
            "wrote {}: loss, accuracy, lr, f1 (epochs 1 to 6)\n",
            out.display()
        )
    );
    let svg = std::fs::read_to_string(&out).expect("svg");
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.attribute("width"), Some(SIZE.0.to_string().as_str()));
    assert_eq!(root.attribute("height"), Some(SIZE.1.to_string().as_str()));
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    let count = |s: &str| texts.iter().filter(|t| **t == s).count();
    // Each panel's title above it and beside its y axis; each series in a
    // legend (`lr` is both); "epoch" under every panel.
    for p in PANELS.into_iter().filter(|p| *p != "lr") {
        assert_eq!(count(p), 2, "{p}: {texts:?}");
    }
    for s in SERIES.into_iter().filter(|s| *s != "lr") {
        assert_eq!(count(s), 1, "{s}: {texts:?}");
    }
    assert_eq!(count("lr"), 3, "{texts:?}");
    assert_eq!(count("epoch"), PANELS.len());
    // A curve per series: a line through all six epochs, in the colour of
    // its kind (training blue, validation orange, others green).
    let curves = |colour: &str| {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .filter(|n| n.attribute("stroke") == Some(colour))
            .filter(|n| {
                n.attribute("points")
                    .is_some_and(|p| p.split_whitespace().count() == 6)
            })
            .count()
    };
    assert_eq!(curves("#1F77B4"), 1, "train_loss");
    assert_eq!(curves("#FF7F0E"), 3, "val_loss, val_accuracy, val_f1");
    assert_eq!(curves("#2CA02C"), 1, "lr");
    no_temporaries(&dir);
}

/// Decodes a PNG: its size and RGB pixels.
fn decode(path: &Path) -> ((u32, u32), Vec<u8>) {
    let bytes = std::fs::read(path).expect("png");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("PNG pixels");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    pixels.truncate(info.buffer_size());
    ((info.width, info.height), pixels)
}

/// How many pixels have each colour.
fn colours(pixels: &[u8]) -> BTreeMap<[u8; 3], usize> {
    let mut m = BTreeMap::new();
    for p in pixels.chunks_exact(3) {
        *m.entry([p[0], p[1], p[2]]).or_default() += 1;
    }
    m
}

#[test]
fn plot_writes_a_png_with_curves_and_text() {
    let dir = temp_dir("plot-png");
    let log = training_log(&dir);
    let out = dir.join("curves.png");
    let o = plot(&log, &out);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let (size, pixels) = decode(&out);
    assert_eq!(size, SIZE);
    let c = colours(&pixels);
    // Mostly white paper; the series' colours drawn; black text and axes;
    // grey levels of anti-aliased glyphs (text needs the embedded font).
    let white = c.get(&[255, 255, 255]).copied().unwrap_or(0);
    assert!(white > pixels.len() / 3 / 2, "{white} white pixels");
    for colour in [[31, 119, 180], [255, 127, 14], [44, 160, 44], [0, 0, 0]] {
        assert!(
            c.get(&colour).copied().unwrap_or(0) > 50,
            "{colour:?}: {c:?}"
        );
    }
    let greys = c
        .keys()
        .filter(|[r, g, b]| r == g && g == b && *r > 0 && *r < 200)
        .count();
    assert!(greys > 20, "{greys} grey levels");
    no_temporaries(&dir);
}

/// `nnc train --plot` leaves the picture `nnc plot` draws from the log.
#[test]
fn train_plot_draws_what_plot_draws_from_the_log() {
    let dir = temp_dir("train-plot");
    let model = iris_with_metrics(&dir);
    let log = dir.join("m.jsonl");
    for picture in ["live.png", "live.svg"] {
        let o = nnc(&[
            "train",
            model.to_str().expect("UTF-8"),
            "--epochs",
            "6",
            "--log",
            log.to_str().expect("UTF-8"),
            "--plot",
            dir.join(picture).to_str().expect("UTF-8"),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    }
    let (size, pixels) = decode(&dir.join("live.png"));
    assert_eq!(size, SIZE);
    assert!(colours(&pixels).len() > 20);
    let o = plot(&log, &dir.join("after.svg"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.join("live.svg")).expect("svg"),
        std::fs::read_to_string(dir.join("after.svg")).expect("svg")
    );
    no_temporaries(&dir);
}

/// A resumed run's picture holds the epochs before it, from `--log`.
#[test]
fn train_plot_after_resume_keeps_the_earlier_epochs() {
    let dir = temp_dir("train-plot-resume");
    let model = iris_with_metrics(&dir);
    let arg = |p: &str| dir.join(p).display().to_string();
    let run = |epochs: &str, resume: bool| {
        let mut args = vec![
            "train".to_string(),
            model.display().to_string(),
            "--epochs".into(),
            epochs.into(),
            "--log".into(),
            arg("m.jsonl"),
            "--save".into(),
            arg("w.safetensors"),
            "--plot".into(),
            arg("c.svg"),
        ];
        if resume {
            args.extend(["--resume".into(), arg("w.safetensors")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = nnc(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    };
    run("3", false);
    run("6", true);
    let o = plot(&dir.join("m.jsonl"), &dir.join("after.svg"));
    assert!(
        text(&o.stdout).contains("(epochs 1 to 6)"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("c.svg")).expect("svg"),
        std::fs::read_to_string(dir.join("after.svg")).expect("svg")
    );
}

fn no_temporaries(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

fn plot_error(name: &str, log: Option<&str>) -> String {
    let dir = temp_dir(&format!("plot-error-{name}"));
    let path = dir.join("m.jsonl");
    if let Some(content) = log {
        std::fs::write(&path, content).expect("log");
    }
    let out = dir.join("c.svg");
    let o = plot(&path, &out);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(!out.exists(), "no picture after an error");
    text(&o.stderr).replace(&dir.display().to_string(), "DIR")
}

#[test]
fn plot_errors_are_diagnostics_with_hints() {
    let missing = plot_error("missing", None);
    assert!(
        missing.contains("error[E0301]: cannot read `DIR/m.jsonl`: no such file"),
        "{missing}"
    );
    assert!(missing.contains("help: give the file `nnc train --log FILE` wrote"));
    let empty = plot_error("empty", Some("\n\n"));
    assert!(empty.contains("`DIR/m.jsonl` is empty"), "{empty}");
    assert!(
        empty.contains("help: `nnc train --log FILE` writes a line"),
        "{empty}"
    );
    let cut = plot_error(
        "cut",
        Some("{\"epoch\":1,\"train_loss\":0.5}\n{\"epoch\":2,\"train_lo\n"),
    );
    assert!(cut.contains("DIR/m.jsonl:2: the line is not JSON"), "{cut}");
    assert!(cut.contains("help: a log holds one object a line"), "{cut}");
    let no_epoch = plot_error("no-epoch", Some("{\"note\":\"hello\"}\n"));
    assert!(
        no_epoch.contains("`DIR/m.jsonl` holds no epoch"),
        "{no_epoch}"
    );
    assert!(no_epoch.contains("help: an epoch's line has an `epoch` number"));
    let no_figure = plot_error("no-figure", Some("{\"epoch\":1,\"val_loss\":null}\n"));
    assert!(
        no_figure.contains("holds epochs but no figures"),
        "{no_figure}"
    );
}

#[test]
fn a_picture_of_another_kind_is_a_usage_error() {
    let o = nnc(&["plot", "m.jsonl", "-o", "curves.pdf"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("not .svg or .png (e.g. curves.svg or curves.png)"),
        "{err}"
    );
    let o = nnc(&["train", "examples/xor.nn", "--plot", "curves.jpg"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("not .svg or .png"));
}

#[test]
fn train_plot_into_a_missing_folder_fails_before_training() {
    let o = nnc(&[
        "--color",
        "never",
        "train",
        "examples/xor.nn",
        "--plot",
        "no/such/folder/c.png",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(
            "cannot write `no/such/folder/c.png`: the folder `no/such/folder` does not exist"
        ),
        "{err}"
    );
    assert!(!text(&o.stdout).contains("trained"), "{}", text(&o.stdout));
}

/// A picture that cannot be written (its path is a folder) is an error
/// once training ends; the training itself is reported.
#[test]
fn train_plot_that_cannot_be_written_fails_after_training() {
    let dir = temp_dir("train-plot-unwritable");
    let picture = dir.join("c.png");
    std::fs::create_dir(&picture).expect("a folder in the way");
    let o = nnc(&[
        "--color",
        "never",
        "train",
        "examples/xor.nn",
        "--epochs",
        "2",
        "--plot",
        picture.to_str().expect("UTF-8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("cannot write `{}`: ", picture.display())),
        "{err}"
    );
    assert!(err.contains("help: choose a folder that exists"), "{err}");
    assert!(
        text(&o.stdout).contains("trained 2 epochs"),
        "{}",
        text(&o.stdout)
    );
    no_temporaries(&dir);
}
