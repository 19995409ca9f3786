//! Immediate values: every type, the table, a tampered site, and reads under load that never
//! see a torn value, on the normal path and through the trap handler's emulation.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use textpoke::{Batch, Error, Immediate, StaticKey, imm, static_branch_unlikely};

static U8: Immediate<u8> = Immediate::new(0xfe);
static U16: Immediate<u16> = Immediate::new(0xfffe);
static U32: Immediate<u32> = Immediate::new(0xffff_fffe);
static U64: Immediate<u64> = Immediate::new(u64::MAX - 1);
static USIZE: Immediate<usize> = Immediate::new(usize::MAX - 1);
static I8: Immediate<i8> = Immediate::new(-2);
static I16: Immediate<i16> = Immediate::new(i16::MIN);
static I32: Immediate<i32> = Immediate::new(-2);
static I64: Immediate<i64> = Immediate::new(i64::MIN + 1);
static ISIZE: Immediate<isize> = Immediate::new(-2);
static BOOL: Immediate<bool> = Immediate::new(true);
static TRACE: StaticKey = StaticKey::new();

#[inline(never)]
fn read_all() -> (u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, bool) {
    (
        imm!(U8),
        imm!(U16),
        imm!(U32),
        imm!(U64),
        imm!(USIZE),
        imm!(I8),
        imm!(I16),
        imm!(I32),
        imm!(I64),
        imm!(ISIZE),
        imm!(BOOL),
    )
}

#[test]
fn every_type_reads_its_initial_value_then_what_was_set() {
    let _serial = support::serial();
    let initial = read_all();
    assert_eq!(
        initial,
        (
            0xfe,
            0xfffe,
            0xffff_fffe,
            u64::MAX - 1,
            usize::MAX - 1,
            -2,
            i16::MIN,
            -2,
            i64::MIN + 1,
            -2,
            true
        )
    );
    assert_eq!(I8.initial(), -2);
    assert_eq!(U64.get(), u64::MAX - 1);
    U8.set(1).unwrap();
    U16.set(0x1234).unwrap();
    U32.set(7).unwrap();
    U64.set(0x1111_1111_2222_2222).unwrap();
    USIZE.set(3).unwrap();
    I8.set(i8::MIN).unwrap();
    I16.set(-1).unwrap();
    I32.set(i32::MIN).unwrap();
    I64.set(-1).unwrap();
    ISIZE.set(isize::MIN).unwrap();
    BOOL.set(false).unwrap();
    assert_eq!(
        read_all(),
        (
            1,
            0x1234,
            7,
            0x1111_1111_2222_2222,
            3,
            i8::MIN,
            -1,
            i32::MIN,
            -1,
            isize::MIN,
            false
        )
    );
    assert_eq!((I16.get(), BOOL.get(), I8.initial()), (-1, false, -2));
    // Keys and immediates in one transaction.
    let stats = Batch::new()
        .set(&U32, 9)
        .set(&TRACE, true)
        .set(&I8, 5)
        .set(&I8, 6)
        .commit()
        .unwrap();
    assert_eq!((read_all().2, read_all().5), (9, 6), "last word wins");
    assert!(static_branch_unlikely!(TRACE));
    assert_eq!(stats.syncs, 2, "one batch: {stats:?}");
    // Setting the value it has writes nothing.
    assert_eq!(Batch::new().set(&U32, 9).commit().unwrap().sites, 0);
}

#[test]
fn the_table_names_each_site_register_and_form() {
    let sites = textpoke::tables::imm_sites().unwrap();
    let of = |addr: usize| sites.iter().find(|s| s.addr == addr).copied().unwrap();
    for site in U64.sites().unwrap() {
        assert!(of(site).wide, "u64 reads are movabs");
        assert_eq!(of(site).insn_len(), 10);
    }
    for site in U16
        .sites()
        .unwrap()
        .into_iter()
        .chain(BOOL.sites().unwrap())
    {
        assert!(!of(site).wide, "narrow reads are mov r32, imm32");
    }
    for site in &sites {
        let bytes = textpoke::__private::read_code(site.addr, site.insn_len()).unwrap();
        let text = textpoke::__private::disassemble(site.addr, &bytes);
        assert!(text.starts_with("mov ") && !text.contains(';'), "{text}");
    }
    assert_eq!(textpoke::tables::IMM_ENTRY_SIZE, 12);
}

static TAMPERED: Immediate<u32> = Immediate::new(0x1111_1111);
static INNOCENT: Immediate<u32> = Immediate::new(1);

#[inline(never)]
fn tampered() -> u32 {
    imm!(TAMPERED)
}
#[inline(never)]
fn tampered_too() -> u32 {
    imm!(TAMPERED)
}
#[inline(never)]
fn innocent() -> u32 {
    imm!(INNOCENT)
}

/// The bytes of the site at `addr`.
fn site_bytes(addr: usize) -> Vec<u8> {
    let sites = textpoke::tables::imm_sites().unwrap();
    let site = sites.iter().find(|s| s.addr == addr).unwrap();
    textpoke::__private::read_code(addr, site.insn_len()).unwrap()
}

#[test]
fn a_tampered_site_refuses_the_batch_and_writes_nothing() {
    let _serial = support::serial();
    let sites = TAMPERED.sites().unwrap();
    assert_eq!(sites.len(), 2);
    let victim = sites[1];
    let mut bytes = site_bytes(victim);
    // The same register, another value (the immediate's low byte): a stale or foreign build.
    let low = bytes.len() - 4;
    bytes[low] ^= 0x10;
    support::poke_behind_back(victim, &bytes);
    let every: Vec<usize> = sites
        .iter()
        .chain(&INNOCENT.sites().unwrap())
        .copied()
        .collect();
    let before: Vec<Vec<u8>> = every.iter().map(|&s| site_bytes(s)).collect();
    let err = Batch::new()
        .set(&INNOCENT, 2)
        .set(&TAMPERED, 0x2222_2222)
        .commit()
        .unwrap_err();
    match &err {
        Error::SiteMismatch { site, found, .. } => {
            assert_eq!(site.addr, victim);
            assert_eq!(found.bytes, bytes);
            let item = site.item().expect("the site's immediate is named");
            assert_eq!(item.kind, "immediate");
            assert_eq!(item.name(), Some("immediates::TAMPERED"));
            assert_eq!(item.declared.file(), file!());
        }
        other => panic!("expected SiteMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("nothing written"), "{err}");
    let after: Vec<Vec<u8>> = every.iter().map(|&s| site_bytes(s)).collect();
    assert_eq!(before, after, "no site changed");
    assert_eq!((INNOCENT.get(), TAMPERED.get()), (1, 0x1111_1111));
    assert_eq!(innocent(), 1);
    let mut reads = [tampered(), tampered_too()];
    reads.sort();
    assert_eq!(
        reads,
        [0x1111_1101, 0x1111_1111],
        "each site reads its own bytes"
    );
}

/// Values whose bytes differ everywhere: a read mixing the two is neither.
const OLD64: u64 = 0x1111_1111_1111_1111;
const NEW64: u64 = 0x2222_2222_2222_2222;
const OLD32: u32 = 0x1111_1111;
const NEW32: u32 = 0x2222_2222;

static WIDE: Immediate<u64> = Immediate::new(OLD64);
static NARROW: Immediate<u32> = Immediate::new(OLD32);

/// Reads per pass of a reader.
const READS: usize = 13;

/// One read site of `$imm` per token after it, as an array.
macro_rules! reads {
    ($imm:path; $($n:tt)*) => {
        [$({
            let _ = $n;
            imm!($imm)
        }),*]
    };
}

/// Thirteen reads of each, live at once (in an optimized build the compiler spreads them over
/// its registers).
#[inline(never)]
fn read_anywhere() -> ([u64; READS], [u32; READS]) {
    std::hint::black_box((
        reads!(WIDE; 0 1 2 3 4 5 6 7 8 9 10 11 12),
        reads!(NARROW; 0 1 2 3 4 5 6 7 8 9 10 11 12),
    ))
}

/// Reads `$imm` into each register Rust lets an `asm!` name (all but `rbx`, `rbp` and `rsp`),
/// so that the trap handler's emulation of every one of them is met live.
macro_rules! read_into_every_register {
    ($imm:path) => {
        read_into_every_register!($imm; "rax" "eax", "rcx" "ecx", "rdx" "edx", "rsi" "esi",
            "rdi" "edi", "r8" "r8d", "r9" "r9d", "r10" "r10d", "r11" "r11d", "r12" "r12d",
            "r13" "r13d", "r14" "r14d", "r15" "r15d")
    };
    ($imm:path; $($r64:tt $r32:tt),*) => {
        [$(textpoke::__arch_imm!($imm, $r64, $r32)),*]
    };
}

static WIDE_REGS: Immediate<u64> = Immediate::new(OLD64);
static NARROW_REGS: Immediate<u32> = Immediate::new(OLD32);

#[inline(never)]
fn read_every_register() -> ([u64; READS], [u32; READS]) {
    (
        read_into_every_register!(WIDE_REGS),
        read_into_every_register!(NARROW_REGS),
    )
}

/// Reads that are neither value.
fn torn((wide, narrow): ([u64; READS], [u32; READS])) -> usize {
    let wide = wide.iter().filter(|&&v| v != OLD64 && v != NEW64);
    let narrow = narrow.iter().filter(|&&v| v != OLD32 && v != NEW32);
    wide.count() + narrow.count()
}

/// Flips `wide` and `narrow` between their values, together, for 2 s while 2 threads `read`
/// them and check every value; then checks that no read was torn, that threads met breakpoints
/// meanwhile (which the handler emulated), and that every site holds the last value.
fn flip_under_load(
    wide: &Immediate<u64>,
    narrow: &Immediate<u32>,
    read: fn() -> ([u64; READS], [u32; READS]),
) {
    let stop = AtomicBool::new(false);
    let torn_reads = AtomicUsize::new(0);
    let (emulated_before, _) = textpoke::__private::trap_counts();
    let mut flips = 0u64;
    let reads: usize = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) {
                        torn_reads.fetch_add(torn(read()), Ordering::Relaxed);
                        reads += 2 * READS;
                    }
                    reads
                })
            })
            .collect();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(2) {
            let on = flips.is_multiple_of(2);
            Batch::new()
                .set(wide, if on { NEW64 } else { OLD64 })
                .set(narrow, if on { NEW32 } else { OLD32 })
                .commit()
                .unwrap();
            flips += 1;
        }
        stop.store(true, Ordering::Relaxed);
        readers.into_iter().map(|r| r.join().unwrap()).sum()
    });
    let emulated = textpoke::__private::trap_counts().0 - emulated_before;
    eprintln!("{flips} flips, {reads} checked reads, {emulated} traps emulated");
    assert_eq!(
        torn_reads.into_inner(),
        0,
        "a read mixed the old and new bytes"
    );
    assert!(flips > 100 && reads > 1000, "{flips} flips, {reads} reads");
    assert!(
        emulated > 0,
        "threads met breakpoints mid-batch and were emulated"
    );
    let last = !flips.is_multiple_of(2);
    let want = (
        [if last { NEW64 } else { OLD64 }; READS],
        [if last { NEW32 } else { OLD32 }; READS],
    );
    assert_eq!(read(), want);
}

#[test]
fn reads_under_load_are_never_torn() {
    support::fresh("reads_under_load_are_never_torn", || {
        flip_under_load(&WIDE, &NARROW, read_anywhere)
    });
}

#[test]
fn trapped_reads_get_the_new_value_in_every_register() {
    support::fresh("trapped_reads_get_the_new_value_in_every_register", || {
        let sites = textpoke::tables::imm_sites().unwrap();
        let mine = WIDE_REGS.sites().unwrap();
        let regs: BTreeSet<u8> = sites
            .iter()
            .filter(|s| mine.contains(&s.addr))
            .map(|s| s.reg)
            .collect();
        let want: BTreeSet<u8> = [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15].into();
        assert_eq!(regs, want, "the table names each register");
        // Slow handlers: threads that met a breakpoint stay on the emulation path longer, so
        // more of them are there while the batch is written.
        textpoke::__private::set_trap_delay(2_000);
        flip_under_load(&WIDE_REGS, &NARROW_REGS, read_every_register);
    });
}
