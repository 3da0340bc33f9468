//! NumPy arrays to tensors and back. An array that is already `float32`
//! and C-contiguous is copied once into the tensor (a tensor owns its
//! data); any other array-like is converted by NumPy first. A tensor
//! becomes an array without a copy: its buffer is handed to NumPy.

use nnc::tensor::Tensor;
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// An array-like as a tensor of `float32`.
pub fn tensor_of(obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let array: PyReadonlyArrayDyn<'_, f32> = match obj.extract() {
        Ok(a) => a,
        Err(_) => {
            let np = PyModule::import(obj.py(), "numpy")?;
            np.getattr("asarray")?.call1((obj, "float32"))?.extract()?
        }
    };
    let shape = array.shape().to_vec();
    let data = match array.as_slice() {
        Ok(s) => s.to_vec(),
        // Not C-contiguous (a transposed or sliced view): row-major order.
        Err(_) => array.as_array().iter().copied().collect(),
    };
    Ok(Tensor::new(shape, data))
}

/// A tensor as a NumPy array, its buffer moved, not copied.
pub fn array_of(py: Python<'_>, t: Tensor) -> PyResult<Bound<'_, PyArrayDyn<f32>>> {
    let a = ArrayD::from_shape_vec(IxDyn(&t.shape), t.data)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}
