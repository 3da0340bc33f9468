//! The `nnc` command line.

use super::args::{Cli, Color, Command, Emit, Format};
use super::graphs::{
    backend_text, fed_graph, grad_values_on, run_fed, run_graph, run_graph_with, warn_non_finite,
    LibraryArgs,
};
use super::outcome::{finish, load, Outcome};
use crate::diag::{self, Diagnostics, SourceMap};
use crate::driver::output;
use crate::pipeline::{self, Stage};
use clap::Parser;
use std::io::IsTerminal;

/// Runs the command line; returns the process exit code (0 success, 1
/// diagnostics). Usage errors exit with 2 inside clap.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal(),
    };
    crate::exec::memory::set_limit(cli.max_memory);
    if cli.flush_subnormals || cli.keep_subnormals {
        crate::backend::jit::subnormal::set_flush(cli.flush_subnormals);
    }
    if let Some(n) = cli.device {
        crate::backend::opencl::choose_device(n);
    }
    if let Command::Repl = cli.command {
        return super::repl::run(color);
    }
    let (out, code) = match execute(&cli.command) {
        // A run stopped by Ctrl-C exits as an interrupted program does.
        Ok(out) if crate::train::interrupted() => (out, 130),
        Ok(out) => (out, 0),
        Err(out) => (out, 1),
    };
    // A reader that stops early (`nnc … | head`) closes the pipe: the
    // rest is not wanted, which is no error (as for other Unix tools).
    use std::io::Write;
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stdout().flush();
    eprint!("{}", out.render(color));
    code
}

/// Executes a command; `Err` means the exit code is 1.
pub fn execute(cmd: &Command) -> Result<Outcome, Outcome> {
    match cmd {
        Command::Check { file } => {
            let c = load(file, Stage::Ir)?;
            finish(c, String::new())
        }
        Command::Compile {
            file,
            emit: None,
            dims,
            output,
            name,
            params,
            target_cpu,
            target,
            keep_temps,
        } => {
            let mut c = load(file, Stage::Ir)?;
            let Some(g) = c.graph.take() else {
                return Err(Outcome::from(c, String::new()));
            };
            let opts = LibraryArgs {
                file,
                dims,
                output: output.as_deref(),
                name: name.as_deref(),
                params: params.as_deref(),
                target_cpu: target_cpu.as_deref(),
                target: target.as_deref(),
                keep_temps: *keep_temps,
            };
            match super::graphs::compile_library(&g, c.train.as_ref(), &opts) {
                Ok(text) => Ok(Outcome::from(c, text)),
                Err(d) => {
                    c.diags.push(d);
                    Err(Outcome::from(c, String::new()))
                }
            }
        }
        Command::Compile {
            file,
            emit: Some(emit),
            dims,
            ..
        } => {
            let stage = match emit {
                Emit::Ast => Stage::Ast,
                _ => Stage::Ir,
            };
            let mut c = load(file, stage)?;
            let text = match (emit, &c.ast, &c.graph) {
                (Emit::Ast, Some(a), _) => crate::syntax::print_ast(a),
                (Emit::Ir, _, Some(g)) => crate::ir::print_graph(g),
                (Emit::Grad, _, Some(g)) => {
                    let gg = pipeline::find_loss(g, c.train.as_ref())
                        .and_then(|l| pipeline::grad_graph(g, l));
                    match gg {
                        Ok(gg) => {
                            for w in gg.warnings {
                                c.diags.push(w);
                            }
                            crate::ir::print_graph(&gg.graph)
                        }
                        Err(d) => {
                            c.diags.push(d);
                            String::new()
                        }
                    }
                }
                (Emit::Fused | Emit::Clif | Emit::Opencl, _, Some(g)) => {
                    let one: Result<Vec<(String, usize)>, _> = dims
                        .iter()
                        .map(|(n, sizes)| match sizes[..] {
                            [size] => Ok((n.clone(), size)),
                            _ => Err(crate::diag::error(
                                crate::diag::code::UNBOUND_DIM,
                                format!("`--emit` prints one program: give `{n}` one size"),
                            )),
                        })
                        .collect();
                    match one.and_then(|d| backend_text(g, c.train.as_ref(), *emit, &d)) {
                        Ok(t) => t,
                        Err(d) => {
                            c.diags.push(d);
                            String::new()
                        }
                    }
                }
                (Emit::Dot | Emit::DotIr | Emit::DotGrad, _, Some(g)) => {
                    match super::dot::text(g, c.train.as_ref(), *emit, file) {
                        Ok((text, warnings)) => {
                            warnings.into_iter().for_each(|w| c.diags.push(w));
                            text
                        }
                        Err(d) => {
                            c.diags.push(d);
                            String::new()
                        }
                    }
                }
                _ => String::new(),
            };
            finish(c, text)
        }
        Command::Grad {
            file,
            format,
            params,
            seed,
            batch,
            backend,
        } => {
            let mut c = load(file, Stage::Ir)?;
            let Some(g) = c.graph.take() else {
                return Err(Outcome::from(c, String::new()));
            };
            if *batch == Some(0) {
                c.diags.push(
                    diag::error(diag::code::INPUT, "`--batch 0`: the loss needs a row")
                        .with_notes(vec!["help: give 1 or more".into()]),
                );
                return Err(Outcome::from(c, String::new()));
            }
            let base = file.parent().unwrap_or(std::path::Path::new(""));
            let rows = batch.map(|n| (n, base));
            match grad_values_on(
                &g,
                c.train.as_ref(),
                params.as_deref(),
                *seed,
                *backend,
                rows,
            ) {
                Ok((loss, grads, warnings)) => {
                    for w in warnings {
                        c.diags.push(w);
                    }
                    let text = match format {
                        Format::Json => output::grad_json(loss, &grads) + "\n",
                        Format::Text => {
                            let mut all =
                                vec![("loss".to_string(), crate::tensor::Tensor::scalar(loss))];
                            all.extend(grads.into_iter().map(|(n, t)| (format!("grad {n}"), t)));
                            output::text(&all)
                        }
                    };
                    Ok(Outcome::from(c, text))
                }
                Err(d) => {
                    c.diags.push(d);
                    Err(Outcome::from(c, String::new()))
                }
            }
        }
        // A run that reported an error (a picture it could not write)
        // fails, whatever it trained.
        Command::Train(args) => {
            super::train::command(args).and_then(|o| match o.diags.has_errors() {
                true => Err(o),
                false => Ok(o),
            })
        }
        Command::Plot(args) => super::plot::command(args),
        Command::Predict(args) => super::predict::command(args),
        Command::Export(args) => super::export::command(args),
        Command::Bench(args) => super::bench::command(args),
        Command::Summary(args) => super::summary::command(args),
        Command::Import(args) => super::import::command(args),
        Command::Repl => Ok(Outcome {
            stdout: String::new(),
            sources: SourceMap::new(),
            diags: Diagnostics::new(),
        }),
        Command::Devices => {
            let mut diags = Diagnostics::new();
            let stdout = match crate::backend::opencl::devices() {
                Ok(text) => text,
                Err(e) => {
                    diags.push(e.to_diag());
                    let out = Outcome {
                        stdout: String::new(),
                        sources: SourceMap::new(),
                        diags,
                    };
                    return Err(out);
                }
            };
            Ok(Outcome {
                stdout,
                sources: SourceMap::new(),
                diags,
            })
        }
        Command::Run {
            file,
            format,
            seed,
            params,
            inputs,
            backend,
        } => {
            let mut c = load(file, Stage::Ir)?;
            let Some(mut g) = c.graph.take() else {
                return Err(Outcome::from(c, String::new()));
            };
            let ran = match fed_graph(&mut g, c.train.as_ref(), inputs) {
                Err(d) => Err(d),
                Ok(fed) if fed.is_empty() => match params {
                    None => run_graph(&g, *seed, *backend).map_err(|e| e.to_diag()),
                    Some(p) => run_graph_with(&g, *seed, Some(p), *backend),
                },
                Ok(fed) => run_fed(&g, *seed, params.as_deref(), fed, *backend),
            };
            match ran {
                Ok(outputs) => {
                    if outputs.is_empty() {
                        c.diags.push(
                            diag::warning("this file declares no outputs, so nothing was printed")
                                .with_notes(vec![
                                    "help: name a result with `output z = ...`".into()
                                ]),
                        );
                    }
                    warn_non_finite(&g, &outputs, &mut c.diags);
                    let text = match format {
                        Format::Text => output::text(&outputs),
                        Format::Json => output::json(&outputs) + "\n",
                    };
                    Ok(Outcome::from(c, text))
                }
                Err(d) => {
                    c.diags.push(d);
                    Err(Outcome::from(c, String::new()))
                }
            }
        }
    }
}
