//! IDX loading (the MNIST format). An image file is the big-endian magic
//! `0x00000803`, the counts `n`, `rows`, `cols` as big-endian `u32`, then
//! `n * rows * cols` bytes; a label file is the magic `0x00000801`, `n`,
//! then `n` bytes. Either file may be gzip-compressed, which is detected by
//! the gzip magic bytes rather than the file name.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use super::error::{IMAGES, LABELS};
use super::{read_file, DataError, Dataset};
use crate::tensor::Tensor;

pub(super) fn load(images: &Path, labels: &Path, scale: f32) -> Result<Dataset, DataError> {
    let (dims, pixels) = read_idx(images, IMAGES, 3)?;
    let (label_dims, label_data) = read_idx(labels, LABELS, 1)?;

    let n = dims.first().copied().unwrap_or(0);
    let width: usize = dims.iter().skip(1).product();
    let n_labels = label_dims.first().copied().unwrap_or(0);
    if n != n_labels {
        return Err(DataError::CountMismatch {
            features: images.to_path_buf(),
            labels: labels.to_path_buf(),
            n_features: n,
            n_labels,
        });
    }
    if n == 0 {
        return Err(DataError::NoData {
            path: images.to_path_buf(),
        });
    }
    Ok(Dataset {
        features: Tensor::new(
            vec![n, width],
            pixels.iter().map(|&b| f32::from(b) * scale).collect(),
        ),
        labels: label_data.iter().map(|&b| f32::from(b)).collect(),
        per_row: 1,
    })
}

/// Reads an IDX file, plain or gzip-compressed (told apart by the gzip
/// magic bytes): the header first — magic and `rank` dimensions — then
/// exactly the bytes it promises. A compressed file is decompressed as it
/// is read, never past one byte more than the header promises, so a
/// small file that inflates to gigabytes (a gzip bomb) is refused after
/// its 16 header bytes, and a header that promises more than a tensor can
/// hold is refused before anything is allocated.
fn read_idx(path: &Path, magic: u32, rank: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = read_file(path)?;
    let gzip = bytes.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + '_> = match gzip {
        true => Box::new(GzDecoder::new(&bytes[..])),
        false => Box::new(&bytes[..]),
    };
    let damaged = |e: std::io::Error| DataError::Decompress {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let header_len = 4 * (rank + 1);
    let mut header = Vec::with_capacity(header_len);
    reader
        .by_ref()
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(damaged)?;
    let too_short = || DataError::IdxHeader {
        path: path.to_path_buf(),
        found: header.len(),
        needed: header_len,
    };
    let found = be_u32(&header, 0).ok_or_else(too_short)?;
    if found != magic {
        return Err(DataError::IdxMagic {
            path: path.to_path_buf(),
            expected: magic,
            found,
        });
    }
    let dims = (1..=rank)
        .map(|i| be_u32(&header, 4 * i).map(|d| d as usize))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(too_short)?;
    let expected = dims
        .iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(d as u64));
    // Plain files are already read: their size is known.
    let available = (!gzip).then(|| (bytes.len() - header_len) as u64);
    if expected > crate::ir::shape::MAX_ELEMENTS {
        return Err(DataError::IdxTooLarge {
            path: path.to_path_buf(),
            expected,
        });
    }
    if available.is_some_and(|a| a != expected) {
        return Err(DataError::IdxSize {
            path: path.to_path_buf(),
            expected,
            found: available.unwrap_or_default(),
        });
    }
    let mut data = Vec::new();
    reader
        .take(expected + 1)
        .read_to_end(&mut data)
        .map_err(damaged)?;
    if data.len() as u64 != expected {
        return Err(DataError::IdxSize {
            path: path.to_path_buf(),
            expected,
            found: data.len() as u64,
        });
    }
    Ok((dims, data))
}

/// The big-endian `u32` at byte `at`, if the bytes reach that far.
fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    word.try_into().ok().map(u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [IMAGES, n, rows, cols] {
            out.extend(word.to_be_bytes());
        }
        out.extend(pixels);
        out
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(LABELS.to_be_bytes());
        out.extend((labels.len() as u32).to_be_bytes());
        out.extend(labels);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Three 2x2 images: pixel values 0..12.
    fn sample() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..12).collect();
        (idx_images(3, 2, 2, &pixels), idx_labels(&[7, 0, 9]))
    }

    fn check_sample(ds: &Dataset, scale: f32) {
        assert_eq!(ds.features.shape, vec![3, 4]);
        let want: Vec<f32> = (0..12).map(|v| v as f32 * scale).collect();
        assert_eq!(ds.features.data, want);
        assert_eq!(ds.labels, vec![7.0, 0.0, 9.0]);
    }

    #[test]
    fn idx_plain_round_trip() {
        let dir = TempDir::new("idx_plain_round_trip");
        let (images, labels) = sample();
        // A `.gz` name on a plain file: detection goes by content.
        let images = dir.file("images.idx3-ubyte.gz", &images);
        let labels = dir.file("labels.idx1-ubyte", &labels);
        check_sample(&load(&images, &labels, 1.0 / 255.0).unwrap(), 1.0 / 255.0);
    }

    #[test]
    fn idx_gzip_round_trip() {
        let dir = TempDir::new("idx_gzip_round_trip");
        let (images, labels) = sample();
        let images = dir.file("images.idx3-ubyte", &gzip(&images));
        let labels = dir.file("labels.idx1-ubyte.gz", &gzip(&labels));
        check_sample(&load(&images, &labels, 1.0).unwrap(), 1.0);
    }

    #[test]
    fn a_gzip_bomb_is_refused_after_its_header() {
        // 2 images of 2x2 promised, 64 MiB of zeros after them: the
        // compressed file is tiny; it is decompressed 9 bytes into the
        // data, not whole.
        let dir = TempDir::new("idx_gzip_bomb");
        let mut images = idx_images(2, 2, 2, &[1; 8]);
        images.resize(images.len() + (64 << 20), 0);
        let bomb = gzip(&images);
        assert!(bomb.len() < 1 << 20, "{} bytes compressed", bomb.len());
        let images = dir.file("images.gz", &bomb);
        let labels = dir.file("labels", &idx_labels(&[1, 2]));
        let e = load(&images, &labels, 1.0).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::IdxSize {
                    expected: 8,
                    found: 9,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("promises 8 bytes of data, found 9 or more"),
            "{e}"
        );
        // A header promising more than a tensor holds, compressed or not.
        for wrap in [gzip as fn(&[u8]) -> Vec<u8>, <[u8]>::to_vec] {
            let huge = dir.file("huge", &wrap(&idx_images(u32::MAX, u32::MAX, 16, &[])));
            let e = load(&huge, &labels, 1.0).unwrap_err();
            assert!(matches!(e, DataError::IdxTooLarge { .. }), "{e}");
        }
    }

    #[test]
    fn idx_count_mismatch() {
        let dir = TempDir::new("idx_count_mismatch");
        let (images, _) = sample();
        let images = dir.file("images", &images);
        let labels = dir.file("labels", &idx_labels(&[1, 2]));
        let e = load(&images, &labels, 1.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "`{}` holds 3 rows but `{}` holds 2 labels",
                images.display(),
                labels.display()
            )
        );
    }

    #[test]
    fn idx_swapped_files_have_bad_magic() {
        let dir = TempDir::new("idx_swapped_files_have_bad_magic");
        let (images, labels) = sample();
        let images = dir.file("images", &images);
        let labels = dir.file("labels", &labels);
        let e = load(&labels, &images, 1.0).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "labels`: not an IDX image file (magic number 0x00000801, expected 0x00000803)"
            ),
            "{e}"
        );
        assert!(e.hint().is_some_and(|h| h.contains("swapped")));
        let other = dir.file("other", b"PK\x03\x04 not idx at all");
        let e = load(&other, &labels, 1.0).unwrap_err();
        assert!(matches!(e, DataError::IdxMagic { .. }), "{e}");
    }

    #[test]
    fn idx_short_header_and_truncated_data() {
        let dir = TempDir::new("idx_short_header_and_truncated_data");
        let (images, labels) = sample();
        let labels = dir.file("labels", &labels);
        let short = dir.file("short", &images[..10]);
        let e = load(&short, &labels, 1.0).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("short`: IDX header is too short (10 bytes, need 16)"),
            "{e}"
        );
        let cut = dir.file("cut", &images[..images.len() - 1]);
        let e = load(&cut, &labels, 1.0).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("cut`: the IDX header promises 12 bytes of data, found 11"),
            "{e}"
        );
        assert!(e.hint().is_some_and(|h| h.contains("cut short")));
        let tiny = dir.file("tiny", &images[..2]);
        assert!(matches!(
            load(&tiny, &labels, 1.0),
            Err(DataError::IdxHeader { .. })
        ));
    }

    #[test]
    fn idx_corrupt_gzip() {
        let dir = TempDir::new("idx_corrupt_gzip");
        let (images, labels) = sample();
        let mut gz = gzip(&images);
        gz.truncate(gz.len() / 2);
        let images = dir.file("images.gz", &gz);
        let labels = dir.file("labels", &labels);
        let e = load(&images, &labels, 1.0).unwrap_err();
        assert!(e.to_string().starts_with("cannot decompress `"), "{e}");
    }
}
