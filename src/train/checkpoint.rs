//! Weights and checkpoints as safetensors files: every parameter (and the
//! optimizer's state) as an f32 tensor under its name, and the training
//! position in the metadata. Files are written to a temporary name in
//! the same folder, synced, then renamed over the target, so a process
//! killed mid-save leaves the previous file whole.

use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use safetensors::SafeTensorError;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write `{path}`: {reason}")]
    Write { path: String, reason: String },
    #[error("cannot read `{path}`: {reason}")]
    Read { path: String, reason: String },
    #[error("`{path}` is not a safetensors file: {reason}")]
    Format { path: String, reason: String },
    #[error("tensor `{name}` in `{path}` is {dtype}, expected F32")]
    Dtype {
        path: String,
        name: String,
        dtype: String,
    },
}

/// Writes `tensors` and `meta` to `path` atomically.
pub fn save(
    path: &Path,
    tensors: &[(String, &Tensor)],
    meta: &HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let werr = |reason: String| CheckpointError::Write {
        path: path.display().to_string(),
        reason,
    };
    let data = to_bytes(tensors, meta).map_err(werr)?;
    write_atomic(path, &data).map_err(|e| werr(e.to_string()))
}

/// `tensors` and `meta` as the bytes of a safetensors file.
pub fn to_bytes(
    tensors: &[(String, &Tensor)],
    meta: &HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, t), b) in tensors.iter().zip(&bytes) {
        let v = TensorView::new(Dtype::F32, t.shape.clone(), b).map_err(|e| e.to_string())?;
        views.push((name.clone(), v));
    }
    safetensors::serialize(views, &Some(meta.clone())).map_err(|e| e.to_string())
}

/// Writes a file through a temporary name in the same folder, synced to
/// disk, then renamed over `path`: readers see the old file or the new
/// one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    remove_stale_temporaries(dir, &name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes the temporary files of earlier saves of `name` in `dir` whose
/// process is gone (killed mid-save): `.NAME.tmp-PID` with no running
/// PID. Best effort: a file that cannot be removed stays.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let running = Path::new("/proc").join(pid.to_string()).exists();
        if pid != std::process::id() && !running {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether a file can be written at `path`: its folder exists and
/// accepts a new file (tried with a probe, removed at once), and `path`
/// is not a folder.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Err(std::io::Error::other("it is a folder"));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let probe = dir.join(format!(".nnc-probe-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// Tensors by name, and the string metadata.
pub type Loaded = (HashMap<String, Tensor>, HashMap<String, String>);

/// Reads every tensor and the metadata of a safetensors file.
pub fn load(path: &Path) -> Result<Loaded, CheckpointError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::Read {
        path: shown.clone(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".into(),
            _ => e.to_string(),
        },
    })?;
    from_bytes(&bytes, &shown)
}

/// Every tensor and the metadata of a safetensors file's bytes; `shown`
/// names the file in errors.
pub fn from_bytes(bytes: &[u8], shown: &str) -> Result<Loaded, CheckpointError> {
    let shown = shown.to_string();
    let ferr = |reason: String| CheckpointError::Format {
        path: shown.clone(),
        reason,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| ferr(reason(&e)))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| ferr(reason(&e)))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::Dtype {
                path: shown.clone(),
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, Tensor::new(view.shape().to_vec(), data));
    }
    Ok((out, meta))
}

/// What is wrong with a file the safetensors reader refused, in words
/// (the crate's own messages are its variant names).
fn reason(e: &SafeTensorError) -> String {
    use SafeTensorError as E;
    match e {
        E::InvalidHeader => "its header is not UTF-8 text".into(),
        E::InvalidHeaderStart => "its header does not start with `{`".into(),
        E::InvalidHeaderDeserialization | E::JsonError(_) => "its header is not valid JSON".into(),
        E::HeaderTooLarge => "its header is larger than the 100 MB safetensors allows".into(),
        E::HeaderTooSmall => "it is shorter than the 8-byte length that starts the format".into(),
        E::InvalidHeaderLength => "its header length is larger than the file".into(),
        E::TensorNotFound(name) => format!("it names tensor `{name}` but does not hold it"),
        E::TensorInvalidInfo => "a tensor's shape, type and offsets disagree".into(),
        E::InvalidOffset(name) => format!("the offsets of tensor `{name}` are invalid"),
        E::IoError(e) => e.to_string(),
        E::InvalidTensorView(dtype, shape, len) => {
            format!("a {dtype:?} tensor of shape {shape:?} cannot hold {len} bytes")
        }
        E::MetadataIncompleteBuffer => {
            "its tensors do not cover its data exactly (truncated or padded)".into()
        }
        E::ValidationOverflow => "a tensor's size overflows".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_bits_and_metadata() {
        let dir = std::env::temp_dir().join(format!("nnc-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("w.safetensors");
        let t = Tensor::new(vec![2, 2], vec![1.5, -0.0, f32::MIN_POSITIVE, 3e38]);
        let meta = HashMap::from([("epoch".to_string(), "3".to_string())]);
        save(&p, &[("w".into(), &t)], &meta).expect("saves");
        let (ts, m) = load(&p).expect("loads");
        assert_eq!(
            ts["w"].data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(m["epoch"], "3");
        std::fs::write(&p, b"not a checkpoint").expect("write");
        assert!(matches!(load(&p), Err(CheckpointError::Format { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
