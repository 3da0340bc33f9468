//! `nnc.Model`: a compiled file, its parameter values, and the engines
//! that run it; `nnc.Params`: the parameters as a dict-like of arrays.

use crate::arrays::{array_of, tensor_of};
use crate::runner::Runner;
use crate::{error_of, warn};
use cranelift_entity::SecondaryMap;
use nnc::backend::{interp, BackendKind};
use nnc::diag::{Diag, SourceMap};
use nnc::driver::graphs::{self, Given, Origin};
use nnc::ir::{Graph, ParamId};
use nnc::pipeline::{self, GradGraph};
use nnc::sema::TrainSpec;
use nnc::tensor::Tensor;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What `nnc.compile` hands a new model.
pub struct Compiled {
    pub name: String,
    pub sources: SourceMap,
    pub graph: Graph,
    pub train: Option<TrainSpec>,
    pub seed: Option<u64>,
    pub backend: BackendKind,
    /// The folder the `train` block's data paths are relative to.
    pub base_dir: PathBuf,
    /// The file compiled, when it was one (training never overwrites it).
    pub file: Option<PathBuf>,
}

/// A compiled `.nn` file: `run`, `grad`, `train`, `params`, `save`, `load`.
#[pyclass(frozen, module = "nnc")]
pub struct Model {
    name: String,
    sources: SourceMap,
    graph: Graph,
    train: Option<TrainSpec>,
    seed: u64,
    backend: BackendKind,
    base_dir: PathBuf,
    file: Option<PathBuf>,
    /// Taken only with the GIL released (see the crate's docs).
    state: Mutex<State>,
}

/// What changes: the parameter values, and the engines (made on first
/// use) that keep their compiled programs.
struct State {
    /// The file's parameters and states, by the graph's ids (the run and
    /// gradient graphs share them).
    params: SecondaryMap<ParamId, Tensor>,
    run: Option<Runner<Graph>>,
    grad: Option<Runner<GradGraph>>,
}

impl Model {
    pub fn new(c: Compiled) -> Model {
        let seed = c.seed.or(c.train.as_ref().map(|t| t.seed)).unwrap_or(0);
        let params = interp::init_params(&c.graph, seed);
        Model {
            name: c.name,
            sources: c.sources,
            graph: c.graph,
            train: c.train,
            seed,
            backend: c.backend,
            base_dir: c.base_dir,
            file: c.file,
            state: Mutex::new(State {
                params,
                run: None,
                grad: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while it was held left nothing half-written that a
        // later call relies on: the engines are rebuilt if need be.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, d: Diag) -> PyErr {
        error_of(&self.sources, vec![d])
    }

    /// The parameter a key names: its full name, or the part after its
    /// model's `.` when one parameter has it.
    fn param(&self, key: &str) -> PyResult<ParamId> {
        let found: Vec<ParamId> = self
            .graph
            .params
            .iter()
            .filter(|(_, p)| p.name == key)
            .map(|(id, _)| id)
            .collect();
        let found = match found.is_empty() {
            true => self
                .graph
                .params
                .iter()
                .filter(|(_, p)| p.name.rsplit('.').next() == Some(key))
                .map(|(id, _)| id)
                .collect(),
            false => found,
        };
        match found.as_slice() {
            [id] => Ok(*id),
            _ => {
                let names: Vec<&str> = self
                    .graph
                    .params
                    .values()
                    .map(|p| p.name.as_str())
                    .collect();
                Err(PyKeyError::new_err(format!(
                    "`{key}` names {} parameter of `{}`; its parameters are: {}",
                    if found.is_empty() {
                        "no"
                    } else {
                        "more than one"
                    },
                    self.name,
                    names.join(", ")
                )))
            }
        }
    }

    /// Keyword arguments as values given for inputs.
    fn given(inputs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<Given>> {
        let mut given = Vec::new();
        for (k, v) in inputs.into_iter().flat_map(|d| d.iter()) {
            given.push(Given {
                name: k.extract()?,
                tensor: tensor_of(&v)?,
                from: Origin::Keyword,
            });
        }
        Ok(given)
    }
}

#[pymethods]
impl Model {
    /// The outputs (or, for a file with none, the `train` block's
    /// `predict`) on the inputs given by name, as `nnc run --input` gives
    /// them: a dict of float32 arrays. Inputs not given take their
    /// declared values; symbolic dimensions take their sizes from the
    /// arrays.
    #[pyo3(signature = (**inputs))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let given = Model::given(inputs)?;
        let ran = py.detach(|| {
            let mut st = self.lock();
            let State { params, run, .. } = &mut *st;
            let runner = match run {
                Some(r) => r,
                None => {
                    let g = graphs::run_graph_of(&self.graph, self.train.as_ref())?
                        .unwrap_or_else(|| self.graph.clone());
                    run.insert(Runner::new(g, self.backend))
                }
            };
            let (g, engine) = runner.parts();
            let fed = graphs::feed(g, self.train.as_ref(), given)?;
            graphs::run_on(engine, g, self.seed, params, fed).map_err(|e| e.to_diag())
        });
        let outputs = ran.map_err(|d| self.error(d))?;
        let dict = PyDict::new(py);
        for (name, t) in outputs {
            dict.set_item(name, array_of(py, t)?)?;
        }
        Ok(dict)
    }

    /// The loss (the `train` block's, or an output named `loss`) and its
    /// gradient with respect to every trainable parameter, as `nnc grad`
    /// gives them: `{"loss": float, "grad.NAME": array, ...}`, on the
    /// inputs given by name (the others take their declared values).
    #[pyo3(signature = (**inputs))]
    fn grad<'py>(
        &self,
        py: Python<'py>,
        inputs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let given = Model::given(inputs)?;
        let ran = py.detach(|| {
            let mut st = self.lock();
            let State { params, grad, .. } = &mut *st;
            let mut warnings = Vec::new();
            let runner = match grad {
                Some(r) => r,
                None => {
                    let loss = pipeline::find_loss(&self.graph, self.train.as_ref())?;
                    let mut gg = pipeline::grad_graph(&self.graph, loss)?;
                    warnings = std::mem::take(&mut gg.warnings);
                    grad.insert(Runner::new(gg, self.backend))
                }
            };
            let (gg, engine) = runner.parts();
            let mut fed = SecondaryMap::new();
            for (id, t) in graphs::feed(&gg.graph, self.train.as_ref(), given)? {
                fed[id] = Some(t);
            }
            graphs::grads_on(engine, gg, params, &fed).map(|r| (r, warnings))
        });
        let ((loss, grads), warnings) = ran.map_err(|d| self.error(d))?;
        warn(py, &self.sources, warnings)?;
        let dict = PyDict::new(py);
        dict.set_item("loss", loss)?;
        for (name, t) in grads {
            dict.set_item(format!("grad.{name}"), array_of(py, t)?)?;
        }
        Ok(dict)
    }

    /// Trains with the file's `train` block, as `nnc train` does, from
    /// the current parameter values (a fresh optimizer state), and keeps
    /// the trained values. `epochs` overrides the block's; `data` is a
    /// CSV file to train on instead of the block's `csv(...)` (same
    /// columns). `callback(figures)` is called after every epoch with a
    /// dict: `epoch`, `train_loss`, `val_loss`, `val_accuracy`, `lr` and
    /// the block's metrics. Returns the training loss of every epoch.
    ///
    /// An exception in the callback (or Ctrl-C) stops training at its
    /// next step, which it finishes; the values trained so far are kept
    /// and the exception raised.
    ///
    /// As `nnc train`, it flushes subnormal floats to zero on the JIT
    /// (`NNC_FLUSH_SUBNORMALS=0` keeps them).
    #[pyo3(signature = (epochs=None, data=None, callback=None))]
    fn train(
        &self,
        py: Python<'_>,
        epochs: Option<usize>,
        data: Option<PathBuf>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Vec<f32>> {
        let Some(spec) = &self.train else {
            return Err(self.error(
                nnc::diag::error(nnc::diag::code::INPUT, "this file has no `train` block")
                    .with_notes(vec!["help: add `train Model { loss = ...; data = csv(\"...\"); optimizer = adam(lr = 1e-3) }`".into()]),
            ));
        };
        let mut spec = spec.clone();
        if let Some(path) = data {
            replace_csv(&mut spec, path)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let start: Vec<(String, Tensor)> = py.detach(|| {
            let st = self.lock();
            self.graph
                .params
                .iter()
                .map(|(id, p)| (p.name.clone(), st.params[id].clone()))
                .collect()
        });
        let opts = nnc::train::Options {
            epochs,
            seed: Some(self.seed),
            backend: self.backend,
            base_dir: self.base_dir.clone(),
            source: self.file.clone(),
            start,
            stop: Some(stop.clone()),
            ..Default::default()
        };
        // The first exception of the callback (or a signal), raised once
        // training has stopped.
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| {
            nnc::train::run(&self.graph, &spec, &opts, &mut |ev| {
                if raised.is_some() {
                    return;
                }
                let outcome = Python::attach(|py| match ev {
                    nnc::train::Event::Epoch(s) => match &callback {
                        Some(f) => figures(py, s).and_then(|d| f.call1(py, (d,)).map(drop)),
                        None => py.check_signals(),
                    },
                    nnc::train::Event::Step { .. } => py.check_signals(),
                    nnc::train::Event::Start { .. } => Ok(()),
                });
                if let Err(e) = outcome {
                    raised = Some(e);
                    stop.store(true, Ordering::SeqCst);
                }
            })
        });
        let summary = result.map_err(|d| self.error(d))?;
        py.detach(|| {
            let mut st = self.lock();
            let by_name: HashMap<&str, &Tensor> = summary
                .values
                .iter()
                .map(|(n, t)| (n.as_str(), t))
                .collect();
            for (id, p) in self.graph.params.iter() {
                if let Some(t) = by_name.get(p.name.as_str()) {
                    st.params[id] = (*t).clone();
                }
            }
        });
        if let Some(e) = raised {
            return Err(e);
        }
        warn(py, &self.sources, summary.warnings)?;
        Ok(summary.epochs.iter().map(|s| s.train_loss).collect())
    }

    /// The parameters (and the program's states, such as running
    /// statistics) as a dict-like of arrays: `m.params["w1"]` is a copy,
    /// `m.params["w1"] = array` assigns one of the declared shape.
    #[getter]
    fn params(slf: &Bound<'_, Model>) -> Params {
        Params {
            model: slf.clone().unbind(),
        }
    }

    /// Writes the parameters and states to a safetensors file, as plain
    /// weights (what `nnc run --params`, `nnc predict --params` and
    /// `Model.load` read).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| {
            let st = self.lock();
            let tensors: Vec<(String, &Tensor)> = self
                .graph
                .params
                .iter()
                .map(|(id, p)| (p.name.clone(), &st.params[id]))
                .collect();
            nnc::train::checkpoint::save(&path, &tensors, &HashMap::new())
        })
        .map_err(|e| {
            error_of(
                &SourceMap::new(),
                vec![nnc::diag::error(nnc::diag::code::FILE, e.to_string())],
            )
        })
    }

    /// Reads the parameters (and states) from a safetensors file written
    /// by `Model.save` or `nnc train --save`: each by name, of the
    /// declared shape, or an `nnc.Error` that says which is not.
    fn load(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| {
            let mut st = self.lock();
            nnc::train::restore(&self.graph, &mut st.params, &path).map(drop)
        })
        .map_err(|d| self.error(d))
    }

    /// The inputs by name, with their declared shapes (`"[B, 64]"`).
    #[getter]
    fn inputs(&self) -> Vec<(String, String)> {
        self.graph
            .inputs
            .values()
            .filter(|i| !i.name.starts_with('@'))
            .map(|i| (i.name.clone(), self.graph.shape_str(&i.ty.shape)))
            .collect()
    }

    /// The name diagnostics give the source.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn __repr__(&self) -> String {
        format!(
            "<nnc.Model {} ({} parameters{})>",
            self.name,
            self.graph.params.len(),
            if self.train.is_some() {
                ", train block"
            } else {
                ""
            }
        )
    }
}

/// An epoch's figures as a dict.
fn figures<'py>(py: Python<'py>, s: &nnc::train::EpochStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("epoch", s.epoch)?;
    d.set_item("train_loss", s.train_loss)?;
    d.set_item("val_loss", s.val_loss)?;
    d.set_item("val_accuracy", s.val_accuracy)?;
    d.set_item("lr", s.lr)?;
    for (name, v) in s.phase_losses.iter().chain(&s.metrics) {
        d.set_item(name, v)?;
    }
    Ok(d)
}

/// `train(data=...)`: the block's `csv(...)` file replaced.
fn replace_csv(spec: &mut TrainSpec, path: PathBuf) -> PyResult<()> {
    use nnc::data::Source;
    use nnc::sema::Feeds;
    match spec.data.as_mut().map(|d| &mut d.feeds) {
        Some(Feeds::Pair(Source::Csv { path: p, .. })) => {
            *p = path;
            Ok(())
        }
        _ => Err(PyValueError::new_err(
            "`data=` replaces the file of the `train` block's `data = csv(...)`, and this block has no such data",
        )),
    }
}

/// `Model.params`: a dict-like view of a model's parameters. Reading
/// gives a copy; assigning checks the shape.
#[pyclass(frozen, module = "nnc", mapping)]
pub struct Params {
    model: Py<Model>,
}

#[pymethods]
impl Params {
    fn __getitem__<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        let m = self.model.get();
        let id = m.param(key)?;
        let t = py.detach(|| m.lock().params[id].clone());
        Ok(array_of(py, t)?.into_any())
    }

    fn __setitem__(&self, py: Python<'_>, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let m = self.model.get();
        let id = m.param(key)?;
        let t = tensor_of(value)?;
        let info = &m.graph.params[id];
        let declared: Vec<usize> = info.shape.iter().map(|&d| d as usize).collect();
        if t.shape != declared {
            return Err(PyValueError::new_err(format!(
                "`{}` is declared {:?}, and the array assigned has shape {:?}",
                info.name, declared, t.shape
            )));
        }
        py.detach(|| m.lock().params[id] = t);
        Ok(())
    }

    fn __contains__(&self, key: &str) -> bool {
        self.model.get().param(key).is_ok()
    }

    fn __len__(&self) -> usize {
        self.model.get().graph.params.len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, self.keys())?
            .as_any()
            .try_iter()
            .map(Bound::into_any)
    }

    /// The parameters' full names (`Mlp.w1`), in declaration order.
    fn keys(&self) -> Vec<String> {
        let m = self.model.get();
        m.graph.params.values().map(|p| p.name.clone()).collect()
    }

    /// (name, array) pairs, each array a copy.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
        let m = self.model.get();
        let all: Vec<(String, Tensor)> = py.detach(|| {
            let st = m.lock();
            m.graph
                .params
                .iter()
                .map(|(id, p)| (p.name.clone(), st.params[id].clone()))
                .collect()
        });
        all.into_iter()
            .map(|(n, t)| Ok((n, array_of(py, t)?.into_any())))
            .collect()
    }

    fn __repr__(&self) -> String {
        let m = self.model.get();
        let shown: Vec<String> = m
            .graph
            .params
            .values()
            .map(|p| format!("{}: {:?}", p.name, p.shape))
            .collect();
        format!("<nnc.Params {{{}}}>", shown.join(", "))
    }
}
