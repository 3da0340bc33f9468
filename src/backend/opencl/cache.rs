//! Built OpenCL programs on disk (`$XDG_CACHE_HOME/nnc/opencl`, else
//! `~/.cache/nnc/opencl`), so a second process skips the driver's
//! compiler. An entry is found by a hash of its key — the kernel source,
//! the build options, the device, its driver and nnc's version — and
//! holds the whole key and a checksum of the binary: an entry whose key
//! differs (a hash collision, another version) or whose binary does not
//! match its checksum (a torn or corrupted file) is ignored and rebuilt
//! from source, never trusted. Entries are written to a temporary name
//! and renamed into place.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

/// Whether models' programs are cached: unset (0: ask the environment),
/// on (1) or off (2).
static MODELS: AtomicU8 = AtomicU8::new(0);

/// Turns the disk cache for models' programs on or off for this process.
pub fn set_models(on: bool) {
    MODELS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether models' programs go through the disk cache: as
/// [`set_models`] said, else unless `NNC_OPENCL_CACHE=off`.
pub fn models() -> bool {
    match MODELS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => std::env::var("NNC_OPENCL_CACHE").map_or(true, |v| v != "off"),
    }
}

const MAGIC: &[u8; 8] = b"NNCCL\x00\x00\x01";

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The cache folder, if one can be named.
fn dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("nnc").join("opencl"))
}

/// Where the entry for `key` lives.
pub fn path(key: &str) -> Option<PathBuf> {
    Some(dir()?.join(format!("{:016x}.bin", hash(key.as_bytes()))))
}

/// The binary stored for `key`, if a sound entry exists.
pub fn load(key: &str) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path(key)?).ok()?;
    let rest = bytes.strip_prefix(MAGIC)?;
    let (stored_key, rest) = take(rest)?;
    if stored_key != key.as_bytes() {
        return None;
    }
    let (binary, rest) = take(rest)?;
    let sum: [u8; 8] = rest.try_into().ok()?;
    (u64::from_le_bytes(sum) == hash(binary) && !binary.is_empty()).then(|| binary.to_vec())
}

/// A length-prefixed field.
fn take(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = b.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Stores `binary` for `key`; failures are only logged (the cache is an
/// optimisation).
pub fn store(key: &str, binary: &[u8]) {
    let Some(path) = path(key) else { return };
    let mut bytes = MAGIC.to_vec();
    for field in [key.as_bytes(), binary] {
        bytes.extend_from_slice(&(field.len() as u64).to_le_bytes());
        bytes.extend_from_slice(field);
    }
    bytes.extend_from_slice(&hash(binary).to_le_bytes());
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| crate::train::checkpoint::write_atomic(&path, &bytes));
    if let Err(e) = written {
        crate::log::lines(
            "opencl",
            &[format!(
                "cannot write the cache entry {}: {e}",
                path.display()
            )],
        );
    }
}
