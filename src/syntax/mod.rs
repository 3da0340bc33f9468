//! The front end: the pest grammar (`grammar/nn.pest`), the AST it is read
//! into, and a printer for `--emit ast`.

pub mod ast;
mod parser;
mod print;

pub use parser::{parse, parse_expr, syntax_error_at};
pub use print::print_ast;

/// A type as written in source: `[B, 784]`.
pub fn ast_type_str(t: &ast::TypeExpr) -> String {
    print::type_str(t)
}
