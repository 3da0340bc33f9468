//! The abstract syntax tree. Every node keeps the span it was read from, so
//! every later error can point at the user's text.

use crate::diag::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, Default)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug)]
pub enum Item {
    Fn(FnDef),
    Model(ModelDef),
    Param(ParamDecl),
    Input(InputDecl),
    Let(LetDecl),
    Output(LetDecl),
    Train(TrainDef),
}

/// `train Model { name = value ... }`: the training description.
#[derive(Clone, Debug)]
pub struct TrainDef {
    pub model: Option<Ident>,
    pub settings: Vec<Setting>,
    /// `phase NAME { settings }`, in order; empty for a single loss.
    pub phases: Vec<Phase>,
    pub span: Span,
}

/// `phase NAME { loss = ...; params = Model; optimizer = ... }`: one of
/// several losses a `train` block minimises in turn, each batch.
#[derive(Clone, Debug)]
pub struct Phase {
    pub name: Ident,
    pub settings: Vec<Setting>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Setting {
    pub name: Ident,
    pub value: Expr,
}

impl Item {
    /// The name the item defines (a `train` block defines none).
    pub fn name(&self) -> Option<&Ident> {
        Some(match self {
            Item::Train(_) => return None,
            Item::Fn(f) => &f.name,
            Item::Model(m) => &m.name,
            Item::Param(p) => &p.name,
            Item::Input(i) => &i.name,
            Item::Let(l) | Item::Output(l) => &l.name,
        })
    }
}

/// `fn name(params) -> ret { lets; result }`.
#[derive(Clone, Debug)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub ret: Option<TypeExpr>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct FnParam {
    pub name: Ident,
    pub ty: ParamType,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug)]
pub enum ParamType {
    Tensor(TypeExpr),
    /// A function argument (`f: fn`); it is checked where it is called.
    Fn(Span),
}

/// A tensor type: `f32[B, 784]`, `[3]`, `[]`, `[..S, N]`.
#[derive(Clone, Debug)]
pub struct TypeExpr {
    pub dims: Vec<DimExpr>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum DimExpr {
    Const(u64, Span),
    Sym(Ident),
    /// `..S`: any number of dimensions, bound as a whole.
    Variadic(Ident),
}

#[derive(Clone, Debug)]
pub struct Block {
    pub lets: Vec<LetDecl>,
    pub result: Expr,
}

/// `model Name { ... }`: a namespace for parameters, inputs and functions.
#[derive(Clone, Debug)]
pub struct ModelDef {
    pub name: Ident,
    pub items: Vec<Item>,
    pub span: Span,
}

/// `param w: [3, 4] = xavier_uniform(seed = 1)`, or `state m: [4] =
/// zeros()`: a tensor kept across training steps but not trained.
#[derive(Clone, Debug)]
pub struct ParamDecl {
    pub name: Ident,
    /// Declared with `state`: not trained, changed only by `assign`.
    pub state: bool,
    pub ty: TypeExpr,
    pub init: Expr,
    pub span: Span,
}

/// `input x: [B, 3] = [[...]]` (the value is optional).
#[derive(Clone, Debug)]
pub struct InputDecl {
    pub name: Ident,
    pub ty: TypeExpr,
    pub value: Option<Expr>,
    pub span: Span,
}

/// `let name: ty = value` and `output name: ty = value`.
#[derive(Clone, Debug)]
pub struct LetDecl {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    MatMul,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "^",
            BinOp::MatMul => "@",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
        }
    }
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    /// A numeric literal, and its exact value when it is written as
    /// plain digits (`784`, not `784.0` or `1e3`): what dimensions and
    /// counts accept.
    Number(f32, Option<u64>),
    Bool(bool),
    /// A string literal, without its quotes (file names in `data`).
    Str(String),
    Name(Ident),
    Tensor(Vec<Expr>),
    Neg(Box<Expr>),
    /// An operator, the operator's own span, and the operands.
    Binary(BinOp, Span, Box<Expr>, Box<Expr>),
    Call(Box<Expr>, Vec<Arg>),
    Member(Box<Expr>, Ident),
    /// A piece of source that was already reported (an invalid literal).
    Error,
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}
