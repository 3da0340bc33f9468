//! Source files, spans and diagnostics.
//!
//! Every stage reports problems as [`Diag`]s (codespan-reporting
//! diagnostics keyed by [`FileId`]) into a [`Diagnostics`] collector, so one
//! run reports as many independent errors as it can find. Rendering happens
//! in one place, [`Diagnostics::render`], with or without colour.
//!
//! Messages are lower-case and say "expected X, found Y"; the primary label
//! names the problem, secondary labels say where the other side came from,
//! and a note or `help:` line says what to do about it.

use codespan_reporting::diagnostic::{Diagnostic, Label, Severity};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, termcolor};
use std::collections::HashSet;

/// Index of a file in a [`SourceMap`].
pub type FileId = usize;

/// A diagnostic as produced by any stage.
pub type Diag = Diagnostic<FileId>;

/// A byte range in one source file. Every AST and IR node carries one.
#[derive(
    serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span {
            file,
            start: start as u32,
            end: end as u32,
        }
    }

    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The smallest span covering both (they must be in the same file).
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    pub fn primary(self, message: impl Into<String>) -> Label<FileId> {
        Label::primary(self.file, self.range()).with_message(message)
    }

    pub fn secondary(self, message: impl Into<String>) -> Label<FileId> {
        Label::secondary(self.file, self.range()).with_message(message)
    }
}

/// Stable error codes, one per class of problem. The codes appear in the
/// rendered message (`error[E0203]`), in the tests and in the docs.
pub mod code {
    pub const SYNTAX: &str = "E0001";
    pub const NUMBER: &str = "E0002";
    pub const UNKNOWN_NAME: &str = "E0101";
    pub const DUPLICATE: &str = "E0102";
    pub const RECURSION: &str = "E0103";
    pub const ARITY: &str = "E0104";
    pub const NAMED_ARG: &str = "E0105";
    pub const NOT_CALLABLE: &str = "E0106";
    pub const KIND: &str = "E0107";
    pub const CYCLE: &str = "E0108";
    pub const ARG_SHAPE: &str = "E0201";
    pub const RANK: &str = "E0202";
    pub const BROADCAST: &str = "E0203";
    pub const MATMUL: &str = "E0204";
    pub const UNBOUND_DIM: &str = "E0205";
    pub const AXIS: &str = "E0206";
    pub const RESULT_TYPE: &str = "E0207";
    pub const LITERAL: &str = "E0208";
    pub const RESHAPE: &str = "E0209";
    pub const CONST_ARG: &str = "E0210";
    pub const INIT: &str = "E0211";
    pub const INPUT: &str = "E0212";
    /// A convolution or pooling window that does not fit its input.
    pub const WINDOW: &str = "E0213";
    /// Slice bounds out of range, or a concatenation of mismatched shapes.
    pub const SLICE: &str = "E0214";
    /// `assign` to something that is not a `state`, or to one twice.
    pub const STATE: &str = "E0215";
    /// A training phase's parameters or settings that do not fit.
    pub const PHASE: &str = "E0216";
    /// A tensor with more elements than nnc supports (2^48).
    pub const SIZE: &str = "E0217";
    pub const FILE: &str = "E0301";
    /// An index tensor holding a value that names no row (at run time).
    pub const INDEX: &str = "E0302";
    /// A run that needs more memory than its budget (`--max-memory`).
    pub const MEMORY: &str = "E0303";
    /// A device that cannot run the program: no OpenCL platform or
    /// device, too little device memory, a backend not built in.
    pub const DEVICE: &str = "E0304";
    /// A library `nnc compile` cannot build: no C compiler, no runtime
    /// archive, a failed link, an unknown target CPU.
    pub const LIBRARY: &str = "E0305";
    /// A graph `nnc export` cannot write as ONNX: an op without an ONNX
    /// counterpart (a random draw), a dimension it cannot size.
    pub const EXPORT: &str = "E0306";
    /// A derivative the autodiff pass does not take.
    pub const GRAD: &str = "E0401";
    pub const INTERNAL: &str = "E9999";
}

/// The source texts a run has seen: the user's file, the embedded standard
/// library and, in the REPL, each line typed.
pub struct SourceMap {
    files: SimpleFiles<String, String>,
}

impl Default for SourceMap {
    fn default() -> SourceMap {
        SourceMap::new()
    }
}

impl SourceMap {
    pub fn new() -> SourceMap {
        SourceMap {
            files: SimpleFiles::new(),
        }
    }

    pub fn add(&mut self, name: impl Into<String>, source: impl Into<String>) -> FileId {
        self.files.add(name.into(), source.into())
    }

    pub fn source(&self, file: FileId) -> &str {
        // A FileId only comes from `add`, so the lookup cannot fail.
        self.files
            .get(file)
            .map(|f| f.source().as_str())
            .unwrap_or("")
    }

    pub fn files(&self) -> &SimpleFiles<String, String> {
        &self.files
    }
}

/// A collector of diagnostics. Reporting the same message at the same place
/// twice (a function body checked once per call site, say) keeps one copy.
/// A diagnostic's identity for de-duplication: its message and where its
/// first label points.
type DiagKey = (String, Option<(FileId, usize, usize)>);

#[derive(Default, Debug)]
pub struct Diagnostics {
    list: Vec<Diag>,
    seen: HashSet<DiagKey>,
}

impl Diagnostics {
    pub fn new() -> Diagnostics {
        Diagnostics::default()
    }

    pub fn push(&mut self, diag: Diag) {
        let at = diag
            .labels
            .first()
            .map(|l| (l.file_id, l.range.start, l.range.end));
        if self.seen.insert((diag.message.clone(), at)) {
            self.list.push(diag);
        }
    }

    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.list {
            self.push(d);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity >= Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.list
            .iter()
            .filter(|d| d.severity >= Severity::Error)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many diagnostics have been kept so far.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Changes every diagnostic kept after the first `start` (those
    /// reported since [`Diagnostics::len`] returned `start`): adds context
    /// to errors found in a function body, say.
    pub fn amend_since(&mut self, start: usize, f: impl Fn(&mut Diag)) {
        for d in self.list.iter_mut().skip(start) {
            f(d);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diag> {
        self.list.iter()
    }

    /// Renders every diagnostic, in the order reported, followed by a summary
    /// line when there were errors.
    pub fn render(&self, sources: &SourceMap, color: bool) -> String {
        let mut out = termcolor::Buffer::no_color();
        if color {
            out = termcolor::Buffer::ansi();
        }
        let config = term::Config::default();
        for d in &self.list {
            let shortened = shorten_long_lines(d, sources);
            let d = shortened.as_ref().unwrap_or(d);
            // Writing into a memory buffer only fails on a bad label range,
            // which would be a compiler bug; fall back to the bare message.
            if term::emit(&mut out, &config, sources.files(), d).is_err() {
                let msg = format!("error: {}\n", d.message);
                out = termcolor::Buffer::no_color();
                let _ = std::io::Write::write_all(&mut out, msg.as_bytes());
            }
        }
        let mut text = String::from_utf8_lossy(out.as_slice()).into_owned();
        let n = self.error_count();
        if n > 0 {
            let s = if n == 1 { "" } else { "s" };
            text.push_str(&format!("error: aborting due to {n} previous error{s}\n"));
        }
        text
    }
}

/// Source lines longer than this are not printed under a diagnostic: a
/// generated 1 MB line would otherwise be repeated once per label.
const MAX_SHOWN_LINE: usize = 400;

/// `d` with each label on an over-long line turned into a note that says
/// where it points, or `None` when every labelled line is short.
fn shorten_long_lines(d: &Diag, sources: &SourceMap) -> Option<Diag> {
    use codespan_reporting::files::Files;
    let files = sources.files();
    let long = |l: &Label<FileId>| {
        let line = files.line_index(l.file_id, l.range.start).ok();
        let range = line.and_then(|i| files.line_range(l.file_id, i).ok());
        range.is_some_and(|r| r.len() > MAX_SHOWN_LINE)
    };
    if !d.labels.iter().any(long) {
        return None;
    }
    let mut out = d.clone();
    let (keep, moved): (Vec<_>, Vec<_>) = d.labels.iter().cloned().partition(|l| !long(l));
    out.labels = keep;
    let mut notes: Vec<String> = moved
        .iter()
        .map(|l| {
            let at = files
                .location(l.file_id, l.range.start)
                .map(|loc| {
                    format!(
                        "{}:{}:{}",
                        files.name(l.file_id).unwrap_or_default(),
                        loc.line_number,
                        loc.column_number
                    )
                })
                .unwrap_or_default();
            match l.message.is_empty() {
                true => format!("note: at {at}"),
                false => format!("note: at {at}: {}", l.message),
            }
        })
        .collect();
    notes.push(format!(
        "note: the line is longer than {MAX_SHOWN_LINE} characters and is not shown"
    ));
    notes.extend(out.notes);
    out.notes = notes;
    Some(out)
}

/// An error diagnostic with a code and a message.
pub fn error(code: &str, message: impl Into<String>) -> Diag {
    Diagnostic::error().with_code(code).with_message(message)
}

/// A warning diagnostic with a message.
pub fn warning(message: impl Into<String>) -> Diag {
    Diagnostic::warning().with_message(message)
}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a likely
/// typo: the same name in another case, or at most a third of the name's
/// length in edits (two for names of four letters or more) that leave
/// some of both names in place. So a one-letter name is never answered
/// with another one-letter name (`y` is one edit from every one), nor a
/// short name with one of several equally close ones.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Swapped letters cost two edits, so names of four letters or more
    // allow two.
    let len = name.chars().count();
    let limit = if len >= 4 { (len / 3).max(2) } else { 1 };
    let mut close: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter(|c| *c != name)
        .filter_map(|c| {
            if c.to_lowercase() == name.to_lowercase() {
                return Some((0, c));
            }
            let d = edit_distance(name, c);
            (d <= limit && d < len && d < c.chars().count()).then_some((d, c))
        })
        .collect();
    close.sort_unstable();
    close.dedup();
    match close.as_slice() {
        [] => None,
        [(d, _), (next, _), ..] if *d > 0 && next == d && len <= 3 => None,
        [(_, c), ..] => Some(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("sigmiod", "sigmoid"), 2);
        assert_eq!(edit_distance("relu", "relu"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("softmx", "softmax"), 1);
    }

    #[test]
    fn suggest_picks_the_closest_plausible_name() {
        let names = ["sigmoid", "softmax", "swish", "sum"];
        assert_eq!(suggest("sigmoud", names), Some("sigmoid"));
        assert_eq!(suggest("softmx", names), Some("softmax"));
        assert_eq!(suggest("zzzzzz", names), None);
    }

    #[test]
    fn short_names_get_only_close_suggestions() {
        // One letter is one edit from every other letter: no guess.
        assert_eq!(suggest("y", ["b", "w", "x"]), None);
        assert_eq!(suggest("z", ["b", "w", "x"]), None);
        assert_eq!(suggest("y", ["by", "b"]), None);
        // Another case is always close.
        assert_eq!(suggest("X", ["b", "w", "x"]), Some("x"));
        assert_eq!(suggest("Relu", ["relu", "selu"]), Some("relu"));
        // A short name with one close candidate, but not among several.
        assert_eq!(suggest("sm", ["sum", "w"]), Some("sum"));
        assert_eq!(suggest("w3", ["w1", "w2"]), None);
        assert_eq!(suggest("w3", ["w1", "b1"]), Some("w1"));
        // A two-letter name is not answered with a one-letter one.
        assert_eq!(suggest("wx", ["w", "x"]), None);
    }
}
