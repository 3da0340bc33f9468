//! The primitives the language exposes by name. Everything else a user
//! calls is a `.nn` function (the stdlib's or their own).

/// A builtin function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Exp,
    Log,
    Sqrt,
    Abs,
    Tanh,
    Sigmoid,
    Maximum,
    Minimum,
    Sum,
    Mean,
    Max,
    Select,
    Reshape,
    Transpose,
    Zeros,
    Ones,
    Full,
    Conv2d,
    MaxPool2d,
    AvgPool2d,
    Slice,
    Concat,
    Gather,
    ScatterAdd,
    /// `scan(f, init, xs, extra…)`: a loop; lowered by `lower::scan`.
    Scan,
    /// `random_normal(shape)`, `random_uniform(shape)`: fresh values every
    /// training step.
    RandomNormal,
    RandomUniform,
    /// `training()`: 1 in a training step, 0 elsewhere.
    Training,
    /// `assign(state, value)`: `value`, which a training step stores in
    /// `state` after the step.
    Assign,
}

/// How a builtin's argument is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// A tensor value.
    Tensor,
    /// A compile-time integer or list of integers (an axis).
    Axes,
    /// A compile-time `true`/`false`.
    Bool,
    /// A compile-time shape: `[B, 8]`, with dimension names.
    Shape,
    /// A compile-time list of integers (a permutation).
    Perm,
    /// A compile-time number.
    Number,
    /// A compile-time integer (a stride, a window size, a slice bound).
    Int,
    /// A compile-time dimension: an integer or a dimension name, `N`.
    Dim,
}

/// One parameter of a builtin's signature.
#[derive(Clone, Copy, Debug)]
pub struct BParam {
    pub name: &'static str,
    pub kind: ArgKind,
    pub required: bool,
}

const fn req(name: &'static str, kind: ArgKind) -> BParam {
    BParam {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: ArgKind) -> BParam {
    BParam {
        name,
        kind,
        required: false,
    }
}

use ArgKind::*;

pub const ALL: &[(&str, Builtin)] = &[
    ("exp", Builtin::Exp),
    ("log", Builtin::Log),
    ("sqrt", Builtin::Sqrt),
    ("abs", Builtin::Abs),
    ("tanh", Builtin::Tanh),
    ("sigmoid", Builtin::Sigmoid),
    ("maximum", Builtin::Maximum),
    ("minimum", Builtin::Minimum),
    ("sum", Builtin::Sum),
    ("mean", Builtin::Mean),
    ("max", Builtin::Max),
    ("select", Builtin::Select),
    ("reshape", Builtin::Reshape),
    ("transpose", Builtin::Transpose),
    ("zeros", Builtin::Zeros),
    ("ones", Builtin::Ones),
    ("full", Builtin::Full),
    ("conv2d", Builtin::Conv2d),
    ("max_pool2d", Builtin::MaxPool2d),
    ("avg_pool2d", Builtin::AvgPool2d),
    ("slice", Builtin::Slice),
    ("concat", Builtin::Concat),
    ("gather", Builtin::Gather),
    ("scatter_add", Builtin::ScatterAdd),
    ("scan", Builtin::Scan),
    ("random_normal", Builtin::RandomNormal),
    ("random_uniform", Builtin::RandomUniform),
    ("training", Builtin::Training),
    ("assign", Builtin::Assign),
];

impl Builtin {
    pub fn name(self) -> &'static str {
        ALL.iter()
            .find(|(_, b)| *b == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    pub fn params(self) -> &'static [BParam] {
        const UNARY: &[BParam] = &[req("x", Tensor)];
        const BINARY: &[BParam] = &[req("a", Tensor), req("b", Tensor)];
        const REDUCE: &[BParam] = &[req("x", Tensor), opt("axis", Axes), opt("keepdims", Bool)];
        const SELECT: &[BParam] = &[req("cond", Tensor), req("a", Tensor), req("b", Tensor)];
        const RESHAPE: &[BParam] = &[req("x", Tensor), req("shape", Shape)];
        const TRANSPOSE: &[BParam] = &[req("x", Tensor), opt("perm", Perm)];
        const FILL: &[BParam] = &[req("shape", Shape)];
        const FULL: &[BParam] = &[req("shape", Shape), req("value", Number)];
        const CONV: &[BParam] = &[
            req("x", Tensor),
            req("w", Tensor),
            opt("stride", Int),
            opt("padding", Int),
        ];
        const POOL: &[BParam] = &[req("x", Tensor), req("size", Int), opt("stride", Int)];
        const SLICE: &[BParam] = &[
            req("x", Tensor),
            req("axis", Int),
            opt("start", Int),
            opt("end", Int),
        ];
        const CONCAT: &[BParam] = &[req("a", Tensor), req("b", Tensor), opt("axis", Int)];
        const GATHER: &[BParam] = &[req("table", Tensor), req("indices", Tensor)];
        const SCATTER: &[BParam] = &[req("values", Tensor), req("indices", Tensor), req("n", Dim)];
        const SCAN: &[BParam] = &[
            req("f", Tensor),
            req("init", Tensor),
            req("xs", Tensor),
            opt("reverse", Bool),
        ];
        const RANDOM: &[BParam] = &[req("shape", Shape)];
        const ASSIGN: &[BParam] = &[req("state", Tensor), req("value", Tensor)];
        match self {
            Builtin::RandomNormal | Builtin::RandomUniform => RANDOM,
            Builtin::Training => &[],
            Builtin::Assign => ASSIGN,
            Builtin::Exp
            | Builtin::Log
            | Builtin::Sqrt
            | Builtin::Abs
            | Builtin::Tanh
            | Builtin::Sigmoid => UNARY,
            Builtin::Maximum | Builtin::Minimum => BINARY,
            Builtin::Sum | Builtin::Mean | Builtin::Max => REDUCE,
            Builtin::Select => SELECT,
            Builtin::Reshape => RESHAPE,
            Builtin::Transpose => TRANSPOSE,
            Builtin::Zeros | Builtin::Ones => FILL,
            Builtin::Full => FULL,
            Builtin::Conv2d => CONV,
            Builtin::MaxPool2d | Builtin::AvgPool2d => POOL,
            Builtin::Slice => SLICE,
            Builtin::Concat => CONCAT,
            Builtin::Gather => GATHER,
            Builtin::ScatterAdd => SCATTER,
            // Any number of extra arguments follow (checked when lowered).
            Builtin::Scan => SCAN,
        }
    }

    /// The parameters as formals, for matching call arguments.
    pub fn formals(self) -> Vec<super::resolve::Formal<'static>> {
        self.params()
            .iter()
            .map(|p| super::resolve::Formal {
                name: p.name,
                required: p.required,
            })
            .collect()
    }

    /// The signature as a user reads it in a note.
    pub fn signature(self) -> String {
        let ps: Vec<String> = self
            .params()
            .iter()
            .map(|p| {
                if p.required {
                    p.name.to_string()
                } else {
                    format!("{} = …", p.name)
                }
            })
            .collect();
        format!("{}({})", self.name(), ps.join(", "))
    }
}
