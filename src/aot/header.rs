//! The C side of a library: the header a person reads (`NAME.h`) and the
//! wrappers (`NAME.c`, compiled into the library) that give the runtime's
//! functions the model's names and hand it the embedded data.

/// One dimension of a shape in the header: a size, or the name of a
/// dimension the functions take as an argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Extent {
    Fixed(usize),
    Arg(String),
}

/// A name and its shape.
pub type Io = (String, Vec<Extent>);

/// A library's API: its name, the dimensions its functions take (with
/// the size sets compiled), and its inputs and outputs with their shapes,
/// in the order of `NAME_run`'s arguments.
pub struct Api {
    pub name: String,
    pub source: String,
    pub dims: Vec<String>,
    /// The sizes of `dims` in each compiled variant.
    pub sizes: Vec<Vec<usize>>,
    /// The dimension `NAME_run` takes at any size (its last dimension
    /// argument), with the chunk sizes compiled.
    pub rows: Option<RowArg>,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    /// The training step's inputs, for a file with a `train` block.
    pub train: Option<Vec<Io>>,
    /// Whether a training phase's learning rate varies (`schedule`,
    /// `warmup`): the library then has `NAME_set_epoch`.
    pub lr_varies: bool,
}

/// A dimension of any size at run time: its name, the chunk sizes a run
/// is cut into, and the batch the training step takes instead.
pub struct RowArg {
    pub name: String,
    pub chunks: Vec<usize>,
    pub train_batch: Option<usize>,
}

/// The sizes of what the object file embeds.
pub struct Sizes {
    pub plan: usize,
    pub params: usize,
    pub kernels: usize,
}

/// `name` as part of a C identifier (`@` and other marks become `_`).
fn ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn extent_text(e: &Extent) -> String {
    match e {
        Extent::Fixed(n) => n.to_string(),
        Extent::Arg(d) => d.clone(),
    }
}

fn shape_text(s: &[Extent]) -> String {
    let dims: Vec<String> = s.iter().map(extent_text).collect();
    format!("[{}]", dims.join(", "))
}

impl Api {
    /// The run-time dimensions of `NAME_run` (`run`) or of the training
    /// step: the row dimension is `NAME_run`'s alone.
    fn dim_names(&self, run: bool) -> Vec<String> {
        let mut ds: Vec<String> = self.dims.iter().map(|d| ident(d)).collect();
        if run {
            ds.extend(self.rows.as_ref().map(|r| ident(&r.name)));
        }
        ds
    }

    /// The model handle and the run-time dimensions: every function's
    /// first parameters.
    fn leading_params(&self, run: bool) -> Vec<String> {
        let mut ps = vec![format!("{}_model *m", self.name)];
        ps.extend(self.dim_names(run).iter().map(|d| format!("size_t {d}")));
        ps
    }

    /// `NAME_run`'s parameter list.
    fn run_params(&self) -> String {
        let mut ps = self.leading_params(true);
        ps.extend(
            self.inputs
                .iter()
                .map(|(n, _)| format!("const float *{}", ident(n))),
        );
        ps.extend(
            self.outputs
                .iter()
                .map(|(n, _)| format!("float *{}", ident(n))),
        );
        ps.join(", ")
    }

    /// `NAME_train_step`'s parameter list.
    fn train_params(&self, inputs: &[Io]) -> String {
        let mut ps = self.leading_params(false);
        ps.extend(
            inputs
                .iter()
                .map(|(n, _)| format!("const float *{}", ident(n))),
        );
        ps.push("float *loss".into());
        ps.join(", ")
    }

    /// The exported functions, as declared, each with its comment.
    fn declared(&self) -> Vec<(&'static str, String)> {
        let n = &self.name;
        let mut fs = vec![
            (
                "/* A model with the embedded weights; NULL on failure (see the error). */",
                format!("{n}_model *{n}_new(void)"),
            ),
            (
                "/* Replaces the weights by those of the safetensors file at `path` (each\n   parameter by name and shape; a file without the optimizer's state,\n   as `nnc train --save` writes, keeps it; on error nothing changes). */",
                format!("int {n}_load_params({n}_model *m, const char *path)"),
            ),
            (
                "/* Runs the model: reads each input, writes each output (arrays of the\n   _LEN sizes above). */",
                format!("int {n}_run({})", self.run_params()),
            ),
        ];
        fs.push((
            "/* A context of `m`, to run it on another thread: a handle with its own\n   scratch buffers that reads m's weights (shared, not copied). m must\n   outlive it, and its weights must not change (load_params, train_step)\n   while a context runs; a context cannot change them. Free it with\n   {n}_free. NULL on failure. */",
            format!("{n}_model *{n}_context_new(const {n}_model *m)"),
        ));
        if let Some(inputs) = &self.train {
            fs.push((
                "/* One training step on one batch (the `train` block's loss and\n   optimizer): updates the weights and the optimizer's state in place and\n   writes the loss; a loss that is not finite is an error. */",
                format!("int {n}_train_step({})", self.train_params(inputs)),
            ));
            if self.lr_varies {
                fs.push((
                    "/* Sets the epoch (from 0) the next training steps belong to: the\n   learning rate follows the optimizer's schedule over epochs and its\n   warmup over the steps taken, as `nnc train` feeds it (epoch 0 until set). */",
                    format!("int {n}_set_epoch({n}_model *m, unsigned long long epoch)"),
                ));
            }
        }
        fs.push((
            "/* Writes the weights and the optimizer's state to a safetensors file\n   (readable by `nnc run --params` and {n}_load_params). */",
            format!("int {n}_save_params({n}_model *m, const char *path)"),
        ));
        fs.push((
            "/* The message of the calling thread's last error (\"\" if none). */",
            format!("const char *{n}_last_error(void)"),
        ));
        fs.push((
            "/* Frees a model (NULL is ignored). */",
            format!("void {n}_free({n}_model *m)"),
        ));
        fs
    }

    /// The exported functions, as declared.
    pub fn functions(&self) -> Vec<String> {
        self.declared().into_iter().map(|(_, f)| f).collect()
    }

    pub fn header(&self) -> String {
        let n = &self.name;
        let up = n.to_uppercase();
        let mut h = format!(
            "/* {n}.h: the C API of the model `{n}`, compiled by nnc from {src}.\n\
             \x20*\n\
             \x20* {n}_new() loads the model with the weights embedded at compile time;\n\
             \x20* {n}_load_params() replaces them from a safetensors file (as written by\n\
             \x20* `nnc train --save`). {n}_run() computes the outputs from the inputs:\n\
             \x20* row-major float arrays of the sizes below. Every function returns\n\
             \x20* {up}_OK or an error code, never aborts; {n}_last_error() gives the\n\
             \x20* message of the calling thread's last error.\n\
             \x20*\n\
             \x20* Threads: a {n}_model holds weights and the scratch buffers of a run,\n\
             \x20* and is used by one thread at a time. To run on several threads, give\n\
             \x20* each a context: {n}_context_new(m) makes a handle with buffers of its\n\
             \x20* own that shares m's weights (read only, not copied) for {n}_run and\n\
             \x20* {n}_save_params, freed with {n}_free before m. A run may use a pool\n\
             \x20* of worker threads.\n\
             \x20*/\n\
             #ifndef {up}_H\n#define {up}_H\n\n#include <stddef.h>\n\n\
             #ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n\
             /* The error codes. */\n\
             #define {up}_OK 0\n\
             #define {up}_ERR_ARGUMENT 1 /* a null or unusable argument */\n\
             #define {up}_ERR_PARAMS 2 /* a weights file missing, unreadable or of another model */\n\
             #define {up}_ERR_RUN 3 /* the run failed (the message says why) */\n\n",
            src = self.source
        );
        if !self.dims.is_empty() {
            let list: Vec<String> = self
                .sizes
                .iter()
                .map(|v| {
                    let xs: Vec<String> = self
                        .dims
                        .iter()
                        .zip(v)
                        .map(|(d, n)| format!("{d} = {n}"))
                        .collect();
                    xs.join(", ")
                })
                .collect();
            let fns = match self.train {
                Some(_) => format!("{n}_run and {n}_train_step"),
                None => format!("{n}_run"),
            };
            h.push_str(&format!(
                "/* Run-time dimensions: {}, the arguments after the model of\n   \
                 {fns}. The library holds a program for each set of sizes\n   \
                 compiled, another is {up}_ERR_ARGUMENT; the array lengths below\n   \
                 are macros of them. Compiled:\n   {}. */\n\n",
                self.dims.join(", "),
                list.join("; ")
            ));
        }
        if let Some(r) = &self.rows {
            let chunks: Vec<String> = r.chunks.iter().map(|c| c.to_string()).collect();
            let train = match r.train_batch {
                Some(b) => format!(
                    "\n   {n}_train_step takes batches of {} = {b} (the `train` block's).",
                    r.name
                ),
                None => String::new(),
            };
            h.push_str(&format!(
                "/* {d}: the number of rows (examples), any size from 1, the last\n   \
                 dimension argument of {n}_run; each row's outputs are those of\n   \
                 that row alone. A run goes in chunks of {}\n   rows.{train} */\n\n",
                chunks.join(", "),
                d = r.name,
            ));
        }
        let mut io = |kind: &str, list: &[Io], run: bool| {
            let args = self.dim_names(run).join(", ");
            for (name, shape) in list {
                let id = ident(name).to_uppercase();
                h.push_str(&format!("/* {kind} `{name}`: {}. */\n", shape_text(shape)));
                h.push_str(&format!("#define {up}_{id}_RANK {}\n", shape.len()));
                for (k, d) in shape.iter().enumerate() {
                    if let Extent::Fixed(d) = d {
                        h.push_str(&format!("#define {up}_{id}_DIM{k} {d}\n"));
                    }
                }
                let fixed: usize = shape
                    .iter()
                    .map(|e| match e {
                        Extent::Fixed(n) => *n,
                        Extent::Arg(_) => 1,
                    })
                    .product();
                let varying: Vec<String> = shape
                    .iter()
                    .filter_map(|e| match e {
                        Extent::Arg(d) => Some(format!("(size_t)({})", ident(d))),
                        Extent::Fixed(_) => None,
                    })
                    .collect();
                if args.is_empty() {
                    h.push_str(&format!("#define {up}_{id}_LEN {fixed}\n\n"));
                } else {
                    let mut factors = varying;
                    if fixed != 1 || factors.is_empty() {
                        factors.push(fixed.to_string());
                    }
                    h.push_str(&format!(
                        "#define {up}_{id}_LEN({args}) ({})\n\n",
                        factors.join(" * ")
                    ));
                }
            }
        };
        io("input", &self.inputs, true);
        if let Some(t) = &self.train {
            let only: Vec<_> = t
                .iter()
                .filter(|(n, _)| !self.inputs.iter().any(|(m, _)| m == n))
                .cloned()
                .collect();
            io("training input", &only, false);
        }
        io("output", &self.outputs, true);
        h.push_str(&format!(
            "/* A loaded model (opaque). */\ntypedef struct {n}_model {n}_model;\n\n"
        ));
        for (d, f) in self.declared() {
            h.push_str(&format!("{}\n{f};\n\n", d.replace("{n}", n)));
        }
        h.push_str("#ifdef __cplusplus\n}\n#endif\n\n#endif\n");
        h
    }

    /// The wrappers: each exported function calls the runtime with the
    /// library's data.
    pub fn wrappers(&self, sizes: &Sizes, header: &str) -> String {
        let n = &self.name;
        let ins: Vec<String> = self.inputs.iter().map(|(x, _)| ident(x)).collect();
        let outs: Vec<String> = self.outputs.iter().map(|(x, _)| ident(x)).collect();
        let array = |ty: &str, var: &str, xs: &[String]| match xs.len() {
            0 => format!("    {ty} *const *{var} = 0;\n"),
            _ => format!("    {ty} *const {var}[] = {{{}}};\n", xs.join(", ")),
        };
        let dims_arr = |run: bool| match self.dim_names(run) {
            d if d.is_empty() => "    const size_t *dims = 0;\n".to_string(),
            d => format!("    const size_t dims[] = {{{}}};\n", d.join(", ")),
        };
        format!(
            "/* {n}.c: generated by nnc; the exported functions of `{n}`. */\n\
             #include <stddef.h>\n#include \"{header}\"\n\n\
             struct nnc_rt_model;\n\
             struct nnc_rt_model *nnc_rt_new(const unsigned char *plan, size_t plan_len,\n\
             \x20   void *const *kernels, size_t n_kernels, const unsigned char *params, size_t params_len);\n\
             int nnc_rt_load_params(struct nnc_rt_model *m, const char *path);\n\
             int nnc_rt_run(struct nnc_rt_model *m, const size_t *dims, const float *const *inputs,\n\
             \x20   float *const *outputs);\n\
             int nnc_rt_train_step(struct nnc_rt_model *m, const size_t *dims, const float *const *inputs,\n\
             \x20   float *loss);\n\
             int nnc_rt_save_params(struct nnc_rt_model *m, const char *path);\n\
             int nnc_rt_set_epoch(struct nnc_rt_model *m, unsigned long long epoch);\n\
             const char *nnc_rt_last_error(void);\n\
             void nnc_rt_free(struct nnc_rt_model *m);\n\
             struct nnc_rt_model *nnc_rt_context_new(const struct nnc_rt_model *m);\n\n\
             extern const unsigned char {n}__nnc_plan[];\n\
             extern const unsigned char {n}__nnc_params[];\n\
             extern void *const {n}__nnc_kernels[];\n\n\
             {n}_model *{n}_new(void) {{\n\
             \x20   return ({n}_model *)nnc_rt_new({n}__nnc_plan, {plan}, {n}__nnc_kernels, {kernels},\n\
             \x20       {n}__nnc_params, {params});\n}}\n\n\
             {n}_model *{n}_context_new(const {n}_model *m) {{\n\
             \x20   return ({n}_model *)nnc_rt_context_new((const struct nnc_rt_model *)m);\n}}\n\n\
             int {n}_load_params({n}_model *m, const char *path) {{\n\
             \x20   return nnc_rt_load_params((struct nnc_rt_model *)m, path);\n}}\n\n\
             int {n}_run({run}) {{\n{dims_arr}{in_arr}{out_arr}\
             \x20   return nnc_rt_run((struct nnc_rt_model *)m, dims, inputs, outputs);\n}}\n\n\
             {train}\
             int {n}_save_params({n}_model *m, const char *path) {{\n\
             \x20   return nnc_rt_save_params((struct nnc_rt_model *)m, path);\n}}\n\n\
             const char *{n}_last_error(void) {{\n    return nnc_rt_last_error();\n}}\n\n\
             void {n}_free({n}_model *m) {{\n    nnc_rt_free((struct nnc_rt_model *)m);\n}}\n",
            plan = sizes.plan,
            params = sizes.params,
            kernels = sizes.kernels,
            run = self.run_params(),
            dims_arr = dims_arr(true),
            in_arr = array("const float", "inputs", &ins),
            out_arr = array("float", "outputs", &outs),
            train = match &self.train {
                None => String::new(),
                Some(t) => {
                    let xs: Vec<String> = t.iter().map(|(x, _)| ident(x)).collect();
                    let set_epoch = match self.lr_varies {
                        true => format!(
                            "int {n}_set_epoch({n}_model *m, unsigned long long epoch) {{\n\
                             \x20   return nnc_rt_set_epoch((struct nnc_rt_model *)m, epoch);\n}}\n\n"
                        ),
                        false => String::new(),
                    };
                    format!(
                        "int {n}_train_step({}) {{\n{}{}\
                         \x20   return nnc_rt_train_step((struct nnc_rt_model *)m, dims, inputs, loss);\n}}\n\n{set_epoch}",
                        self.train_params(t),
                        dims_arr(false),
                        array("const float", "inputs", &xs)
                    )
                }
            },
        )
    }
}
