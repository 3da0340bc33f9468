//! The REPL's front end: rustyline on a terminal (history kept across
//! sessions, tab completion, continuation lines after a `...` prompt
//! while brackets are open, Ctrl-C cancels the input, Ctrl-D leaves), or
//! plain lines from a pipe. Both continue an input while it is
//! [`incomplete`].

use super::Session;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};
use std::cell::RefCell;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::rc::Rc;

const PROMPT: &str = "nnc> ";
/// The prompt of an input's further lines, as wide as [`PROMPT`].
const CONTINUATION: &str = "...  ";

/// How many brackets (`(`, `[`, `{`) are open at the end of `text`,
/// ignoring comments and strings. Negative when more close than open.
pub fn balance(text: &str) -> i64 {
    let mut depth = 0i64;
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// Whether `text` is an input still being typed, so the next line
/// continues it: brackets are open and the text has no syntax error
/// before its end. An error inside the text is reported at once: no
/// further line could fix it. (A command's expression, after `:grad`
/// and the like, continues while its brackets are open.)
pub fn incomplete(text: &str) -> bool {
    if balance(text) <= 0 {
        return false;
    }
    let text = text.trim();
    if text.starts_with(':') {
        return true;
    }
    let expr = !super::session::starts_definition(text);
    crate::syntax::syntax_error_at(text, expr).is_some_and(|at| at >= text.len())
}

struct NnHelper {
    names: Rc<RefCell<Vec<String>>>,
}

impl Completer for NnHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == ':'))
            .map_or(0, |i| i + 1);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let found = self
            .names
            .borrow()
            .iter()
            .filter(|n| n.starts_with(word))
            .map(|n| Pair {
                display: n.clone(),
                replacement: n.clone(),
            })
            .collect();
        Ok((start, found))
    }
}

impl Hinter for NnHelper {
    type Hint = String;
}

impl Highlighter for NnHelper {}

// Each line is accepted as typed; the loop decides whether the input
// goes on (with its own prompt, which rustyline's multi-line editing
// cannot show).
impl Validator for NnHelper {}

impl Helper for NnHelper {}

/// Where the history lives: `$XDG_DATA_HOME/nnc/history`, else
/// `~/.local/share/nnc/history`.
fn history_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/share"),
    };
    Some(base.join("nnc").join("history"))
}

/// Runs the REPL until `:quit` or end of input; returns the exit code.
pub fn run(color: bool) -> i32 {
    let mut session = Session::new();
    if std::io::stdin().is_terminal() {
        session.set_color(color);
        interactive(session)
    } else {
        piped(session)
    }
}

fn print(reply: &super::Reply) {
    print!("{}", reply.out);
    eprint!("{}", reply.err);
    let _ = std::io::stdout().flush();
}

/// Lines from a pipe: an input ends where its brackets close.
fn piped(mut session: Session) -> i32 {
    let stdin = std::io::stdin();
    let mut pending = String::new();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        pending.push_str(&line);
        pending.push('\n');
        if incomplete(&pending) {
            continue;
        }
        let reply = session.eval(&pending);
        pending.clear();
        print(&reply);
        if reply.quit {
            return 0;
        }
    }
    if !pending.trim().is_empty() {
        print(&session.eval(&pending));
    }
    0
}

fn interactive(mut session: Session) -> i32 {
    // Between prompts the terminal is not in raw mode, so Ctrl-C arrives
    // as SIGINT: ignore it there rather than end the session. (While a
    // line is edited, rustyline reads Ctrl-C as a key and cancels the
    // input.)
    let _ = ctrlc::set_handler(|| {});
    let names = Rc::new(RefCell::new(session.names()));
    let mut editor: Editor<NnHelper, rustyline::history::DefaultHistory> = match Editor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the line editor: {e}");
            return 1;
        }
    };
    editor.set_helper(Some(NnHelper {
        names: names.clone(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "nnc {} — :help for help, Ctrl-D to leave",
        env!("CARGO_PKG_VERSION")
    );
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            PROMPT
        } else {
            CONTINUATION
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                pending.push_str(&line);
                pending.push('\n');
                if incomplete(&pending) {
                    continue;
                }
                let reply = session.eval(&std::mem::take(&mut pending));
                print(&reply);
                *names.borrow_mut() = session.names();
                if reply.quit {
                    break;
                }
            }
            // Ctrl-C: drop the input, keep the session.
            Err(ReadlineError::Interrupted) => pending.clear(),
            // Ctrl-D: leave, saying why an unfinished input was not one.
            Err(ReadlineError::Eof) => {
                if !pending.trim().is_empty() {
                    print(&session.eval(&pending));
                }
                break;
            }
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        }
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(h);
    }
    0
}
