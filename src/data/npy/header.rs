//! The header of a `.npy` file: a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`. This reads
//! the subset of Python literals NumPy writes (strings, booleans, `None`,
//! non-negative integers, tuples, lists and dicts), with a limit on nesting.

/// What the loader needs from the header.
#[derive(Debug, PartialEq)]
pub(super) struct Header {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

/// Reads the header's dict; the error says what is wrong.
pub(super) fn parse(bytes: &[u8]) -> Result<Header, String> {
    let mut p = Parser { s: bytes, pos: 0 };
    let Lit::Dict(items) = p.value(0)? else {
        return Err("it is not a dict".into());
    };
    if let Some(c) = p.peek() {
        return Err(format!("unexpected `{}` after the dict", char::from(c)));
    }
    let get = |key: &str| {
        items
            .iter()
            .find(|(k, _)| matches!(k, Lit::Str(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| format!("no `{key}` key"))
    };
    let descr = match get("descr")? {
        Lit::Str(s) => s.clone(),
        _ => return Err("structured dtypes are not supported".into()),
    };
    let fortran_order = match get("fortran_order")? {
        Lit::Bool(b) => *b,
        _ => return Err("`fortran_order` is not True or False".into()),
    };
    let shape = match get("shape")? {
        Lit::Seq(dims) => dims
            .iter()
            .map(|d| match d {
                Lit::Int(n) => Some(*n),
                _ => None,
            })
            .collect::<Option<Vec<usize>>>(),
        _ => None,
    }
    .ok_or("`shape` is not a tuple of integers")?;
    Ok(Header {
        descr,
        fortran_order,
        shape,
    })
}

/// Text from a file, for a message: lossy UTF-8 with control characters
/// (NUL bytes of a corrupt header, say) escaped, so nothing unprintable
/// reaches the terminal.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// Header text for an error message: printable, trimmed and shortened.
pub(super) fn show(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let text = printable(bytes.trim_ascii());
    let text = text.trim();
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        text.chars().take(MAX).collect::<String>() + "..."
    }
}

/// A Python literal.
#[derive(Debug, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    None,
    Int(usize),
    Seq(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

const MAX_DEPTH: usize = 16;

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    /// The next byte that is not whitespace, without consuming it.
    fn peek(&mut self) -> Option<u8> {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
        self.s.get(self.pos).copied()
    }

    /// Consumes `c` if it comes next.
    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", char::from(c), self.pos))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Lit, String> {
        if depth > MAX_DEPTH {
            return Err("values nested too deeply".into());
        }
        let Some(c) = self.peek() else {
            return Err("the header ends early".into());
        };
        match c {
            b'{' => {
                self.pos += 1;
                let mut items = Vec::new();
                while !self.eat(b'}') {
                    let key = self.value(depth + 1)?;
                    self.expect(b':')?;
                    items.push((key, self.value(depth + 1)?));
                    if !self.eat(b',') {
                        self.expect(b'}')?;
                        break;
                    }
                }
                Ok(Lit::Dict(items))
            }
            b'(' | b'[' => {
                let close = if c == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                while !self.eat(close) {
                    items.push(self.value(depth + 1)?);
                    if !self.eat(b',') {
                        self.expect(close)?;
                        break;
                    }
                }
                Ok(Lit::Seq(items))
            }
            b'\'' | b'"' => {
                self.pos += 1;
                let start = self.pos;
                while self.s.get(self.pos).is_some_and(|&b| b != c) {
                    self.pos += 1;
                }
                let text = self.s.get(start..self.pos).unwrap_or_default();
                if self.pos >= self.s.len() {
                    return Err("a string is not closed".into());
                }
                self.pos += 1;
                Ok(Lit::Str(printable(text)))
            }
            b'0'..=b'9' => {
                let mut n: usize = 0;
                while let Some(&d) = self.s.get(self.pos).filter(|b| b.is_ascii_digit()) {
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(usize::from(d - b'0')))
                        .ok_or("an integer is too large")?;
                    self.pos += 1;
                }
                // Python 2 wrote long integers as `3L`.
                if self.s.get(self.pos) == Some(&b'L') {
                    self.pos += 1;
                }
                Ok(Lit::Int(n))
            }
            _ if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.s.get(self.pos).is_some_and(u8::is_ascii_alphanumeric) {
                    self.pos += 1;
                }
                match self.s.get(start..self.pos).unwrap_or_default() {
                    b"True" => Ok(Lit::Bool(true)),
                    b"False" => Ok(Lit::Bool(false)),
                    b"None" => Ok(Lit::None),
                    word => Err(format!("unexpected `{}`", printable(word))),
                }
            }
            _ => Err(format!(
                "unexpected `{}` at byte {}",
                char::from(c).escape_default(),
                self.pos
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_numpy_writes() {
        let h = parse(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }    \n");
        let want = Header {
            descr: "<f4".into(),
            fortran_order: false,
            shape: vec![3, 4],
        };
        assert_eq!(h, Ok(want));
        let h = parse(b"{\"shape\": (), \"descr\": \"|u1\", \"fortran_order\": True}").unwrap();
        assert!(h.fortran_order);
        assert_eq!(h.shape, Vec::<usize>::new());
        let h = parse(b"{'descr': '<i8', 'fortran_order': False, 'shape': (2L, 1L)}").unwrap();
        assert_eq!(h.shape, vec![2, 1]);
    }

    #[test]
    fn bad_headers_say_why() {
        let bad = |text: &[u8]| parse(text).unwrap_err();
        assert_eq!(bad(b"{'descr': '<f4'"), "expected `}` at byte 15");
        assert_eq!(
            bad(b"{'descr': '<f4', 'shape': (1,)}"),
            "no `fortran_order` key"
        );
        assert_eq!(bad(b"{'descr': '<f4"), "a string is not closed");
        assert_eq!(bad(b"(1, 2)"), "it is not a dict");
        assert_eq!(bad(b"{} x"), "unexpected `x` after the dict");
        assert_eq!(bad(&[b'['; 10_000]), "values nested too deeply");
        assert_eq!(
            bad(b"{'a': 99999999999999999999999}"),
            "an integer is too large"
        );
        let s = b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}";
        assert_eq!(bad(s), "structured dtypes are not supported");
        assert_eq!(
            bad(b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}"),
            "unexpected `-` at byte 51"
        );
    }

    #[test]
    fn shown_headers_are_shortened() {
        assert_eq!(show(b"  {'a': 1}\n"), "{'a': 1}");
        assert_eq!(show(&[b'x'; 200]).len(), 123);
    }
}
