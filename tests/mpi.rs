//! Data-parallel training over MPI (`--features mpi`): two workers train
//! as one process does (the same parameters up to the order of the
//! gradients' sums; on the JIT, and on OpenCL where it runs), their
//! checkpoints resume anywhere, and a worker that fails stops them all
//! with its rank and its reason; one that hangs is named by the others,
//! which end the job.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::Command;

fn nnc_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(args)
        .current_dir(dir)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("nnc runs")
}

/// The digits MLP and its data in `dir`, the data file named `data`.
fn digits(dir: &Path, name: &str, data: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(root.join("examples/digits_mlp.nn"))
        .expect("example")
        .replace("data/digits.csv", data);
    std::fs::write(dir.join(name), src).expect("write");
}

/// A fresh folder holding the digits MLP as `digits.nn` and its data.
fn digits_dir(name: &str) -> common::TempDir {
    let dir = common::temp_dir(name);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/digits.csv"),
        dir.join("digits.csv"),
    )
    .expect("data");
    digits(&dir, "digits.nn", "digits.csv");
    dir
}

fn tensors(path: &Path) -> std::collections::HashMap<String, nnc::tensor::Tensor> {
    nnc::train::checkpoint::load(path).expect("a checkpoint").0
}

/// The worst relative difference between two checkpoints' tensors.
fn worst(a: &Path, b: &Path) -> f32 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f32;
    for (name, x) in &a {
        let y = &b[name];
        assert_eq!(x.shape, y.shape, "{name}");
        let scale = x.data.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        for (p, q) in x.data.iter().zip(&y.data) {
            worst = worst.max((p - q).abs() / scale);
        }
    }
    worst
}

fn accuracy(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with("trained"))
        .expect("a summary line");
    let v = line.rsplit("val_accuracy ").next().expect("an accuracy");
    v.trim().parse().expect("a number")
}

/// Runs `nnc train digits.nn` in `dir` with the `shared` then the `extra`
/// arguments, which must succeed; its standard output.
fn train_ok(dir: &Path, shared: &[&str], extra: &[&str]) -> String {
    let mut args = vec!["train", "digits.nn"];
    args.extend_from_slice(shared);
    args.extend_from_slice(extra);
    let out = nnc_in(dir, &args);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        common::text(&out.stderr)
    );
    stdout
}

/// Trains in `dir` as one process (saving `one.safetensors`) and as two
/// workers (`two.safetensors`), and checks both reach the same parameters
/// up to the order of the gradients' sums, and the same accuracy; the two
/// workers' output.
fn one_and_two_agree(dir: &Path, shared: &[&str], what: &str) -> String {
    let one = train_ok(dir, shared, &["--save", "one.safetensors"]);
    let two = train_ok(
        dir,
        shared,
        &["--save", "two.safetensors", "--workers", "2"],
    );
    let d = worst(&dir.join("one.safetensors"), &dir.join("two.safetensors"));
    eprintln!("{what}: 1 process against 2 workers, worst relative difference {d:e}");
    assert!(d > 0.0, "two workers sum the gradients in another order");
    assert!(d < 1e-5, "{d}");
    let (a1, a2) = (accuracy(&one), accuracy(&two));
    assert!((a1 - a2).abs() < 5e-4, "{a1} against {a2}");
    two
}

#[test]
fn two_workers_train_as_one_process_and_their_checkpoints_resume_on_one() {
    let dir = digits_dir("mpi-parity");
    let run = |extra: &[&str]| train_ok(&dir, &["--batch", "64"], extra);
    let two = one_and_two_agree(&dir, &["--batch", "64", "--epochs", "3"], "JIT");
    // Worker 0 alone reports: one header line, one summary.
    assert_eq!(two.matches("training digits.nn").count(), 1, "{two}");

    // Buckets of 1 KiB (two of them: w2 and b2's gradients, then w1 and
    // b1's) start the first sum while the backward pass computes w1's
    // gradient; the sums are the same element by element, so the
    // parameters are bit for bit those of one bucket (the default here).
    let shared = ["--batch", "64", "--epochs", "3", "--workers", "2"];
    train_ok(
        &dir,
        &shared,
        &["--bucket-kib", "1", "--save", "two_b.safetensors"],
    );
    assert_eq!(
        worst(&dir.join("two.safetensors"), &dir.join("two_b.safetensors")),
        0.0
    );

    // A checkpoint of 2 workers after 2 epochs resumes on 1 worker as on
    // 2, and on 1 the same way every time.
    run(&[
        "--epochs",
        "2",
        "--save",
        "two2.safetensors",
        "--workers",
        "2",
    ]);
    for (out, workers) in [
        ("r1.safetensors", "1"),
        ("r1b.safetensors", "1"),
        ("r2.safetensors", "2"),
    ] {
        run(&[
            "--epochs",
            "3",
            "--resume",
            "two2.safetensors",
            "--save",
            out,
            "--workers",
            workers,
        ]);
    }
    assert_eq!(
        worst(&dir.join("r1.safetensors"), &dir.join("r1b.safetensors")),
        0.0
    );
    let d = worst(&dir.join("r1.safetensors"), &dir.join("r2.safetensors"));
    assert!(d < 1e-5, "{d}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// OpenCL workers (PoCL in CI) train as one OpenCL process does: each
/// runs its share on the device, the gradients come back for the
/// all-reduce, and the parameters agree up to the order of the sums.
#[test]
fn two_opencl_workers_train_as_one_opencl_process() {
    if !common::opencl() {
        return;
    }
    let dir = digits_dir("mpi-opencl");
    let shared = ["--backend", "opencl", "--batch", "64", "--epochs", "1"];
    one_and_two_agree(&dir, &shared, "OpenCL");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Worker 1 reads a file with a bad row (started as a second program of
/// one MPI job): both workers exit non-zero within seconds, and the
/// message names the worker, the file and the row.
#[test]
fn a_bad_row_on_one_worker_stops_every_worker() {
    let dir = common::temp_dir("mpi-bad-row");
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/digits.csv"),
    )
    .expect("data");
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    let mut cells: Vec<&str> = lines[5].split(',').collect();
    cells[3] = "abc";
    lines[5] = cells.join(",");
    std::fs::write(dir.join("good.csv"), &good).expect("write");
    std::fs::write(dir.join("bad.csv"), lines.join("\n")).expect("write");
    digits(&dir, "good.nn", "good.csv");
    digits(&dir, "bad.nn", "bad.csv");
    let nnc = env!("CARGO_BIN_EXE_nnc");
    let started = std::time::Instant::now();
    let out = Command::new("mpirun")
        .args([
            "--oversubscribe",
            "-n",
            "1",
            nnc,
            "train",
            "good.nn",
            ":",
            "-n",
            "1",
            nnc,
            "train",
            "bad.nn",
        ])
        .current_dir(&dir)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun runs");
    let err = common::text(&out.stderr);
    assert!(!out.status.success());
    // Not a speed figure: a guard that the job ends at all (a worker left
    // waiting in a collective would hang it), with a bound far above
    // the second or two it takes.
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("worker 1 of 2 stopped training: `bad.csv` line 6, column 4 (`pixel_0_3`): `abc` is not a number"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pid of the process of this test's job (`NNC_TEST_JOB=job` in its
/// environment) that is MPI's worker `rank`.
fn worker_pid(job: &str, rank: usize) -> Option<u32> {
    let want = [
        format!("NNC_TEST_JOB={job}"),
        format!("OMPI_COMM_WORLD_RANK={rank}"),
    ];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        want.iter()
            .all(|w| vars.contains(&w.as_bytes()))
            .then_some(pid)
    })
}

/// A worker that stops answering without dying (SIGSTOP: alive, never
/// reaching the next all-reduce) makes the other wait `--worker-timeout`,
/// name it and end the job, which exits non-zero instead of hanging.
#[test]
fn a_worker_that_stops_is_named_and_the_job_ends() {
    let dir = digits_dir("mpi-stall");
    let job = format!("stall-{}", std::process::id());
    let mut child = Command::new("mpirun")
        .args(["--oversubscribe", "-n", "2", env!("CARGO_BIN_EXE_nnc")])
        .args(["train", "digits.nn", "--epochs", "100000"])
        .args(["--log", "log.jsonl", "--worker-timeout", "2"])
        .current_dir(&dir)
        .env("NNC_TEST_JOB", &job)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mpirun runs");
    // Once an epoch is logged, both workers are training.
    let begun = std::time::Instant::now();
    while !std::fs::read_to_string(dir.join("log.jsonl")).is_ok_and(|l| l.contains('\n')) {
        assert!(
            begun.elapsed().as_secs() < 60 && child.try_wait().expect("status").is_none(),
            "training did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = worker_pid(&job, 1).expect("worker 1's process");
    let stop = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill runs")
    };
    assert!(stop("-STOP").success());
    let stopped = std::time::Instant::now();
    // Not a speed figure: a guard that the job ends at all, with a bound
    // far above the timeout and the two seconds it waits for answers.
    while child.try_wait().expect("status").is_none() && stopped.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ended = child.try_wait().expect("status").is_some();
    if !ended {
        let _ = child.kill();
    }
    let _ = stop("-KILL");
    let out = child.wait_with_output().expect("output");
    let err = common::text(&out.stderr);
    assert!(
        ended,
        "the job still ran 60 s after worker 1 stopped:\n{err}"
    );
    assert!(!out.status.success());
    assert!(
        err.contains("worker 0 of 2 waited 2 s in ")
            && err.contains("worker 1 did not reach it; every worker stops"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
