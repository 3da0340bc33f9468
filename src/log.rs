//! Debug logging to stderr, chosen by `NNC_LOG` (a comma-separated list of
//! topics, e.g. `NNC_LOG=fusion,plan`): `fusion` says which rule fired
//! where and why a candidate was refused; `plan` lists the JIT's steps and
//! buffers; `opencl` names the device and says whether each OpenCL
//! program came from the disk cache or was built; `allreduce` says, for
//! each data-parallel step, how long before the end of a worker's
//! backward pass each bucket of gradients started its sum; `compile` how
//! long each stage of compilation took (parsing and checking, the step
//! graphs, each graph pass, fusion, scheduling, code generation).

/// Whether `topic` is in `NNC_LOG`.
pub fn enabled(topic: &str) -> bool {
    std::env::var("NNC_LOG").is_ok_and(|v| v.split(',').any(|t| t.trim() == topic))
}

/// Runs `f`; with `NNC_LOG=compile`, prints how long it took, as
/// `[compile] what: T ms`.
pub fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    if !enabled("compile") {
        return f();
    }
    let started = std::time::Instant::now();
    let r = f();
    eprintln!(
        "[compile] {what}: {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    r
}

/// Writes `lines` under `topic` when it is enabled.
pub fn lines(topic: &str, lines: &[String]) {
    if enabled(topic) {
        for l in lines {
            eprintln!("[{topic}] {l}");
        }
    }
}
