//! `textpoke decode`: machine code from a crash report, one instruction per line, like the
//! kernel's `scripts/decodecode`.
//!
//! The input is hex bytes or a kernel oops `Code:` line ([`input`]). x86-64 code is decoded
//! with `iced-x86` from the marked (faulting) byte, the bytes before it realigned so that the
//! marked instruction decodes as the CPU saw it ([`x86`]). arm64 code, 32-bit words with the
//! faulting one in parentheses, is decoded with `yaxpeax-arm` ([`arm64`]). Each instruction
//! gets its offset, bytes, text, whether it is a NOP (for x86-64 by textpoke's one classifier,
//! [`textpoke::insn::is_nop`]) and whether it is the marked one.

pub mod arm64;
pub mod input;
pub mod x86;

use std::fmt;

use serde::Serialize;

pub use input::{Code, InputError, parse};

/// An instruction set `textpoke decode` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// Bytes; an oops marks the faulting one `<48>`.
    #[value(name = "x86-64", alias = "x86_64", alias = "amd64")]
    X86_64,
    /// AArch64 (arm64): 32-bit words; an oops marks the faulting one `(d4210000)`.
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86-64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// Assembly syntax for x86-64 (AArch64 has one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Syntax {
    /// Intel: `mov rax,[rax]`.
    #[default]
    Intel,
    /// AT&T, as GNU as and objdump write it: `mov (%rax),%rax`.
    Att,
}

/// One decoded instruction (or run of bytes that is none). Serialized as one object of the
/// `--json` array.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Insn {
    /// Offset of the first byte from the start of the code.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// x86-64: the bytes in hex, space-separated (`"0f 1f 44 00 00"`). AArch64: the
    /// instruction word as an oops or objdump writes it (`"d503201f"`).
    pub bytes: String,
    /// The instruction, or `(bad)` for bytes that do not decode (or that precede the first
    /// instruction boundary found before the mark), `(truncated)` for an instruction cut off
    /// by the end of the code, and on AArch64 `(unknown to the decoder)` for a word that
    /// `yaxpeax-arm` cannot decode but that may be valid (SVE).
    pub text: String,
    /// Whether the instruction is a NOP.
    pub is_nop: bool,
    /// Whether this is the marked (faulting) instruction.
    pub marked: bool,
}

/// Code decoded into instructions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The architecture decoded for.
    pub arch: Arch,
    /// The syntax of the instruction text.
    pub syntax: Syntax,
    /// Instructions covering every byte of the code, in order.
    pub insns: Vec<Insn>,
}

/// What `textpoke decode` was asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The architecture, or `None` to detect it from the input.
    pub arch: Option<Arch>,
    /// Instruction syntax for x86-64; ignored for AArch64.
    pub syntax: Syntax,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// Decodes parsed code.
pub fn decode(code: &Code, syntax: Syntax) -> Decoded {
    let insns = match code.arch {
        Arch::X86_64 => x86::decode(&code.bytes, code.mark, syntax),
        Arch::Aarch64 => arm64::decode(&code.bytes, code.mark),
    };
    Decoded {
        arch: code.arch,
        syntax,
        insns,
    }
}

/// The whole `textpoke decode` job: parses `input`, decodes it and renders the table or JSON
/// that the command prints.
pub fn run(input: &str, options: &Options) -> Result<String, InputError> {
    let code = parse(input, options.arch)?;
    if code.arch == Arch::Aarch64 && options.syntax == Syntax::Att {
        return Err(InputError::AttNotForArm64);
    }
    let decoded = decode(&code, options.syntax);
    Ok(if options.json {
        render_json(&decoded)
    } else {
        render_text(&decoded)
    })
}

/// The instructions as a JSON array of objects with the keys `offset`, `len`, `bytes`, `text`,
/// `is_nop` and `marked`, one object per line.
pub fn render_json(decoded: &Decoded) -> String {
    let mut out = String::from("[");
    for (n, insn) in decoded.insns.iter().enumerate() {
        out.push_str(if n == 0 { "\n  " } else { ",\n  " });
        // Serializing plain strings, numbers and booleans cannot fail.
        out.push_str(&serde_json::to_string(insn).unwrap_or_default());
    }
    out.push_str("\n]\n");
    out
}

/// The instructions as a table: a `#` summary line, a header, then one line per instruction
/// with its offset, bytes, `nop` if it is one, its text and, on the marked one,
/// `<-- faulting (marked)`.
pub fn render_text(decoded: &Decoded) -> String {
    let insns = &decoded.insns;
    let total: usize = insns.iter().map(|i| i.len).sum();
    let digits = format!("{:x}", total.saturating_sub(1)).len().max(2);
    let offset_width = (digits + 2).max("offset".len());
    let bytes_width = insns
        .iter()
        .map(|i| i.bytes.len())
        .chain([5])
        .max()
        .unwrap_or(5);
    let syntax = match (decoded.arch, decoded.syntax) {
        (Arch::Aarch64, _) => "",
        (Arch::X86_64, Syntax::Intel) => ", Intel syntax",
        (Arch::X86_64, Syntax::Att) => ", AT&T syntax",
    };
    let (count, unit) = match decoded.arch {
        Arch::X86_64 => (total, "byte"),
        Arch::Aarch64 => (total.div_ceil(4), "word"),
    };
    let plural = if count == 1 { "" } else { "s" };
    let unit = format!("{count} {unit}{plural}");
    let mark = match insns.iter().find(|i| i.marked) {
        Some(i) => format!("faulting instruction marked at offset {:#x}", i.offset),
        None => "no faulting instruction marked".to_owned(),
    };
    let mut out = format!("# {}{syntax}: {unit}, {mark}\n", decoded.arch);
    let header = format!(
        "{:>offset_width$}  {:<bytes_width$}  nop  instruction",
        "offset", "bytes"
    );
    out.push_str(&header);
    out.push('\n');
    for i in insns {
        let line = format!(
            "{:>offset_width$}  {:<bytes_width$}  {}  {}{}",
            format!("0x{:0digits$x}", i.offset),
            i.bytes,
            if i.is_nop { "nop" } else { "   " },
            i.text,
            if i.marked {
                "    <-- faulting (marked)"
            } else {
                ""
            },
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `bytes` in lower-case hex, space-separated: `0f 1f 44 00 00`.
pub fn hex_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(3 * bytes.len());
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `value` as signed hex: `0x2c`, `-0x56`.
pub fn signed_hex(value: i64) -> String {
    if value < 0 {
        format!("-{:#x}", value.unsigned_abs())
    } else {
        format!("{value:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_helpers() {
        assert_eq!(hex_bytes(&[0x0f, 0x1f, 0x44, 0x00, 0x00]), "0f 1f 44 00 00");
        assert_eq!(hex_bytes(&[]), "");
        assert_eq!(signed_hex(0x2c), "0x2c");
        assert_eq!(signed_hex(-0x56), "-0x56");
        assert_eq!(signed_hex(i64::MIN), "-0x8000000000000000");
    }

    #[test]
    fn table_layout() {
        let out = run("0f 1f 44 00 00 <f3> 90 c3", &Options::default()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "# x86-64, Intel syntax: 8 bytes, faulting instruction marked at offset 0x5",
                "offset  bytes           nop  instruction",
                "  0x00  0f 1f 44 00 00  nop  nop [rax+rax]",
                "  0x05  f3 90                pause    <-- faulting (marked)",
                "  0x07  c3                   ret",
            ]
        );
    }

    #[test]
    fn json_shape() {
        let options = Options {
            json: true,
            ..Options::default()
        };
        let out = run("90 <c3>", &options).unwrap();
        assert_eq!(out.lines().count(), 4, "one object per line:\n{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"offset": 0, "len": 1, "bytes": "90", "text": "nop", "is_nop": true, "marked": false},
                {"offset": 1, "len": 1, "bytes": "c3", "text": "ret", "is_nop": false, "marked": true},
            ])
        );
    }

    /// Random pastes never panic, and every success covers every byte once, in order.
    #[test]
    fn random_input_never_panics() {
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEF  0f48c3909090d5<>()[]:,.xXg\n>Code: \t";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let arches = [None, Some(Arch::X86_64), Some(Arch::Aarch64)];
        const TOKENS: &[&str] = &[
            "90",
            "c3",
            "0f",
            "1f",
            "44",
            "00",
            "e8",
            "ff",
            "f3",
            "48",
            "8b",
            "<48>",
            "<c3>",
            "d503201f",
            "d4210000",
            "(d4210000)",
            "(17ffffc9)",
            "0f1f440000",
            "0x90,",
            "Code:",
            "[ 0.431045]",
            "\n",
            "\n> ",
            "zz",
            "<>",
            "(",
            "4",
        ];
        for round in 0..3000 {
            let len = (next() % 60) as usize;
            let text: String = if round % 2 == 0 {
                (0..len)
                    .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
                    .collect()
            } else {
                let pick = |n: u64| TOKENS[(n % TOKENS.len() as u64) as usize];
                (0..len / 3)
                    .map(|_| pick(next()))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            for arch in arches {
                if let Ok(code) = parse(&text, arch) {
                    let decoded = decode(&code, Syntax::Intel);
                    let mut at = 0;
                    for i in &decoded.insns {
                        assert_eq!(i.offset, at, "{text:?}");
                        at += i.len;
                    }
                    assert_eq!(at, code.bytes.len(), "{text:?}");
                    let marked = decoded.insns.iter().filter(|i| i.marked).count();
                    assert_eq!(marked, usize::from(code.mark.is_some()), "{text:?}");
                    render_text(&decoded);
                    render_json(&decoded);
                }
            }
        }
        // Random x86 bytes with a random mark: the marked instruction always starts there.
        for _ in 0..3000 {
            let len = 1 + (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mark = (next() as usize) % len;
            let insns = x86::decode(&bytes, Some(mark), Syntax::Att);
            let marked: Vec<_> = insns.iter().filter(|i| i.marked).collect();
            assert_eq!(marked.len(), 1, "{bytes:02x?} {mark}");
            assert_eq!(marked[0].offset, mark);
            assert_eq!(insns.iter().map(|i| i.len).sum::<usize>(), len);
        }
    }

    #[test]
    fn summary_counts() {
        let first = |text| {
            run(text, &Options::default())
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            first("<c3>"),
            "# x86-64, Intel syntax: 1 byte, faulting instruction marked at offset 0x0"
        );
        assert_eq!(
            first("d503201f"),
            "# aarch64: 1 word, no faulting instruction marked"
        );
    }

    #[test]
    fn arm64_table() {
        let out = run("d503201f (d4210000)", &Options::default()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "# aarch64: 2 words, faulting instruction marked at offset 0x4",
                "offset  bytes     nop  instruction",
                "  0x00  d503201f  nop  nop",
                "  0x04  d4210000       brk #0x800    <-- faulting (marked)",
            ]
        );
    }
}
