//! The demo's immediate values: 4 immediates (a `u64`, a `u32`, a `bool` and an `i8`), each read
//! at [`READERS`] sites by the workers and set by the main thread, alone or in its batches of
//! keys, a static call and functions.
//!
//! Each immediate moves through a fixed cycle of values (see [`scheduled`]), so the version
//! number of its history (see `history`) says which value was installed: every value read must
//! be one installed at some instant during the read. The values' bytes all differ, so a read
//! that mixed an old and a new instruction's bytes (the `u64`'s halves, say) yields a value of
//! none of them, which counts as an inconsistency.

use std::time::Instant;

use serde::Serialize;
use textpoke::{Batch, Immediate, imm};

use super::history::History;

/// Immediates.
pub const IMMS: usize = 4;
/// Reader functions, each reading every immediate once: the sites per immediate.
pub const READERS: usize = 8;

/// The `u64`'s values: a read that tore between two of them would mix their halves.
const WIDE_VALUES: [u64; 4] = [
    0x1111_1111_2222_2222,
    0x3333_3333_4444_4444,
    0x5555_5555_6666_6666,
    0x7777_7777_8888_8888,
];
const NARROW_VALUES: [u32; 4] = [0x1122_3344, 0x5566_7788, 0x99aa_bbcc, 0xddee_ff00];
const SMALL_VALUES: [i8; 4] = [-100, 37, -1, 127];

static WIDE: Immediate<u64> = Immediate::new(WIDE_VALUES[0]);
static NARROW: Immediate<u32> = Immediate::new(NARROW_VALUES[0]);
static FLAG: Immediate<bool> = Immediate::new(false);
static SMALL: Immediate<i8> = Immediate::new(SMALL_VALUES[0]);

/// One read of every immediate, each widened to a `u64` the way [`scheduled`] writes it.
type Values = [u64; IMMS];

/// Immediate `i`'s value at version `v` of its history, widened to a `u64` (version 0 is the
/// compiled-in one). Every change moves to another value.
pub fn scheduled(i: usize, v: u64) -> u64 {
    let n = (v % 4) as usize;
    match i {
        0 => WIDE_VALUES[n],
        1 => NARROW_VALUES[n].into(),
        2 => v % 2,
        // Sign-extended, so that a byte mixed into the upper ones would show.
        _ => SMALL_VALUES[n] as i64 as u64,
    }
}

#[inline(never)]
fn reader<const N: usize>() -> Values {
    // Keeps every instance distinct, or rustc would merge them into one function and with it
    // one site per immediate.
    std::hint::black_box(N);
    [
        imm!(WIDE),
        imm!(NARROW).into(),
        imm!(FLAG).into(),
        imm!(SMALL) as i64 as u64,
    ]
}

static READER_FNS: [fn() -> Values; READERS] = seq_macro::seq!(N in 0..8 { [#(reader::<N>,)*] });

/// Adds "set immediate `i` to its version `v`" to `batch`.
fn add(batch: Batch<'static>, i: usize, v: u64) -> Batch<'static> {
    let n = (v % 4) as usize;
    match i {
        0 => batch.set(&WIDE, WIDE_VALUES[n]),
        1 => batch.set(&NARROW, NARROW_VALUES[n]),
        2 => batch.set(&FLAG, v % 2 == 1),
        _ => batch.set(&SMALL, SMALL_VALUES[n]),
    }
}

/// Immediate `i`'s value as `get` reports it, widened like [`scheduled`].
fn get(i: usize) -> u64 {
    match i {
        0 => WIDE.get(),
        1 => NARROW.get().into(),
        2 => FLAG.get().into(),
        _ => SMALL.get() as i64 as u64,
    }
}

/// Immediate `i`'s read sites.
fn sites(i: usize) -> textpoke::Result<usize> {
    match i {
        0 => WIDE.sites(),
        1 => NARROW.sites(),
        2 => FLAG.sites(),
        _ => SMALL.sites(),
    }
    .map(|s| s.len())
}

/// The histories the workers check against (every immediate at version 0).
#[derive(Default)]
pub struct Shared {
    history: [History; IMMS],
}

/// What one worker read.
#[derive(Default)]
pub struct WorkerTally {
    reads: u64,
    inconsistencies: u64,
}

impl Shared {
    /// Runs reader `r` and checks every value it read against its immediate's history.
    pub fn visit(&self, r: usize, t: &mut WorkerTally) {
        let before: [u64; IMMS] = std::array::from_fn(|i| self.history[i].read());
        // Through an opaque pointer: the compiler sees a call that may touch memory, so it
        // cannot move the reads out from between the histories' loads.
        let values = std::hint::black_box(READER_FNS[r % READERS])();
        let after: [u64; IMMS] = std::array::from_fn(|i| self.history[i].read());
        for (i, &value) in values.iter().enumerate() {
            t.reads += 1;
            if !History::versions(before[i], after[i]).any(|v| value == scheduled(i, v)) {
                t.inconsistencies += 1;
            }
        }
    }
}

/// The immediates' part of the `--json` report (its fields are flattened into the report's
/// object).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImmediateReport {
    /// Immediates read by the workers and set by the main thread.
    pub immediates: usize,
    /// Their read sites (`imm!` uses) in the binary, all of which every set rewrites.
    pub immediate_sites: usize,
    /// Values read by the workers, each checked against its immediate's history.
    pub immediate_reads: u64,
    /// Immediates set (a batch that sets two counts two).
    pub immediate_sets: u64,
    /// Of those, sets committed in one batch with keys and a static call (and, every other
    /// time, functions).
    pub immediate_sets_batched: u64,
    /// Median time of one change of immediates alone (`set`, or a batch of two), in
    /// microseconds.
    pub immediate_change_us_median: f64,
    /// The immediates' share of `inconsistencies`: values read that no instant of their
    /// immediate's history during the read allows, plus sites or `get`s found holding
    /// another value than the last set once the workers stopped.
    pub immediate_inconsistencies: u64,
}

impl ImmediateReport {
    /// The summary's line.
    pub fn summary(&self) -> String {
        let n = |v: u64| super::thousands(v);
        format!(
            "{} immediates ({} sites) read {} times, set {} times ({} in batches with keys and \
             a static call), alone median {:.1} µs; {} immediate inconsistencies",
            self.immediates,
            self.immediate_sites,
            n(self.immediate_reads),
            n(self.immediate_sets),
            n(self.immediate_sets_batched),
            self.immediate_change_us_median,
            n(self.immediate_inconsistencies)
        )
    }
}

/// The main thread's side: sets the immediates and counts what it did.
pub struct Setter<'s> {
    shared: &'s Shared,
    sets: u64,
    batched: u64,
    times: Vec<f64>,
}

impl<'s> Setter<'s> {
    /// Puts every immediate back on its version-0 value, so each run starts from a known
    /// schedule.
    pub fn new(shared: &'s Shared) -> Result<Self, String> {
        (0..IMMS)
            .fold(Batch::new(), |b, i| add(b, i, 0))
            .commit()
            .map_err(|e| e.to_string())?;
        Ok(Setter {
            shared,
            sets: 0,
            batched: 0,
            times: Vec::new(),
        })
    }

    /// The immediate round `round` puts in the batch of keys and a static call.
    fn joined_imm(round: usize) -> usize {
        (round / 4 + round % 4) % IMMS
    }

    /// Adds round `round`'s set to `batch`, the main thread's batch of keys and a static call,
    /// and begins its change; [`joined`](Self::joined) ends it once the batch is committed.
    pub fn join(&self, round: usize, batch: Batch<'static>) -> Batch<'static> {
        let h = &self.shared.history[Self::joined_imm(round)];
        let batch = add(batch, Self::joined_imm(round), h.next_version());
        h.begin_change();
        batch
    }

    /// The batch [`join`](Self::join) added to is committed.
    pub fn joined(&mut self, round: usize) {
        self.shared.history[Self::joined_imm(round)].end_change();
        self.sets += 1;
        self.batched += 1;
    }

    /// Round `round`'s change of immediates alone, for the rounds whose keys change without
    /// them: in turn one set by `Immediate::set`, and one batch setting two.
    pub fn change_alone(&mut self, round: usize) -> Result<(), String> {
        let turn = round / 4;
        let chosen: &[usize] = if turn.is_multiple_of(2) {
            &[(turn + 1) % IMMS]
        } else {
            &[(turn + 2) % IMMS, (turn + 3) % IMMS]
        };
        for &i in chosen {
            self.shared.history[i].begin_change();
        }
        let t0 = Instant::now();
        let r = match *chosen {
            [i] => self.set_alone(i),
            _ => chosen
                .iter()
                .fold(Batch::new(), |b, &i| {
                    add(b, i, self.shared.history[i].next_version())
                })
                .commit()
                .map(drop),
        };
        // On failure the histories stay odd: nothing is judged against a value never
        // installed, and the run stops.
        r.map_err(|e| e.to_string())?;
        self.times.push(t0.elapsed().as_secs_f64() * 1e6);
        for &i in chosen {
            self.shared.history[i].end_change();
        }
        self.sets += chosen.len() as u64;
        Ok(())
    }

    /// Sets immediate `i` to its next version with its own `set`, not a batch.
    fn set_alone(&self, i: usize) -> textpoke::Result<()> {
        // The change has begun: the version in flight is the one being installed.
        let v = self.shared.history[i].next_version();
        let n = (v % 4) as usize;
        match i {
            0 => WIDE.set(WIDE_VALUES[n]),
            1 => NARROW.set(NARROW_VALUES[n]),
            2 => FLAG.set(v % 2 == 1),
            _ => SMALL.set(SMALL_VALUES[n]),
        }
    }

    /// Once the workers have stopped: checks that every site and `get` hold each immediate's
    /// last value, and reports.
    pub fn finish(self, workers: &[&WorkerTally], errors: &mut Vec<String>) -> ImmediateReport {
        let last: [u64; IMMS] =
            std::array::from_fn(|i| scheduled(i, self.shared.history[i].read() / 2));
        let mut wrong = READER_FNS
            .iter()
            .map(|r| r().iter().zip(last).filter(|(v, l)| **v != *l).count() as u64)
            .sum::<u64>();
        wrong += (0..IMMS).filter(|&i| get(i) != last[i]).count() as u64;
        let immediate_sites = (0..IMMS)
            .map(|i| {
                sites(i).unwrap_or_else(|e| {
                    errors.push(e.to_string());
                    0
                })
            })
            .sum();
        let mut times = self.times;
        times.sort_unstable_by(f64::total_cmp);
        ImmediateReport {
            immediates: IMMS,
            immediate_sites,
            immediate_reads: workers.iter().map(|w| w.reads).sum(),
            immediate_sets: self.sets,
            immediate_sets_batched: self.batched,
            immediate_change_us_median: super::percentile(&times, 0.5),
            immediate_inconsistencies: workers.iter().map(|w| w.inconsistencies).sum::<u64>()
                + wrong,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_moves_to_another_value_and_halves_differ() {
        for i in 0..IMMS {
            for v in 0..16 {
                assert_ne!(scheduled(i, v), scheduled(i, v + 1));
            }
        }
        // No value's halves (or bytes) could be mistaken for a mix of two others'.
        for a in WIDE_VALUES {
            for b in WIDE_VALUES.into_iter().filter(|&b| b != a) {
                let torn = (a & 0xffff_ffff_0000_0000) | (b & 0xffff_ffff);
                assert!(!WIDE_VALUES.contains(&torn));
            }
        }
    }
}
