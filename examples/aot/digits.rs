//! Classifies the 8x8 handwritten digits from Rust with a library compiled
//! by nnc, through its C API (`extern "C"`; no nnc crate at run time).
//! Build the library as README.md says (`--dim B=1 -o digits.so`), then:
//!
//!   rustc --edition 2021 -O examples/aot/digits.rs -o classify-rs \
//!       -C link-arg=./digits.so -C link-arg=-Wl,-rpath,'$ORIGIN'
//!   ./classify-rs examples/data/digits.csv
//!
//! The pixels are scaled by 1/16, as in training; the accuracy is over
//! every row.

use std::ffi::{c_char, c_int, CStr};

/// The model handle of `digits.h` (opaque).
#[repr(C)]
struct DigitsModel {
    _private: [u8; 0],
}

extern "C" {
    fn digits_new() -> *mut DigitsModel;
    fn digits_run(m: *mut DigitsModel, x: *const f32, predict: *mut f32) -> c_int;
    fn digits_last_error() -> *const c_char;
    fn digits_free(m: *mut DigitsModel);
}

/// `digits.h`'s DIGITS_MLP_X_LEN and DIGITS_PREDICT_LEN (batch 1).
const PIXELS: usize = 64;
const CLASSES: usize = 10;

/// A loaded model, freed when dropped.
struct Model(*mut DigitsModel);

impl Model {
    fn new() -> Result<Model, String> {
        // SAFETY: digits_new takes no arguments; null means an error.
        let m = unsafe { digits_new() };
        if m.is_null() {
            return Err(last_error());
        }
        Ok(Model(m))
    }

    fn run(&mut self, x: &[f32; PIXELS]) -> Result<[f32; CLASSES], String> {
        let mut scores = [0.0f32; CLASSES];
        // SAFETY: the arrays have the lengths the header declares.
        match unsafe { digits_run(self.0, x.as_ptr(), scores.as_mut_ptr()) } {
            0 => Ok(scores),
            _ => Err(last_error()),
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: the handle came from digits_new and is not used again.
        unsafe { digits_free(self.0) }
    }
}

fn last_error() -> String {
    // SAFETY: digits_last_error returns a NUL-terminated string.
    unsafe { CStr::from_ptr(digits_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn main() -> Result<(), String> {
    let path = std::env::args().nth(1).ok_or("usage: classify-rs digits.csv")?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut model = Model::new()?;
    let (mut rows, mut right) = (0, 0);
    for line in text.lines().skip(1) {
        let values: Vec<f32> = line.split(',').filter_map(|v| v.trim().parse().ok()).collect();
        if values.len() != PIXELS + 1 {
            return Err(format!("{path}: a row of {} values", values.len()));
        }
        let mut x = [0.0f32; PIXELS];
        for (xi, v) in x.iter_mut().zip(&values) {
            *xi = v / 16.0;
        }
        let scores = model.run(&x)?;
        let best = (0..CLASSES)
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap_or(0);
        right += usize::from(best == values[PIXELS] as usize);
        rows += 1;
    }
    let accuracy = if rows > 0 { right as f64 / rows as f64 } else { 0.0 };
    println!("{rows} rows, {right} classified right: accuracy {accuracy:.4}");
    Ok(())
}
