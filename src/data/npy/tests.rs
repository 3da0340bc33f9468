//! Tests of `.npy` loading on files written here, header bytes included.

use super::super::testutil::TempDir;
use super::*;

/// A `.npy` file with the given header dict text, padded as NumPy does.
fn npy_raw(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let prefix = if major == 1 { 10 } else { 12 };
    let mut header = dict.to_string();
    while !(prefix + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend([major, 0]);
    if major == 1 {
        out.extend((header.len() as u16).to_le_bytes());
    } else {
        out.extend((header.len() as u32).to_le_bytes());
    }
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn npy(major: u8, descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    npy_raw(major, &dict, data)
}

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f64s(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i64s(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn npy_f4_features_and_i8_labels_round_trip() {
    let dir = TempDir::new("npy_f4_features_and_i8_labels_round_trip");
    let x = [0.5, -1.0, 2.0, 3.25, 4.0, 5.0];
    let features = dir.file("x.npy", &npy(1, "<f4", &[3, 2], &f32s(&x)));
    let labels = dir.file("y.npy", &npy(1, "<i8", &[3], &i64s(&[2, 0, 1])));
    let ds = load(&features, &labels, 2.0).unwrap();
    assert_eq!(ds.features.shape, vec![3, 2]);
    assert_eq!(ds.features.data, vec![1.0, -2.0, 4.0, 6.5, 8.0, 10.0]);
    assert_eq!(ds.labels, vec![2.0, 0.0, 1.0]);
}

#[test]
fn npy_f8_3d_features_and_u1_column_labels_in_versions_2_and_3() {
    let dir = TempDir::new("npy_f8_3d_features_and_u1_column_labels");
    let x: Vec<f64> = (0..8).map(f64::from).collect();
    let features = dir.file("x.npy", &npy(2, "<f8", &[2, 2, 2], &f64s(&x)));
    let labels = dir.file("y.npy", &npy(3, "|u1", &[2, 1], &[9, 4]));
    let ds = load(&features, &labels, 1.0).unwrap();
    assert_eq!(ds.features.shape, vec![2, 4]);
    assert_eq!(
        ds.features.data,
        (0..8).map(|v| v as f32).collect::<Vec<_>>()
    );
    assert_eq!(ds.labels, vec![9.0, 4.0]);
}

#[test]
fn npy_other_integer_dtypes_and_python2_header() {
    let dir = TempDir::new("npy_other_integer_dtypes_and_python2_header");
    let x: Vec<u8> = [-3i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    let dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (2L,), }";
    let features = dir.file("x.npy", &npy_raw(1, dict, &x));
    let y: Vec<u8> = [1u16, 300].iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels = dir.file("y.npy", &npy(1, "<u2", &[2], &y));
    let ds = load(&features, &labels, 1.0).unwrap();
    assert_eq!(ds.features.shape, vec![2, 1]);
    assert_eq!(ds.features.data, vec![-3.0, 7.0]);
    assert_eq!(ds.labels, vec![1.0, 300.0]);
}

#[test]
fn npy_bad_magic_and_version() {
    let dir = TempDir::new("npy_bad_magic_and_version");
    let labels = dir.file("y.npy", &npy(1, "|u1", &[1], &[0]));
    let text = dir.file("x.npy", b"0.5,1.0\n");
    let e = load(&text, &labels, 1.0).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("x.npy`: not a .npy file (it does not start with `\\x93NUMPY`)"),
        "{e}"
    );
    let mut v4 = npy(1, "|u1", &[1], &[0]);
    v4[6] = 4;
    let v4 = dir.file("v4.npy", &v4);
    let e = load(&v4, &labels, 1.0).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("v4.npy`: unsupported .npy format version 4.0"),
        "{e}"
    );
    let short = dir.file("short.npy", MAGIC);
    let e = load(&short, &labels, 1.0).unwrap_err();
    assert!(matches!(e, DataError::NpyHeader { .. }), "{e}");
}

#[test]
fn npy_unsupported_dtype_and_fortran_order() {
    let dir = TempDir::new("npy_unsupported_dtype_and_fortran_order");
    let labels = dir.file("y.npy", &npy(1, "|u1", &[1], &[0]));
    for descr in [">f4", "<c8", "<U3", "<f2", "=f4"] {
        let features = dir.file("x.npy", &npy(1, descr, &[1], &[0; 4]));
        let e = load(&features, &labels, 1.0).unwrap_err();
        assert!(
            e.to_string()
                .ends_with(&format!("x.npy`: unsupported dtype `{descr}`")),
            "{e}"
        );
        assert!(e.hint().is_some_and(|h| h.contains("astype")));
    }
    let dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1), }";
    let features = dir.file("f.npy", &npy_raw(1, dict, &f32s(&[1.0])));
    let e = load(&features, &labels, 1.0).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("f.npy`: the array is stored in Fortran order"),
        "{e}"
    );
}

#[test]
fn npy_size_and_shape_mismatches() {
    let dir = TempDir::new("npy_size_and_shape_mismatches");
    let labels = dir.file("y.npy", &npy(1, "|u1", &[2], &[0, 1]));
    let short = dir.file("short.npy", &npy(1, "<f4", &[2, 2], &f32s(&[1.0; 3])));
    let e = load(&short, &labels, 1.0).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("short.npy`: shape (2, 2) needs 16 bytes of data, found 12"),
        "{e}"
    );
    let square = dir.file("sq.npy", &npy(1, "|u1", &[2, 2], &[0; 4]));
    let e = load(&short, &square, 1.0).unwrap_err();
    assert!(matches!(e, DataError::NpySize { .. }), "{e}");
    let features = dir.file("x.npy", &npy(1, "<f4", &[2, 2], &f32s(&[1.0; 4])));
    let e = load(&features, &square, 1.0).unwrap_err();
    assert!(
        e.to_string().ends_with(
            "sq.npy`: labels must be a 1-D array or of shape (N, 1), found shape (2, 2)"
        ),
        "{e}"
    );
    let scalar = dir.file("s.npy", &npy(1, "<f4", &[], &f32s(&[1.0])));
    let e = load(&scalar, &labels, 1.0).unwrap_err();
    assert!(e.to_string().ends_with("found shape ()"), "{e}");
}

#[test]
fn npy_row_count_mismatch() {
    let dir = TempDir::new("npy_row_count_mismatch");
    let features = dir.file("x.npy", &npy(1, "<f4", &[3, 1], &f32s(&[1.0; 3])));
    let labels = dir.file("y.npy", &npy(1, "|u1", &[2], &[0, 1]));
    let e = load(&features, &labels, 1.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "`{}` holds 3 rows but `{}` holds 2 labels",
            features.display(),
            labels.display()
        )
    );
    let empty = dir.file("e.npy", &npy(1, "<f4", &[0, 3], &[]));
    let none = dir.file("n.npy", &npy(1, "|u1", &[0], &[]));
    let e = load(&empty, &none, 1.0).unwrap_err();
    assert!(matches!(e, DataError::NoData { .. }), "{e}");
}

#[test]
fn npy_non_finite_value_names_the_record() {
    let dir = TempDir::new("npy_non_finite_value_names_the_record");
    let x = f32s(&[1.0, 2.0, 3.0, f32::NAN]);
    let features = dir.file("x.npy", &npy(1, "<f4", &[2, 2], &x));
    let labels = dir.file("y.npy", &npy(1, "|u1", &[2], &[0, 1]));
    let e = load(&features, &labels, 1.0).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("x.npy` record 1: value `NaN` is not a finite number"),
        "{e}"
    );
    let big = dir.file("big.npy", &npy(1, "<f8", &[2, 1], &f64s(&[1.0, 1e300])));
    let e = load(&big, &labels, 1.0).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("record 1: value `inf` is not a finite number"),
        "{e}"
    );
}

#[test]
fn a_header_of_nul_bytes_is_shown_escaped() {
    let dir = TempDir::new("npy_nul_header");
    let bad = dir.file("x.npy", &npy_raw(1, "\0\0\0{'descr': '<f4'}", &[]));
    let labels = dir.file("y.npy", &npy(1, "|u1", &[1], &[0]));
    let e = load(&bad, &labels, 1.0).unwrap_err().to_string();
    assert!(!e.contains('\0'), "a NUL byte reaches the message: {e:?}");
    assert!(e.contains("\\u{0}"), "{e}");
}
