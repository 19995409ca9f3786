//! Reading machine code as people paste it from crash reports.
//!
//! Accepted, in any mix of lines and arguments:
//!
//! - hex bytes, spaced or not: `0f 1f 44 00 00 c3`, `0f1f440000c3`, `0x0f, 0x1f`;
//! - an x86-64 oops `Code:` line, whose faulting byte is marked `<48>`;
//! - an arm64 oops `Code:` line, made of 32-bit instruction words written as 8 hex digits,
//!   whose faulting word is marked `(d4210000)`.
//!
//! Line prefixes are dropped: e-mail quote markers (`> >`), `[ 0.431045]` timestamps and
//! other bracketed groups at the start of a line, and everything up to and including `Code:`.
//! When the input has a `Code:` line, only that line is read, plus the lines that follow it
//! as long as they start with hex code (a `Code:` line wrapped by a mail client); the first
//! blank line or line of prose ends it, so a whole pasted oops works too. Without a `Code:`
//! line, every line is code.
//!
//! The architecture follows from the token sizes unless given: all tokens 8 hex digits wide
//! means arm64 words, no token 8 digits wide means x86-64 bytes, and a mix is refused as
//! ambiguous.

use thiserror::Error;

use super::Arch;

/// Machine code read from the input, ready to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code {
    /// The architecture, given or detected.
    pub arch: Arch,
    /// The bytes in memory order (arm64 words are stored little-endian).
    pub bytes: Vec<u8>,
    /// Offset in `bytes` of the marked (faulting) byte on x86-64 or word on arm64.
    pub mark: Option<usize>,
}

/// Why the input is not machine code. Each message names the offending token.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InputError {
    /// AT&T syntax was asked for code that is not x86-64.
    #[error("--att applies to x86-64 only; this code is arm64, which has one syntax")]
    AttNotForArm64,
    /// Nothing to decode.
    #[error(
        "no machine code given: pass hex bytes or a kernel oops Code: line as arguments or on standard input"
    )]
    Empty,
    /// A token has a character that is not a hex digit.
    #[error("`{token}` is not hex: unexpected character {bad:?}")]
    NotHex {
        /// The token as written.
        token: String,
        /// The first character that is not a hex digit.
        bad: char,
    },
    /// A token has no hex digits at all, such as `<>` or `0x`.
    #[error("`{token}` has no hex digits")]
    NoDigits {
        /// The token as written.
        token: String,
    },
    /// A token has an odd number of hex digits, so it is not a whole number of bytes.
    #[error("`{token}` has an odd number of hex digits ({digits}); bytes take two digits each")]
    OddDigits {
        /// The token as written.
        token: String,
        /// How many hex digits it has.
        digits: usize,
    },
    /// A `<` or `(` that is not closed at the end of its token, or the reverse.
    #[error(
        "`{token}`: unbalanced mark; write the faulting byte as `<48>` or word as `(d4210000)`"
    )]
    UnbalancedMark {
        /// The token as written.
        token: String,
    },
    /// More than one token is marked.
    #[error("two marked (faulting) instructions, `{first}` and `{second}`; a Code: line marks one")]
    TwoMarks {
        /// The first marked token.
        first: String,
        /// The second marked token.
        second: String,
    },
    /// Both 32-bit words and bytes (or byte runs) appear.
    #[error(
        "mixed sizes: `{word}` is a 32-bit word (arm64) but `{other}` is not; use --arch x86-64 or --arch aarch64 to say which"
    )]
    MixedSizes {
        /// A token of 8 hex digits.
        word: String,
        /// A token of another width.
        other: String,
    },
    /// A mark of the other architecture's style.
    #[error("`{token}`: on {arch} the faulting {unit} is marked {expected}")]
    MarkStyle {
        /// The token as written.
        token: String,
        /// The architecture of the input.
        arch: Arch,
        /// `byte` or `word`.
        unit: &'static str,
        /// How a mark looks there.
        expected: &'static str,
    },
    /// A mark around more or less than one byte (x86-64) or one word (arm64).
    #[error("`{token}`: a mark wraps exactly one {unit} on {arch}")]
    MarkWidth {
        /// The token as written.
        token: String,
        /// The architecture of the input.
        arch: Arch,
        /// `byte` or `32-bit word`.
        unit: &'static str,
    },
    /// arm64 input that is neither all words nor a whole number of words of bytes.
    #[error(
        "`{token}`: aarch64 code is given as 32-bit words of 8 hex digits, or as bytes in memory order, 4 per instruction"
    )]
    NotWords {
        /// The token as written.
        token: String,
    },
    /// arm64 bytes that do not make whole instructions.
    #[error("{len} bytes are not a whole number of 4-byte aarch64 instructions")]
    PartialWord {
        /// How many bytes were given.
        len: usize,
    },
    /// The input has several `Code:` lines.
    #[error("the input has {count} Code: lines; pass one at a time")]
    SeveralCodeLines {
        /// How many.
        count: usize,
    },
}

/// How a token is marked as the faulting one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// `<48>`: x86-64.
    Angle,
    /// `(d4210000)`: arm64.
    Paren,
}

/// One whitespace- or comma-separated token of hex digits.
#[derive(Debug)]
struct Token<'a> {
    /// As written, for error messages.
    text: &'a str,
    /// The hex digits, without mark or `0x`.
    digits: &'a str,
    mark: Option<Mark>,
}

/// Reads machine code from `input` (see the module docs for the accepted forms), for `arch`
/// if given, else for the architecture its token sizes imply.
pub fn parse(input: &str, arch: Option<Arch>) -> Result<Code, InputError> {
    let lines = code_lines(input)?;
    let mut tokens = Vec::new();
    for line in &lines {
        for word in line.split(|c: char| c.is_whitespace() || c == ',') {
            if !word.is_empty() {
                tokens.push(token(word)?);
            }
        }
    }
    if tokens.is_empty() {
        return Err(InputError::Empty);
    }
    let marked: Vec<&Token> = tokens.iter().filter(|t| t.mark.is_some()).collect();
    if let [first, second, ..] = marked[..] {
        return Err(InputError::TwoMarks {
            first: first.text.to_owned(),
            second: second.text.to_owned(),
        });
    }
    let arch = match arch {
        Some(a) => a,
        None => detect(&tokens)?,
    };
    match arch {
        Arch::X86_64 => x86_bytes(&tokens),
        Arch::Aarch64 => arm64_bytes(&tokens),
    }
}

/// The lines of `input` that hold code, with their prefixes removed.
fn code_lines(input: &str) -> Result<Vec<&str>, InputError> {
    const CODE: &str = "Code:";
    let count = input.lines().filter(|l| l.contains(CODE)).count();
    if count > 1 {
        return Err(InputError::SeveralCodeLines { count });
    }
    if count == 0 {
        return Ok(input.lines().map(strip_prefix).collect());
    }
    let mut lines = input.lines().skip_while(|l| !l.contains(CODE));
    let mut out = Vec::new();
    if let Some(first) = lines.next() {
        let at = first.find(CODE).map_or(0, |i| i + CODE.len());
        out.push(&first[at..]);
    }
    for line in lines.map(strip_prefix) {
        let first = line.split_whitespace().next();
        match first {
            Some(word) if token(word.trim_end_matches(',')).is_ok() => out.push(line),
            _ => break,
        }
    }
    Ok(out)
}

/// `line` without quote markers and leading bracketed groups such as timestamps.
fn strip_prefix(mut line: &str) -> &str {
    loop {
        line = line.trim_start();
        if let Some(rest) = line.strip_prefix('>') {
            line = rest;
        } else if let Some(end) = line.strip_prefix('[').and_then(|r| r.find(']')) {
            line = &line[end + 2..];
        } else {
            return line;
        }
    }
}

/// Splits a token into its mark and its hex digits, checking the digits.
fn token(text: &str) -> Result<Token<'_>, InputError> {
    let (inner, mark) = if let Some(rest) = text.strip_prefix('<') {
        (rest.strip_suffix('>'), Some(Mark::Angle))
    } else if let Some(rest) = text.strip_prefix('(') {
        (rest.strip_suffix(')'), Some(Mark::Paren))
    } else if text.ends_with('>') || text.ends_with(')') {
        (None, None)
    } else {
        (Some(text), None)
    };
    let unbalanced = || InputError::UnbalancedMark {
        token: text.to_owned(),
    };
    let inner = inner.ok_or_else(unbalanced)?;
    let digits = inner
        .strip_prefix("0x")
        .or_else(|| inner.strip_prefix("0X"))
        .unwrap_or(inner);
    if let Some(bad) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        if matches!(bad, '<' | '>' | '(' | ')') {
            return Err(unbalanced());
        }
        return Err(InputError::NotHex {
            token: text.to_owned(),
            bad,
        });
    }
    if digits.is_empty() {
        return Err(InputError::NoDigits {
            token: text.to_owned(),
        });
    }
    if !digits.len().is_multiple_of(2) {
        return Err(InputError::OddDigits {
            token: text.to_owned(),
            digits: digits.len(),
        });
    }
    Ok(Token { text, digits, mark })
}

/// The architecture implied by the token sizes: arm64 if every token is a 32-bit word,
/// x86-64 if none is.
fn detect(tokens: &[Token]) -> Result<Arch, InputError> {
    let word = tokens.iter().find(|t| t.digits.len() == 8);
    let other = tokens.iter().find(|t| t.digits.len() != 8);
    match (word, other) {
        (Some(_), None) => Ok(Arch::Aarch64),
        (None, _) => Ok(Arch::X86_64),
        (Some(w), Some(o)) => Err(InputError::MixedSizes {
            word: w.text.to_owned(),
            other: o.text.to_owned(),
        }),
    }
}

/// x86-64: every token is a run of bytes in the order written; the mark wraps one byte.
fn x86_bytes(tokens: &[Token]) -> Result<Code, InputError> {
    let mut code = Code {
        arch: Arch::X86_64,
        bytes: Vec::new(),
        mark: None,
    };
    for t in tokens {
        match t.mark {
            Some(Mark::Paren) => {
                return Err(InputError::MarkStyle {
                    token: t.text.to_owned(),
                    arch: Arch::X86_64,
                    unit: "byte",
                    expected: "<48>",
                });
            }
            Some(Mark::Angle) if t.digits.len() != 2 => {
                return Err(InputError::MarkWidth {
                    token: t.text.to_owned(),
                    arch: Arch::X86_64,
                    unit: "byte",
                });
            }
            Some(Mark::Angle) => code.mark = Some(code.bytes.len()),
            None => {}
        }
        code.bytes.extend(hex_bytes(t.digits));
    }
    Ok(code)
}

/// arm64: either all tokens are 32-bit words (as an oops writes them, most significant digit
/// first), one of them possibly marked `(…)`, or all are single bytes in memory order.
fn arm64_bytes(tokens: &[Token]) -> Result<Code, InputError> {
    let mut code = Code {
        arch: Arch::Aarch64,
        bytes: Vec::new(),
        mark: None,
    };
    let words = tokens[0].digits.len() == 8;
    for t in tokens {
        let width = if words { 8 } else { 2 };
        if t.digits.len() != width {
            return Err(InputError::NotWords {
                token: t.text.to_owned(),
            });
        }
        match t.mark {
            Some(Mark::Angle) => {
                return Err(InputError::MarkStyle {
                    token: t.text.to_owned(),
                    arch: Arch::Aarch64,
                    unit: "word",
                    expected: "(d4210000)",
                });
            }
            Some(Mark::Paren) if !words => {
                return Err(InputError::MarkWidth {
                    token: t.text.to_owned(),
                    arch: Arch::Aarch64,
                    unit: "32-bit word",
                });
            }
            Some(Mark::Paren) => code.mark = Some(code.bytes.len()),
            None => {}
        }
        if words {
            let mut word = hex_bytes(t.digits);
            word.reverse();
            code.bytes.extend(word);
        } else {
            code.bytes.extend(hex_bytes(t.digits));
        }
    }
    if !code.bytes.len().is_multiple_of(4) {
        return Err(InputError::PartialWord {
            len: code.bytes.len(),
        });
    }
    Ok(code)
}

/// The bytes of an even-length string of hex digits (checked by [`token`]).
fn hex_bytes(digits: &str) -> Vec<u8> {
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| (nibble(pair[0]) << 4) | nibble(pair.get(1).copied().unwrap_or(b'0')))
        .collect()
}

/// The value of one hex digit (0 for anything else, which [`token`] has ruled out).
fn nibble(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(bytes: &[u8], mark: Option<usize>) -> Code {
        Code {
            arch: Arch::X86_64,
            bytes: bytes.to_vec(),
            mark,
        }
    }

    #[test]
    fn spaced_and_unspaced_bytes() {
        let want = x86(&[0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3], None);
        assert_eq!(parse("0f 1f 44 00 00 c3", None), Ok(want.clone()));
        assert_eq!(parse("0f1f440000c3", None), Ok(want.clone()));
        assert_eq!(parse("0F1F44 0000C3\n", None), Ok(want.clone()));
        assert_eq!(parse("0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3", None), Ok(want));
    }

    #[test]
    fn x86_code_line_with_timestamp_and_mark() {
        let code = parse("[12844.066900] Code: 48 89 c2 <48> 8b 00 48", None).unwrap();
        assert_eq!(
            code,
            x86(&[0x48, 0x89, 0xc2, 0x48, 0x8b, 0x00, 0x48], Some(3))
        );
    }

    #[test]
    fn wrapped_code_line_ends_at_prose() {
        let text = "the instruction pattern:\n\n\
            Code: f6 43 04 10 75 06 f0 ff 03 48 89 d8 fe 43 08 eb 31 fe 43 08 48 8b \n\
            45 d0 48 8b 00 48 89 45 d0 48 8b 45 d0 48 85 c0 74 18 48 89 c2 <48> 8b \n\
            00 48 8d 5a e8 44 39 73 30 0f 18 08 75 d9 e9 6a ff ff ff\n\
            \x20                          ========\n\
            \n\
            shows that you've got \"prefetchnta (%esi)\" indirect:\n";
        let code = parse(text, None).unwrap();
        assert_eq!(code.arch, Arch::X86_64);
        assert_eq!(code.bytes.len(), 64);
        assert_eq!(code.mark, Some(0x2b));
        assert_eq!(&code.bytes[0x2b..0x2e], &[0x48, 0x8b, 0x00]);
        assert_eq!(&code.bytes[59..], &[0xe9, 0x6a, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn arm64_code_line_in_a_quoted_mail() {
        let text = "> > [ 0.431045] Code: 39402e61 39402a62 6b01005f 54fff500 (d4210000)\n\
                    > > [ 0.431161] ---[ end trace 0000000000000000 ]---\n";
        let code = parse(text, None).unwrap();
        assert_eq!(code.arch, Arch::Aarch64);
        assert_eq!(code.mark, Some(16));
        assert_eq!(&code.bytes[..4], &[0x61, 0x2e, 0x40, 0x39]);
        assert_eq!(&code.bytes[16..], &[0x00, 0x00, 0x21, 0xd4]);
    }

    #[test]
    fn forced_architecture() {
        // Four x86 bytes written as one token would look like an arm64 word.
        assert_eq!(parse("0f1f4000", None).unwrap().arch, Arch::Aarch64);
        let code = parse("0f1f4000", Some(Arch::X86_64)).unwrap();
        assert_eq!(code.bytes, [0x0f, 0x1f, 0x40, 0x00]);
        // arm64 bytes in memory order.
        let code = parse("1f 20 03 d5", Some(Arch::Aarch64)).unwrap();
        assert_eq!(code.bytes, [0x1f, 0x20, 0x03, 0xd5]);
        assert_eq!(
            parse("1f 20 03", Some(Arch::Aarch64)),
            Err(InputError::PartialWord { len: 3 })
        );
        assert!(matches!(
            parse("d503201f 90", Some(Arch::Aarch64)),
            Err(InputError::NotWords { .. })
        ));
    }

    #[test]
    fn bad_input() {
        assert_eq!(parse("", None), Err(InputError::Empty));
        assert_eq!(parse(" \n [ 1.0] Code: \n", None), Err(InputError::Empty));
        assert_eq!(
            parse("0f 1", None),
            Err(InputError::OddDigits {
                token: "1".into(),
                digits: 1
            })
        );
        assert_eq!(
            parse("0f1f4", None),
            Err(InputError::OddDigits {
                token: "0f1f4".into(),
                digits: 5
            })
        );
        assert_eq!(
            parse("0f 1g", None),
            Err(InputError::NotHex {
                token: "1g".into(),
                bad: 'g'
            })
        );
        assert!(matches!(
            parse("Code: Unable to access opcode bytes at 0x36.", None),
            Err(InputError::NotHex { .. })
        ));
        assert_eq!(
            parse("<48> 8b <00>", None),
            Err(InputError::TwoMarks {
                first: "<48>".into(),
                second: "<00>".into()
            })
        );
        assert!(matches!(
            parse("39402e61 48 8b", None),
            Err(InputError::MixedSizes { .. })
        ));
        assert!(matches!(
            parse("48 (8b) 00", None),
            Err(InputError::MarkStyle { .. })
        ));
        assert!(matches!(
            parse("39402e61 <d4210000>", None),
            Err(InputError::MarkStyle { .. })
        ));
        assert!(matches!(
            parse("48 <8b00>", None),
            Err(InputError::MarkWidth { .. })
        ));
        assert!(matches!(
            parse("48 <8b 00", None),
            Err(InputError::UnbalancedMark { .. })
        ));
        assert!(matches!(
            parse("48 8b> 00", None),
            Err(InputError::UnbalancedMark { .. })
        ));
        assert!(matches!(
            parse("<>", None),
            Err(InputError::NoDigits { .. })
        ));
        assert!(matches!(
            parse("0x", None),
            Err(InputError::NoDigits { .. })
        ));
        assert!(matches!(
            parse("Code: 90\nCode: 90", None),
            Err(InputError::SeveralCodeLines { count: 2 })
        ));
        for text in ["<", ">", "(", ")", "0x", "[", "[]", "]", "\u{feff}", "é"] {
            assert!(parse(text, None).is_err(), "{text:?}");
        }
    }
}
