//! Debug logging to stderr, chosen by `NNC_LOG` (a comma-separated list of
//! topics, e.g. `NNC_LOG=fusion,plan`): `fusion` says which rule fired
//! where and why a candidate was refused; `plan` lists the JIT's steps and
//! buffers; `opencl` names the device and says whether each OpenCL
//! program came from the disk cache or was built; `allreduce` says, for
//! each data-parallel step, how long before the end of a worker's
//! backward pass each bucket of gradients started its sum; `compile` how
//! long each stage of compilation took (parsing and checking, the step
//! graphs, each graph pass, fusion, scheduling, code generation), and on
//! Linux the page faults it took.

/// Whether `topic` is in `NNC_LOG`.
pub fn enabled(topic: &str) -> bool {
    std::env::var("NNC_LOG").is_ok_and(|v| v.split(',').any(|t| t.trim() == topic))
}

/// Runs `f`; with `NNC_LOG=compile`, prints how long it took, and on
/// Linux how many page faults the process took meanwhile (every thread's:
/// a stage that touches memory the process has not touched before pays
/// one per 4 KiB, about 1.2-1.5 µs each on the 2-vCPU VM this project is
/// measured on), as `[compile] what: T ms, N page faults`.
pub fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    if !enabled("compile") {
        return f();
    }
    let faults = minor_faults();
    let started = std::time::Instant::now();
    let r = f();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match faults.zip(minor_faults()) {
        Some((before, after)) => {
            let n = after.saturating_sub(before);
            let s = if n == 1 { "" } else { "s" };
            eprintln!("[compile] {what}: {ms:.2} ms, {n} page fault{s}")
        }
        None => eprintln!("[compile] {what}: {ms:.2} ms"),
    }
    r
}

/// The process's minor page faults so far (`minflt` of
/// `/proc/self/stat`), where the system says.
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command's name, in parentheses, may hold spaces: the fields
    // after it are the state, ppid, pgrp, session, tty, tpgid, flags and
    // then minflt.
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(7)?.parse().ok()
}

/// Writes `lines` under `topic` when it is enabled.
pub fn lines(topic: &str, lines: &[String]) {
    if enabled(topic) {
        for l in lines {
            eprintln!("[{topic}] {l}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn minor_faults_grow_as_fresh_memory_is_touched() {
        // Linux always has /proc/self/stat, with minflt in it (this test
        // runs only there): a `None` would be a misread field.
        let before = super::minor_faults().expect("Linux has /proc/self/stat");
        // 8 MiB written: fresh pages from the system, not the allocator's.
        let touched = std::hint::black_box(vec![1u8; 8 << 20]);
        let after = super::minor_faults().expect("Linux has /proc/self/stat");
        assert_eq!(touched[touched.len() - 1], 1);
        assert!(after > before, "{before} faults before, {after} after");
    }
}
