//! CSV loading. The first non-blank line is a header naming the columns;
//! one column holds the labels and the others are features, in file order.
//! Blank lines are skipped (but still counted, so errors give the line a
//! text editor shows), cells may be padded with spaces or wrapped in double
//! quotes, and `\r\n` line endings are accepted.

use std::path::Path;

use super::{read_file, DataError, Dataset};
use crate::diag;
use crate::tensor::Tensor;

/// Loads a CSV with one label column.
#[cfg(test)]
pub(super) fn load(path: &Path, label: &str, scale: f32) -> Result<Dataset, DataError> {
    load_columns(path, &[label.to_string()], scale)
}

/// Loads a CSV whose labels are the columns `labels`, in that order.
pub(super) fn load_columns(
    path: &Path,
    labels_wanted: &[String],
    scale: f32,
) -> Result<Dataset, DataError> {
    load_csv(path, labels_wanted, false, scale)
}

/// Loads rows to predict: when the header has every column of `labels`,
/// those are the rows' labels (as [`load_columns`]); otherwise every
/// column is a feature and the rows have no labels (`per_row` 0).
pub(super) fn load_unlabelled(
    path: &Path,
    labels: &[String],
    scale: f32,
) -> Result<Dataset, DataError> {
    load_csv(path, labels, true, scale)
}

fn load_csv(
    path: &Path,
    labels_wanted: &[String],
    optional: bool,
    scale: f32,
) -> Result<Dataset, DataError> {
    let bytes = read_file(path)?;
    let text = decode(path, &bytes)?;
    let mut lines = numbered_lines(text);
    let Some((header_line, header_text)) = lines.next() else {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    };
    let header: Vec<String> = cells(header_text).map(str::to_string).collect();
    let labels_wanted = match optional && !labels_wanted.iter().all(|l| header.contains(l)) {
        true => &[],
        false => labels_wanted,
    };
    let mut label_cols = Vec::with_capacity(labels_wanted.len());
    for label in labels_wanted {
        label_cols.push(find_label(path, header_line, header_text, &header, label)?);
    }
    let mut row_labels = vec![0.0f32; label_cols.len()];

    let width = header.len();
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut rows = 0;
    let mut row: Vec<&str> = Vec::with_capacity(width);
    for (line, text) in lines {
        rows += 1;
        row.clear();
        row.extend(cells(text));
        if row.len() != width {
            return Err(DataError::ColumnCount {
                path: path.to_path_buf(),
                line,
                expected: width,
                found: row.len(),
            });
        }
        for (col, (&cell, name)) in row.iter().zip(&header).enumerate() {
            let value = parse_cell(cell).map_err(|finite_problem| {
                let (path, column) = (path.to_path_buf(), col + 1);
                let (name, text) = (name.clone(), cell.to_string());
                if finite_problem {
                    DataError::NotFinite {
                        path,
                        line,
                        column,
                        name,
                        text,
                    }
                } else {
                    DataError::NotANumber {
                        path,
                        line,
                        column,
                        name,
                        text,
                    }
                }
            })?;
            let mut is_label = false;
            for (k, &c) in label_cols.iter().enumerate() {
                if c == col {
                    row_labels[k] = value;
                    is_label = true;
                }
            }
            if !is_label {
                features.push(value * scale);
            }
        }
        labels.extend_from_slice(&row_labels);
    }
    if rows == 0 {
        return Err(DataError::NoData {
            path: path.to_path_buf(),
        });
    }
    let feature_cols = features.len() / rows.max(1);
    Ok(Dataset {
        features: Tensor::new(vec![rows, feature_cols], features),
        labels,
        per_row: label_cols.len(),
    })
}

/// The 1-based line of data row `row` (counted from 0, after the header),
/// found by reading the file again; `None` if it cannot be read now.
pub(super) fn row_line(path: &Path, row: usize) -> Option<usize> {
    let bytes = read_file(path).ok()?;
    let text = decode(path, &bytes).ok()?;
    let mut lines = numbered_lines(text);
    lines.nth(row + 1).map(|(line, _)| line)
}

/// The file as text, without a byte-order mark; an error names the line of
/// the first invalid byte.
fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, DataError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.strip_prefix('\u{feff}').unwrap_or(text)),
        Err(e) => {
            let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
            Err(DataError::NotUtf8 {
                path: path.to_path_buf(),
                line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            })
        }
    }
}

/// The non-blank lines with their 1-based numbers, without `\r`.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix('\r').unwrap_or(line)))
        .filter(|(_, line)| !line.trim().is_empty())
}

/// The cells of a line, trimmed and without surrounding double quotes.
fn cells(line: &str) -> impl Iterator<Item = &str> {
    line.split(',').map(|cell| {
        let cell = cell.trim();
        cell.strip_prefix('"')
            .and_then(|c| c.strip_suffix('"'))
            .map_or(cell, str::trim)
    })
}

/// A cell's value; `Err(false)` if it is not a number, `Err(true)` if it is
/// not finite (nan, inf, or too large for `f32`).
fn parse_cell(cell: &str) -> Result<f32, bool> {
    match cell.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(true),
        Err(_) => Err(false),
    }
}

/// The index of the label column, or why there is none.
fn find_label(
    path: &Path,
    line: usize,
    text: &str,
    header: &[String],
    label: &str,
) -> Result<usize, DataError> {
    let found: Vec<usize> = (0..header.len()).filter(|&i| header[i] == label).collect();
    match found[..] {
        [col] => return Ok(col),
        [] => {}
        _ => {
            return Err(DataError::DuplicateLabel {
                path: path.to_path_buf(),
                line,
                label: label.to_string(),
                count: found.len(),
            })
        }
    }
    if header.iter().all(|name| parse_cell(name).is_ok()) {
        return Err(DataError::NoHeader {
            path: path.to_path_buf(),
            line,
            text: text.trim().to_string(),
            label: label.to_string(),
        });
    }
    Err(DataError::NoLabelColumn {
        path: path.to_path_buf(),
        line,
        label: label.to_string(),
        header: header.to_vec(),
        suggestion: closest(label, header).map(str::to_string),
    })
}

/// The header name most like `label`: one differing only in case, else the
/// nearest by edit distance if at most half the name (or two edits) away,
/// which allows a swapped pair of letters.
fn closest<'a>(label: &str, header: &'a [String]) -> Option<&'a str> {
    if let Some(same) = header.iter().find(|h| h.eq_ignore_ascii_case(label)) {
        return Some(same);
    }
    let limit = (label.chars().count() / 2).max(2);
    header
        .iter()
        .map(|h| (diag::edit_distance(label, h), h.as_str()))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, h)| h)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::*;

    fn load_text(test: &str, text: &[u8], label: &str) -> Result<Dataset, DataError> {
        let dir = TempDir::new(test);
        let path = dir.file("data.csv", text);
        load(&path, label, 1.0)
    }

    /// `digits.csv`-like text: 64 pixel columns and `label`, 40 rows.
    fn digits_like(short_line: Option<usize>) -> String {
        let mut text: Vec<String> = (0..64)
            .map(|i| format!("pixel_{}_{}", i / 8, i % 8))
            .collect();
        text.push("label".into());
        let mut out = text.join(",") + "\n";
        for row in 0..40 {
            let line = row + 2;
            let n = if Some(line) == short_line { 63 } else { 64 };
            let mut cells: Vec<String> = (0..n).map(|i| ((i + row) % 17).to_string()).collect();
            cells.push((row % 10).to_string());
            out += &(cells.join(",") + "\n");
        }
        out
    }

    #[test]
    fn good_csv_with_label_in_the_middle_and_scaling() {
        let dir = TempDir::new("good_csv_with_label_in_the_middle_and_scaling");
        let text = b"\xef\xbb\xbfa, label ,\"b\"\r\n1, 2 ,3\r\n\r\n 4.5,0,-6e1\r\n\n";
        let path = dir.file("data.csv", text);
        let ds = load(&path, "label", 0.5).unwrap();
        assert_eq!(ds.features.shape, vec![2, 2]);
        assert_eq!(ds.features.data, vec![0.5, 1.5, 2.25, -30.0]);
        assert_eq!(ds.labels, vec![2.0, 0.0]);
    }

    #[test]
    fn digits_like_file_loads() {
        let ds = load_text(
            "digits_like_file_loads",
            digits_like(None).as_bytes(),
            "label",
        );
        let ds = ds.unwrap();
        assert_eq!(ds.features.shape, vec![40, 64]);
        assert_eq!(ds.labels.len(), 40);
        assert_eq!(ds.labels[13], 3.0);
    }

    #[test]
    fn wrong_column_count_names_line_37() {
        let text = digits_like(Some(37));
        let e = load_text("wrong_column_count_names_line_37", text.as_bytes(), "label");
        let e = e.unwrap_err();
        assert!(
            e.to_string()
                .ends_with("data.csv` line 37: expected 65 columns, found 64"),
            "{e}"
        );
        assert_eq!(e.line(), Some(37));
        assert!(e.hint().is_some_and(|h| h.contains("65 columns")));
    }

    #[test]
    fn non_numeric_cell_names_line_column_and_text() {
        let text = b"x,y,label\n1,2,0\n3,abc,1\n";
        let e = load_text("non_numeric_cell", text, "label").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("data.csv` line 3, column 2 (`y`): `abc` is not a number"),
            "{e}"
        );
        assert_eq!(e.line(), Some(3));
        let e = load_text("empty_cell", b"x,y,label\n1,,0\n", "label").unwrap_err();
        assert!(
            e.to_string().ends_with("the empty cell is not a number"),
            "{e}"
        );
    }

    #[test]
    fn non_finite_cells_are_errors() {
        for cell in ["nan", "inf", "-Infinity", "1e40"] {
            let text = format!("x,label\n{cell},0\n");
            let e = load_text("non_finite_cells", text.as_bytes(), "label").unwrap_err();
            assert!(
                e.to_string().ends_with(&format!(
                    "line 2, column 1 (`x`): `{cell}` is not a finite number"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn missing_label_column_suggests_the_closest() {
        let text = b"x,y,lable\n1,2,0\n";
        let e = load_text("missing_label_column", text, "label").unwrap_err();
        assert!(
            e.to_string().ends_with(
                "data.csv` line 1: no column named `label` (the columns are `x`, `y`, `lable`)"
            ),
            "{e}"
        );
        assert_eq!(e.hint().as_deref(), Some("help: did you mean `lable`?"));
        let e = load_text("label_case", b"x,Label\n1,0\n", "label").unwrap_err();
        assert_eq!(e.hint().as_deref(), Some("help: did you mean `Label`?"));
    }

    #[test]
    fn header_problems() {
        let e = load_text("header_empty", b"\n \r\n", "label").unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
        let e = load_text("header_only", b"x,label\n\n", "label").unwrap_err();
        assert!(matches!(e, DataError::NoData { .. }), "{e}");
        let e = load_text("header_numbers", b"1,2,0\n3,4,1\n", "label").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("line 1: expected a header row naming the columns, found `1,2,0`"),
            "{e}"
        );
        let e = load_text("header_duplicate", b"label,label\n1,0\n", "label").unwrap_err();
        assert!(e.to_string().contains("appears 2 times"), "{e}");
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let e = load_text("invalid_utf8", b"x,label\n1,0\n2\xff,1\n", "label").unwrap_err();
        assert!(e.to_string().ends_with("line 3: not valid UTF-8"), "{e}");
    }
}
