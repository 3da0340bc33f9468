//! Errors from loading a dataset. Each names the file and, where it
//! applies, the line (CSV, counted from 1 with the header on line 1) or the
//! record (IDX and `.npy`, counted from 0), and the offending text.

use std::io;
use std::path::PathBuf;

/// Why a dataset could not be loaded or checked.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DataError {
    /// The file could not be read: missing, not permitted, a directory...
    #[error("cannot read `{path}`: {reason}")]
    Read {
        path: PathBuf,
        kind: io::ErrorKind,
        reason: String,
    },
    /// A CSV file with no non-blank line, so no header.
    #[error("`{path}` is empty: expected a header row naming the columns")]
    Empty { path: PathBuf },
    /// A file with a header (or valid headers) but zero rows or records.
    #[error("`{path}` has no data rows")]
    NoData { path: PathBuf },
    #[error("`{path}` line {line}: not valid UTF-8")]
    NotUtf8 { path: PathBuf, line: usize },
    /// The first line of a CSV file holds numbers, not column names.
    #[error("`{path}` line {line}: expected a header row naming the columns, found `{text}`")]
    NoHeader {
        path: PathBuf,
        line: usize,
        text: String,
        label: String,
    },
    #[error("`{path}` line {line}: no column named `{label}` (the columns are {})", list_names(.header))]
    NoLabelColumn {
        path: PathBuf,
        line: usize,
        label: String,
        header: Vec<String>,
        suggestion: Option<String>,
    },
    #[error("`{path}` line {line}: column `{label}` appears {count} times in the header")]
    DuplicateLabel {
        path: PathBuf,
        line: usize,
        label: String,
        count: usize,
    },
    #[error("`{path}` line {line}: expected {expected} columns, found {found}")]
    ColumnCount {
        path: PathBuf,
        line: usize,
        expected: usize,
        found: usize,
    },
    /// `column` counts from 1; `name` is the column's header.
    #[error("`{path}` line {line}, column {column} (`{name}`): {} is not a number", show_cell(.text))]
    NotANumber {
        path: PathBuf,
        line: usize,
        column: usize,
        name: String,
        text: String,
    },
    #[error("`{path}` line {line}, column {column} (`{name}`): `{text}` is not a finite number")]
    NotFinite {
        path: PathBuf,
        line: usize,
        column: usize,
        name: String,
        text: String,
    },
    /// The file starts with the gzip magic bytes but does not decompress.
    #[error("cannot decompress `{path}`: {reason}")]
    Decompress { path: PathBuf, reason: String },
    #[error("`{path}`: not an IDX {} file (magic number {found:#010x}, expected {expected:#010x})", idx_kind(*.expected))]
    IdxMagic {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    #[error("`{path}`: IDX header is too short ({found} bytes, need {needed})")]
    IdxHeader {
        path: PathBuf,
        found: usize,
        needed: usize,
    },
    /// Sizes are the bytes after the header. A compressed file is not
    /// decompressed past one byte more than promised: there `found` is at
    /// most `expected + 1`.
    #[error("`{path}`: the IDX header promises {expected} bytes of data, found {found}{}", if *found == expected + 1 { " or more" } else { "" })]
    IdxSize {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    /// A header that promises more data than a tensor can hold.
    #[error("`{path}`: the IDX header promises {expected} bytes of data, more than nnc can load")]
    IdxTooLarge { path: PathBuf, expected: u64 },
    /// The features and the labels hold different numbers of rows.
    #[error("`{features}` holds {n_features} rows but `{labels}` holds {n_labels} labels")]
    CountMismatch {
        features: PathBuf,
        labels: PathBuf,
        n_features: usize,
        n_labels: usize,
    },
    #[error("`{path}`: not a .npy file (it does not start with `\\x93NUMPY`)")]
    NpyMagic { path: PathBuf },
    #[error("`{path}`: unsupported .npy format version {major}.{minor}")]
    NpyVersion { path: PathBuf, major: u8, minor: u8 },
    #[error("`{path}`: bad .npy header ({reason}): `{header}`")]
    NpyHeader {
        path: PathBuf,
        header: String,
        reason: String,
    },
    #[error("`{path}`: unsupported dtype `{dtype}`")]
    NpyDtype { path: PathBuf, dtype: String },
    #[error("`{path}`: the array is stored in Fortran order")]
    NpyFortran { path: PathBuf },
    /// Sizes are the bytes after the header.
    #[error("`{path}`: shape {} needs {expected} bytes of data, found {found}", show_shape(.shape))]
    NpySize {
        path: PathBuf,
        shape: Vec<usize>,
        expected: u64,
        found: u64,
    },
    /// `what` is "features" or "labels"; `expected` describes the shapes
    /// allowed.
    #[error("`{path}`: {what} must be {expected}, found shape {}", show_shape(.shape))]
    NpyShape {
        path: PathBuf,
        what: &'static str,
        expected: &'static str,
        shape: Vec<usize>,
    },
    #[error("`{path}` record {record}: value `{value}` is not a finite number")]
    NpyNotFinite {
        path: PathBuf,
        record: usize,
        value: f32,
    },
    /// A label that is not an integer in `0..classes`. `line` is set for
    /// CSV files; `record` is the row index, from 0.
    #[error("{}: label `{value}` is not a class index in 0..{classes}", place(.path, *.line, *.record))]
    BadLabel {
        path: PathBuf,
        line: Option<usize>,
        record: usize,
        value: f32,
        classes: usize,
    },
}

impl DataError {
    /// The error as a diagnostic (code `INPUT`), with its hint.
    pub fn to_diag(&self) -> crate::diag::Diag {
        let d = crate::diag::error(crate::diag::code::INPUT, self.to_string());
        match self.hint() {
            Some(h) if h.starts_with("help:") => d.with_notes(vec![h]),
            Some(h) => d.with_notes(vec![format!("help: {h}")]),
            None => d,
        }
    }

    /// A short "help: ..." text on how to fix the problem, where one is
    /// useful.
    pub fn hint(&self) -> Option<String> {
        use DataError::*;
        let text = match self {
            Read { kind, .. } => match kind {
                io::ErrorKind::NotFound => {
                    "check the path; a relative path starts from the current directory".to_string()
                }
                io::ErrorKind::IsADirectory => "give the path of a file, not a directory".into(),
                io::ErrorKind::PermissionDenied => "check the file's permissions".into(),
                _ => return None,
            },
            Empty { .. } => "the first line must name the columns, e.g. `x0,x1,label`".into(),
            NoData { .. } => return None,
            NotUtf8 { .. } => "save the file as UTF-8 text".into(),
            NoHeader { label, .. } => {
                format!("add a first line naming the columns, one of them `{label}`")
            }
            NoLabelColumn { suggestion, .. } => match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => "name the label column exactly as it is spelled in the header".into(),
            },
            DuplicateLabel { .. } => "rename the extra columns so the label is unambiguous".into(),
            ColumnCount { expected, .. } => {
                format!("the header has {expected} columns; every row needs the same number")
            }
            NotANumber { text, .. } if text.is_empty() => {
                "fill in the missing value or drop the row".into()
            }
            NotANumber { .. } => {
                "every cell must be a number; map class names and other text to numbers first"
                    .into()
            }
            NotFinite { .. } | NpyNotFinite { .. } => {
                "replace missing values (nan) and infinities before loading".into()
            }
            Decompress { .. } => {
                "the file starts like gzip but is damaged or cut short; fetch it again".into()
            }
            IdxMagic {
                expected, found, ..
            } => match (*expected, *found) {
                (IMAGES, LABELS) | (LABELS, IMAGES) => format!(
                    "this is an IDX {} file; are the images and labels paths swapped?",
                    idx_kind(*found)
                ),
                _ => format!(
                    "IDX files start with {IMAGES:#010x} (images) or {LABELS:#010x} (labels)"
                ),
            },
            IdxHeader { .. } => "the file is cut short or not an IDX file".into(),
            IdxTooLarge { .. } => "the header is damaged, or the file is not an IDX file".into(),
            IdxSize {
                expected, found, ..
            }
            | NpySize {
                expected, found, ..
            } => {
                if found < expected {
                    "the file is cut short; fetch or save it again".into()
                } else {
                    "the file has extra bytes at the end; fetch or save it again".into()
                }
            }
            CountMismatch { .. } => {
                "features and labels must come from the same split (both train or both test)".into()
            }
            NpyMagic { .. } | NpyVersion { .. } | NpyHeader { .. } => {
                "write the file with `numpy.save`".into()
            }
            NpyDtype { .. } => {
                "convert it first, e.g. `numpy.save(path, array.astype('<f4'))`".into()
            }
            NpyFortran { .. } => "save `numpy.ascontiguousarray(array)` instead".into(),
            NpyShape { what, .. } if *what == "labels" => {
                "labels hold one class index per row; save `labels.reshape(-1)`".into()
            }
            NpyShape { .. } => return None,
            BadLabel { value, classes, .. } => {
                let top = classes.saturating_sub(1);
                if value.is_finite() && value.fract() == 0.0 {
                    format!("with {classes} classes, labels must be 0 to {top}; check the class count or the label column")
                } else {
                    format!("class labels must be whole numbers 0 to {top}")
                }
            }
        };
        Some(format!("help: {text}"))
    }

    /// The 1-based line of a CSV file the error is on, if any.
    pub fn line(&self) -> Option<usize> {
        use DataError::*;
        match self {
            NotUtf8 { line, .. }
            | NoHeader { line, .. }
            | NoLabelColumn { line, .. }
            | DuplicateLabel { line, .. }
            | ColumnCount { line, .. }
            | NotANumber { line, .. }
            | NotFinite { line, .. } => Some(*line),
            BadLabel { line, .. } => *line,
            _ => None,
        }
    }
}

/// The magic numbers of IDX image and label files of unsigned bytes.
pub(super) const IMAGES: u32 = 0x0000_0803;
pub(super) const LABELS: u32 = 0x0000_0801;

fn idx_kind(magic: u32) -> &'static str {
    if magic == LABELS {
        "label"
    } else {
        "image"
    }
}

/// Column names for a message: all of them when few, else the first and
/// last few around a count.
fn list_names(names: &[String]) -> String {
    const SHOWN: usize = 4;
    let quote = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.len() <= 3 * SHOWN {
        return quote(names);
    }
    let head = quote(&names[..SHOWN]);
    let tail = quote(&names[names.len() - SHOWN..]);
    let hidden = names.len() - 2 * SHOWN;
    format!("{head}, ... {hidden} more ..., {tail}")
}

fn show_cell(text: &str) -> String {
    if text.is_empty() {
        "the empty cell".into()
    } else {
        format!("`{text}`")
    }
}

/// A shape the way NumPy prints it: `(3,)`, `(3, 4)`, `()`.
fn show_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
        }
    }
}

fn place(path: &std::path::Path, line: Option<usize>, record: usize) -> String {
    match line {
        Some(line) => format!("`{}` line {line}", path.display()),
        None => format!("`{}` record {record}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_file_line_and_text() {
        let e = DataError::NotANumber {
            path: "digits.csv".into(),
            line: 37,
            column: 5,
            name: "pixel_0_4".into(),
            text: "abc".into(),
        };
        assert_eq!(
            e.to_string(),
            "`digits.csv` line 37, column 5 (`pixel_0_4`): `abc` is not a number"
        );
        assert_eq!(e.line(), Some(37));
        let e = DataError::ColumnCount {
            path: "digits.csv".into(),
            line: 37,
            expected: 65,
            found: 64,
        };
        assert_eq!(
            e.to_string(),
            "`digits.csv` line 37: expected 65 columns, found 64"
        );
    }

    #[test]
    fn long_header_lists_are_shortened() {
        let names: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        assert_eq!(
            list_names(&names),
            "`c0`, `c1`, `c2`, `c3`, ... 12 more ..., `c16`, `c17`, `c18`, `c19`"
        );
        assert_eq!(list_names(&names[..2]), "`c0`, `c1`");
    }

    #[test]
    fn shapes_print_like_numpy() {
        assert_eq!(show_shape(&[]), "()");
        assert_eq!(show_shape(&[3]), "(3,)");
        assert_eq!(show_shape(&[3, 4]), "(3, 4)");
    }

    #[test]
    fn swapped_idx_files_get_a_hint() {
        let e = DataError::IdxMagic {
            path: "t10k-labels.idx".into(),
            expected: IMAGES,
            found: LABELS,
        };
        assert!(e.to_string().contains("not an IDX image file"));
        assert!(e.to_string().contains("0x00000801"));
        assert!(e.hint().is_some_and(|h| h.contains("swapped")));
    }
}
