//! The checks of each table's entries, as the runtime makes them when it indexes the table,
//! and the bytes each site is built with.

use super::Verifier;
use crate::inspect::code::{self, CALL, INT3};
use crate::inspect::statics;
use crate::inspect::tables::{AltEntry, Kind};

/// Length of an alternative's first-use entry: `lea rsp, [rsp-128]`, `call
/// textpoke_alt_first_use_v1`, `lea rsp, [rsp+128]` (`FIRST_USE_LEN` in the library).
const FIRST_USE_LEN: u64 = 18;
const FIRST_USE_ENTER: [u8; 5] = [0x48, 0x8d, 0x64, 0x24, 0x80];
const FIRST_USE_LEAVE: [u8; 8] = [0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00];
/// A trampoline's bytes, its slots included.
const TRAMPOLINE_LEN: u64 = 24;
/// A trampoline's patched instruction: `jmp rel32` and one `int3`.
const TRAMPOLINE_PATCH_LEN: usize = 6;
/// `r15`.
const LAST_REGISTER: u8 = 15;
/// A static-branch or inline call site: `jmp rel32`, `call rel32` or the 5-byte NOP.
const SITE_LEN: u64 = 5;

impl Verifier<'_> {
    /// Static-branch sites: key, flags, text, initial NOP or JMP, target in the function.
    pub(super) fn jumps(&mut self) {
        for j in &self.tables.jumps {
            self.checked.jump += 1;
            let (t, e, site) = (j.table, j.index, j.site);
            if j.flags & !1 != 0 {
                let what = format!("unknown flags {:#x} (bits 1-2 are reserved)", j.flags);
                self.report(t, Some(e), Some(site), what);
            }
            let key = self.key(t, e, site, j.key);
            if let Some(why) = self.not_text(site, SITE_LEN) {
                self.report(t, Some(e), Some(site), format!("the site {why}"));
                continue;
            }
            if let Some(why) = self.not_text(j.target, 1) {
                let what = format!("the jump target {:#x} {why}", j.target);
                self.report(t, Some(e), Some(site), what);
            }
            if let Some(key) = key {
                let shape = if j.likely() { "likely" } else { "unlikely" };
                let state = if key.enabled { "enabled" } else { "disabled" };
                let name = key.name.unwrap_or_else(|| format!("{:#x}", key.addr));
                if key.enabled != j.likely() {
                    match code::jmp(site, j.target) {
                        Some(jmp) => self.holds(
                            t,
                            e,
                            site,
                            &jmp,
                            &format!(
                                "its initial JMP to the entry's target (key {name} initially \
                                 {state}, {shape} site):"
                            ),
                        ),
                        None => self.report(
                            t,
                            Some(e),
                            Some(site),
                            format!("the jump target {:#x} is out of rel32 range", j.target),
                        ),
                    }
                } else {
                    let what = format!(
                        "its initial 5-byte NOP (key {name} initially {state}, {shape} site):"
                    );
                    self.holds(t, e, site, &code::nop5(), &what);
                }
            }
            if let Some((start, end)) = self.boundary(t, e, site)
                && !(start..end).contains(&j.target)
            {
                let what = format!(
                    "the jump target {} is outside the site's function ({start:#x}..{end:#x})",
                    self.at(j.target)
                );
                self.report(t, Some(e), Some(site), what);
            }
            self.site(t, e, site, SITE_LEN);
        }
    }

    /// Static calls: state, trampoline and its initial jump; one trampoline per state.
    pub(super) fn calls(&mut self) {
        let mut states: Vec<(u64, u64, usize, usize)> = Vec::new();
        for c in &self.tables.calls {
            self.checked.call += 1;
            let (t, e, tramp) = (c.table, c.index, c.trampoline);
            states.push((c.state, tramp, t, e));
            if let Err(why) = statics::call(self.image, c.state) {
                let what = format!("static call state {}: {why}", self.at(c.state));
                self.report(t, Some(e), Some(tramp), what);
            }
            if let Some(why) = self.not_text(c.initial, 1) {
                let what = format!("the initial target {:#x} {why}", c.initial);
                self.report(t, Some(e), Some(tramp), what);
            }
            if let Some(why) = self.not_text(tramp, TRAMPOLINE_LEN) {
                self.report(t, Some(e), Some(tramp), format!("the trampoline {why}"));
                continue;
            }
            if !tramp.is_multiple_of(8) {
                let what = "the trampoline is not 8-aligned".into();
                self.report(t, Some(e), Some(tramp), what);
            }
            match code::jmp(tramp, c.initial) {
                Some(jmp) => {
                    let mut expected = jmp.to_vec();
                    expected.resize(TRAMPOLINE_PATCH_LEN, INT3);
                    let what = "its initial jump to the compiled-in target:";
                    self.holds(t, e, tramp, &expected, what);
                }
                None => {
                    let what = format!("the initial target {:#x} is out of range", c.initial);
                    self.report(t, Some(e), Some(tramp), what);
                }
            }
            self.boundary(t, e, tramp);
            self.site(t, e, tramp, TRAMPOLINE_LEN);
        }
        states.sort_unstable();
        for pair in states.windows(2) {
            let [(state, first, ..), (next, second, t, e)] = pair else {
                continue;
            };
            if state == next {
                let what = format!(
                    "trampolines {first:#x} and {second:#x} share one static call state \
                     {state:#x}"
                );
                self.report(*t, Some(*e), Some(*second), what);
            }
        }
    }

    /// Inline call sites: a static call of the call table, and its `call rel32`.
    pub(super) fn callsites(&mut self) {
        for s in &self.tables.callsites {
            self.checked.callsite += 1;
            let (t, e, site) = (s.table, s.index, s.site);
            let call = self.tables.calls.iter().find(|c| c.state == s.state);
            if call.is_none() {
                let what = format!(
                    "call state {} is not a static call of the call table",
                    self.at(s.state)
                );
                self.report(t, Some(e), Some(site), what);
            }
            if let Some(why) = self.not_text(site, SITE_LEN) {
                self.report(t, Some(e), Some(site), format!("the call site {why}"));
                continue;
            }
            if let Some(target) = call.map(|c| c.initial) {
                match code::call(site, target) {
                    Some(expected) => {
                        let what = "its call to the compiled-in target:";
                        self.holds(t, e, site, &expected, what);
                    }
                    None => {
                        let what = format!("the initial target {target:#x} is out of range");
                        self.report(t, Some(e), Some(site), what);
                    }
                }
            }
            self.boundary(t, e, site);
            self.site(t, e, site, SITE_LEN);
        }
    }

    /// Alternatives: each candidate, then each site and its out-of-line default.
    pub(super) fn alts(&mut self) {
        let known: Vec<&str> = textpoke::features::known().collect();
        for candidates in self.tables.alt_sites() {
            self.checked.alt += candidates.len();
            for (k, c) in candidates.iter().enumerate() {
                self.alt_candidate(c, k + 1 == candidates.len(), &known);
            }
            if let Some(first) = candidates.first() {
                self.alt_site(first);
            }
        }
    }

    fn alt_candidate(&mut self, c: &AltEntry, last: bool, known: &[&str]) {
        let (t, e, site) = (c.table, c.index, c.site);
        let report = |v: &mut Self, what: String| v.report(t, Some(e), Some(site), what);
        match c.feature.as_deref() {
            None => report(
                self,
                format!(
                    "the feature name at {:#x} is not a NUL-terminated string of at most 63 bytes",
                    c.name_addr
                ),
            ),
            Some("") if !last => {
                report(self, "the default is not the site's last candidate".into())
            }
            Some(f) if !f.is_empty() && last => report(
                self,
                format!("the last candidate (`{f}`) is not the default"),
            ),
            Some(f) if !f.is_empty() && !known.contains(&f) => {
                report(self, format!("unknown CPU feature `{f}`"))
            }
            _ => {}
        }
        if c.len > c.site_len() {
            let feature = c.feature.as_deref().unwrap_or("?");
            let what = format!(
                "the `{feature}` candidate is {} bytes, longer than its {}-byte site",
                c.len,
                c.site_len()
            );
            report(self, what);
        }
        if self.image.section_at(c.code, c.len.max(1)).is_none() {
            let what = format!("the candidate's code at {:#x} is outside the file", c.code);
            report(self, what);
        }
    }

    /// The site and its out-of-line default: `jmp` to the first-use entry padded with `int3`;
    /// the entry, the default's code, and a `jmp` back past the site.
    fn alt_site(&mut self, a: &AltEntry) {
        let (t, e, site, len) = (a.table, a.index, a.site, a.site_len());
        if let Some(why) = self.not_text(site, len) {
            self.report(t, Some(e), Some(site), format!("the site {why}"));
            return;
        }
        let entry = a.default.wrapping_sub(FIRST_USE_LEN);
        let back = a.default.wrapping_add(a.default_len);
        // The entry, the default, then its `jmp rel32` back.
        if let Some(why) = self.not_text(entry, FIRST_USE_LEN + a.default_len + SITE_LEN) {
            let what = format!("the out-of-line default at {:#x} {why}", a.default);
            self.report(t, Some(e), Some(site), what);
        } else {
            let what = "the first-use entry's";
            let call_at = entry + FIRST_USE_ENTER.len() as u64;
            self.holds(t, e, entry, &FIRST_USE_ENTER, what);
            self.holds(t, e, call_at + SITE_LEN, &FIRST_USE_LEAVE, what);
            let call = self.image.bytes(call_at, SITE_LEN);
            let target = call.and_then(|b| code::rel32_target(CALL, call_at, b));
            if !target.is_some_and(|target| self.image.in_text(target, 1)) {
                let what = format!(
                    "the first-use entry at {entry:#x} does not call into the text: {}",
                    code::show(call_at, call.unwrap_or_default())
                );
                self.report(t, Some(e), Some(site), what);
            }
            if let Some(jmp) = code::jmp(back, site.wrapping_add(len)) {
                self.holds(t, e, back, &jmp, "the default's jump back past the site");
            }
        }
        match code::jmp(site, entry) {
            Some(jmp) => {
                let mut expected = jmp.to_vec();
                expected.resize(len as usize, INT3);
                let what = "its initial jump to the default's first-use entry, int3-padded:";
                self.holds(t, e, site, &expected, what);
            }
            None => {
                let what = format!("the default at {:#x} is out of range", a.default);
                self.report(t, Some(e), Some(site), what);
            }
        }
        self.boundary(t, e, site);
        self.site(t, e, site, len);
    }

    /// Patchable functions: state, code, and a key with sites.
    pub(super) fn fns(&mut self) {
        for f in &self.tables.fns {
            self.checked.function += 1;
            let (t, e) = (f.table, f.index);
            if let Some(code) = f.code
                && let Some(why) = self.not_text(code, 1)
            {
                let what = format!("the function's code at {code:#x} {why}");
                self.report(t, Some(e), Some(f.state), what);
            }
            let state = match statics::function(self.image, f.state, f.version) {
                Ok(state) => state,
                Err(why) => {
                    let what = format!("function state {}: {why}", self.at(f.state));
                    self.report(t, Some(e), Some(f.state), what);
                    continue;
                }
            };
            let Some(key) = state.key else {
                let what = "the function's key pointer cannot be read".into();
                self.report(t, Some(e), Some(f.state), what);
                continue;
            };
            // Without a jump table this tool reads, a missing site says nothing new.
            let jump_table = self
                .tables
                .sections
                .iter()
                .any(|s| s.known && s.kind == Some(Kind::Jump));
            if self.key(t, e, f.state, key).is_some()
                && jump_table
                && !self.tables.jumps.iter().any(|j| j.key == key)
            {
                let name = state.name.unwrap_or_else(|| format!("{:#x}", f.state));
                let what = format!("the key of {name} has no site in the jump table");
                self.report(t, Some(e), Some(f.state), what);
            }
        }
    }

    /// Immediate-value sites: register, immediate, and the `mov` of its initial value.
    pub(super) fn imms(&mut self) {
        for i in &self.tables.imms {
            self.checked.imm += 1;
            let (t, e, site) = (i.table, i.index, i.site);
            if i.reserved != [0; 3] {
                let what = format!("reserved bytes are {}, not zero", code::hex(&i.reserved));
                self.report(t, Some(e), Some(site), what);
            }
            if i.reg > LAST_REGISTER {
                let what = format!("register number {} (r15 is {LAST_REGISTER})", i.reg);
                self.report(t, Some(e), Some(site), what);
                continue;
            }
            let imm = match statics::imm(self.image, i.imm) {
                Ok(imm) => imm,
                Err(why) => {
                    let what = format!("immediate {}: {why}", self.at(i.imm));
                    self.report(t, Some(e), Some(site), what);
                    continue;
                }
            };
            let Some(wide) = imm.wide() else {
                let what = format!("the immediate's width is {} (4 or 8)", imm.width);
                self.report(t, Some(e), Some(site), what);
                continue;
            };
            let Some(expected) = code::mov_imm(i.reg, wide, imm.initial) else {
                let what = format!("register {} does not exist (0 to 15)", i.reg);
                self.report(t, Some(e), Some(site), what);
                continue;
            };
            if let Some(why) = self.not_text(site, expected.len() as u64) {
                self.report(t, Some(e), Some(site), format!("the site {why}"));
                continue;
            }
            let name = imm.name.unwrap_or_else(|| format!("{:#x}", imm.addr));
            let what = format!("the `mov` of {name}'s initial value");
            self.holds(t, e, site, &expected, &what);
            self.boundary(t, e, site);
            self.site(t, e, site, expected.len() as u64);
        }
    }

    /// `multiversion!` selectors: code, and an owner in writable data.
    pub(super) fn selects(&mut self) {
        for s in &self.tables.selects {
            self.checked.select += 1;
            let (t, e) = (s.table, s.index);
            if let Some(why) = self.not_text(s.selector, 1) {
                let what = format!("the selector {why}");
                self.report(t, Some(e), Some(s.selector), what);
            }
            if !self
                .image
                .section_at(s.owner, 1)
                .is_some_and(|section| section.write)
            {
                let what = format!(
                    "the owner {:#x} is not in writable data (not a SELECT_OWNER)",
                    s.owner
                );
                self.report(t, Some(e), Some(s.selector), what);
            }
        }
    }
}
