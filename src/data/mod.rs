//! Datasets for training and evaluation: features `[N, F]` and one label per
//! row, loaded from CSV, IDX (the MNIST format) or NumPy `.npy` files.
//!
//! [`load`] reads a [`Source`]; [`check_class_labels`] checks that the
//! labels are class indices. Every failure is a [`DataError`] that names the
//! file and, where it applies, the line (CSV) or record (IDX, `.npy`).

mod csv;
mod error;
mod idx;
mod npy;
pub use npy::npy_bytes;
#[cfg(test)]
mod testutil;

use std::io;
use std::path::{Path, PathBuf};

use crate::tensor::Tensor;

pub use error::DataError;

/// A loaded dataset: features `[N, F]` row-major and one label per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub features: Tensor,
    /// `per_row` labels for each row, row-major.
    pub labels: Vec<f32>,
    /// How many labels a row has (1, unless a CSV names several columns:
    /// a label per position of a sequence; 0 for rows to predict that
    /// come without).
    pub per_row: usize,
}

impl Dataset {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.features.shape.first().copied().unwrap_or(0)
    }
}

/// A tensor fed to an input from `path`, by its extension: a `.npy`
/// array in its own shape, or a CSV's rows (after the header) as `[rows,
/// columns]`. `None` for another kind of file.
pub fn load_tensor(path: &Path) -> Option<Result<Tensor, DataError>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => Some(npy::load_array(path)),
        Some("csv") => Some(csv::load_unlabelled(path, &[], 1.0).map(|d| d.features)),
        _ => None,
    }
}

/// Rows to predict from `path`, by its extension: a CSV (every column a
/// feature, except `labels` when the header has them all: those become
/// the rows' labels) or a NumPy `.npy` array of features; `scale`
/// multiplies the features. `None` for another kind of file.
pub fn load_unlabelled(
    path: &Path,
    labels: &[String],
    scale: f32,
) -> Option<Result<Dataset, DataError>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Some(csv::load_unlabelled(path, labels, scale)),
        Some("npy") => Some(npy::load_features(path, scale)),
        _ => None,
    }
}

/// One input's values in a file, row `i` of the file being example `i`.
#[derive(Clone, Debug, PartialEq)]
pub enum Columns {
    /// A CSV's columns by name, in the order given (all of them, in file
    /// order, when `None`).
    Csv {
        path: PathBuf,
        columns: Option<Vec<String>>,
    },
    /// A NumPy array `[N, ...]`.
    Npy { path: PathBuf },
}

impl Columns {
    pub fn path(&self) -> &Path {
        match self {
            Columns::Csv { path, .. } | Columns::Npy { path } => path,
        }
    }

    /// The same columns with the path joined to `dir`.
    pub fn rebase(&self, dir: &Path) -> Columns {
        match self {
            Columns::Csv { path, columns } => Columns::Csv {
                path: dir.join(path),
                columns: columns.clone(),
            },
            Columns::Npy { path } => Columns::Npy {
                path: dir.join(path),
            },
        }
    }

    /// Loads the values as `[N, width]`, each multiplied by `scale`.
    pub fn load(&self, scale: f32) -> Result<Tensor, DataError> {
        let mut t = match self {
            Columns::Csv {
                path,
                columns: Some(names),
            } => {
                let ds = csv::load_columns(path, names, 1.0)?;
                Tensor::new(vec![ds.rows(), ds.per_row], ds.labels)
            }
            Columns::Csv {
                path,
                columns: None,
            } => csv::load_unlabelled(path, &[], 1.0)?.features,
            Columns::Npy { path } => {
                let a = npy::load_array(path)?;
                let n = a.shape.first().copied().unwrap_or(1);
                let width = a.shape.iter().skip(1).product();
                Tensor::new(vec![n, width], a.data)
            }
        };
        if scale != 1.0 {
            t.data.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(t)
    }
}

/// Where the data comes from. `scale` multiplies every feature value (not
/// the labels).
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// CSV with a header row; `label` names the label column (any
    /// position), or several, in the order given; all other columns are
    /// features, in file order.
    Csv {
        path: PathBuf,
        label: Vec<String>,
        scale: f32,
    },
    /// IDX files of unsigned bytes (MNIST), each plain or gzip-compressed
    /// (told apart by the gzip magic bytes, not the extension). Images are
    /// flattened to `[n, rows * cols]`.
    Idx {
        images: PathBuf,
        labels: PathBuf,
        scale: f32,
    },
    /// NumPy `.npy` files: features `[N, ...]`, flattened to
    /// `[N, prod(rest)]`; labels `[N]` or `[N, 1]`.
    Npy {
        features: PathBuf,
        labels: PathBuf,
        scale: f32,
    },
}

impl Source {
    /// The factor every feature value is multiplied by.
    pub fn scale(&self) -> f32 {
        match self {
            Source::Csv { scale, .. } | Source::Idx { scale, .. } | Source::Npy { scale, .. } => {
                *scale
            }
        }
    }
}

/// Loads a dataset.
pub fn load(src: &Source) -> Result<Dataset, DataError> {
    match src {
        Source::Csv { path, label, scale } => csv::load_columns(path, label, *scale),
        Source::Idx {
            images,
            labels,
            scale,
        } => idx::load(images, labels, *scale),
        Source::Npy {
            features,
            labels,
            scale,
        } => npy::load(features, labels, *scale),
    }
}

/// Checks that every label is an integer class index in `0..classes`. The
/// error names the first bad label's line (CSV, where the file can still be
/// read) or record (IDX, `.npy`).
pub fn check_class_labels(ds: &Dataset, classes: usize, src: &Source) -> Result<(), DataError> {
    let Some((i, value)) = first_non_class(&ds.labels, classes) else {
        return Ok(());
    };
    let record = i / ds.per_row.max(1);
    let (path, line) = match src {
        Source::Csv { path, .. } => (path, csv::row_line(path, record)),
        Source::Idx { labels, .. } | Source::Npy { labels, .. } => (labels, None),
    };
    Err(DataError::BadLabel {
        path: path.clone(),
        line,
        record,
        value,
        classes,
    })
}

/// As [`check_class_labels`], for the values `[N, width]` read from
/// `file`.
pub fn check_classes(values: &Tensor, classes: usize, file: &Columns) -> Result<(), DataError> {
    let Some((i, value)) = first_non_class(&values.data, classes) else {
        return Ok(());
    };
    let record = i / values.shape.get(1).copied().unwrap_or(1).max(1);
    let line = match file {
        Columns::Csv { path, .. } => csv::row_line(path, record),
        Columns::Npy { .. } => None,
    };
    Err(DataError::BadLabel {
        path: file.path().to_path_buf(),
        line,
        record,
        value,
        classes,
    })
}

/// The first value that is not a class index in `0..classes`.
fn first_non_class(values: &[f32], classes: usize) -> Option<(usize, f32)> {
    let is_class = |v: f32| v >= 0.0 && v.fract() == 0.0 && f64::from(v) < classes as f64;
    values
        .iter()
        .enumerate()
        .find(|(_, &v)| !is_class(v))
        .map(|(i, &v)| (i, v))
}

/// Reads a whole file, with an error that says plainly why not.
fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let fail = |kind: io::ErrorKind, reason: String| DataError::Read {
        path: path.to_path_buf(),
        kind,
        reason,
    };
    if path.is_dir() {
        let kind = io::ErrorKind::IsADirectory;
        return Err(fail(kind, "it is a directory".into()));
    }
    std::fs::read(path).map_err(|e| {
        let reason = match e.kind() {
            io::ErrorKind::NotFound => "no such file".to_string(),
            io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            io::ErrorKind::IsADirectory => "it is a directory".to_string(),
            _ => e.to_string(),
        };
        fail(e.kind(), reason)
    })
}

#[cfg(test)]
mod tests {
    use super::testutil::TempDir;
    use super::*;

    fn csv_source(path: PathBuf) -> Source {
        Source::Csv {
            path,
            label: vec!["label".into()],
            scale: 1.0,
        }
    }

    #[test]
    fn missing_file_and_directory_are_read_errors() {
        let dir = TempDir::new("missing_file_and_directory_are_read_errors");
        let missing = dir.path.join("nope.csv");
        let e = load(&csv_source(missing.clone())).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot read `{}`: no such file", missing.display())
        );
        assert!(e.hint().is_some_and(|h| h.starts_with("help: ")));
        let e = load(&csv_source(dir.path.clone())).unwrap_err();
        assert!(e.to_string().ends_with(": it is a directory"), "{e}");
    }

    #[test]
    fn good_labels_pass() {
        let ds = Dataset {
            features: Tensor::new(vec![3, 1], vec![0.0; 3]),
            labels: vec![0.0, 2.0, 1.0],
            per_row: 1,
        };
        let src = csv_source("unused.csv".into());
        assert!(check_class_labels(&ds, 3, &src).is_ok());
    }

    #[test]
    fn label_out_of_range_names_the_csv_line() {
        let dir = TempDir::new("label_out_of_range_names_the_csv_line");
        // Blank lines still count: the bad row (label 7) is on line 5.
        let path = dir.file("d.csv", b"x,label\n1,0\n\n2,1\n3,7\n4,2\n");
        let src = csv_source(path.clone());
        let ds = load(&src).unwrap();
        let e = check_class_labels(&ds, 3, &src).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "`{}` line 5: label `7` is not a class index in 0..3",
                path.display()
            )
        );
        assert_eq!(e.line(), Some(5));
        assert!(e.hint().is_some_and(|h| h.contains("0 to 2")));
    }

    #[test]
    fn fractional_and_negative_labels_are_rejected() {
        let ds = Dataset {
            features: Tensor::new(vec![2, 0], vec![]),
            labels: vec![1.0, 1.5],
            per_row: 1,
        };
        let src = Source::Npy {
            features: "f.npy".into(),
            labels: "l.npy".into(),
            scale: 1.0,
        };
        let e = check_class_labels(&ds, 10, &src).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`l.npy` record 1: label `1.5` is not a class index in 0..10"
        );
        assert_eq!(e.line(), None);
        assert!(e.hint().is_some_and(|h| h.contains("whole numbers")));
        let ds = Dataset {
            labels: vec![-1.0],
            ..ds
        };
        assert!(check_class_labels(&ds, 10, &src).is_err());
    }
}
