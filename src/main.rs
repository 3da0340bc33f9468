//! The `nnc` binary: the command line in `nnc::driver::cli`.

/// mimalloc: compilation allocates and frees many small objects (see the
/// dependency's comment in Cargo.toml for what it gains).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Parsing and lowering recurse over the source's nesting; a generous
    // stack keeps deeply nested input an error, not a crash.
    let child = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(nnc::driver::cli::main);
    let code = match child.map(|h| h.join()) {
        Ok(Ok(code)) => code,
        _ => 101,
    };
    std::process::exit(code);
}
