//! One patcher per process, whatever is loaded.
//!
//! A process may hold many copies of textpoke: the executable's, one in each plugin (a
//! `cdylib` loaded with `dlopen`, usually `RTLD_LOCAL`), several semver-incompatible versions
//! in one object. Exactly one of them is **the process's patcher**: it owns the patch lock, the
//! SIGTRAP handler, the batch in flight and the registry of every site that any copy may
//! patch. Every other copy plans its batches itself (its own tables, keys and calls) and hands
//! them, as arrays of [`Poke`]s, to the patcher through a versioned table of C functions,
//! [`PatcherV1`]. So there is one lock, one handler, one chain to the handler installed before
//! it, and one view of the batch in flight, however many copies come and go.
//!
//! **Finding it.** Every copy's object carries an ELF note (see `os::rendezvous`) pointing at
//! that copy's `PatcherV1`. The patcher is the copy whose note comes first in load order, as
//! `dl_iterate_phdr` lists objects: the executable's copy if it has one, otherwise the earliest
//! loaded plugin's. No symbol lookup is involved, so executables that export nothing and
//! plugins loaded `RTLD_LOCAL` find it all the same. The first copy to use the patcher makes
//! its object permanent (`dlopen(RTLD_NOLOAD | RTLD_NODELETE)`), before calling into it, so the
//! handler and the state every copy relies on never live in code that can be unloaded: a
//! `dlclose` of that plugin leaves it loaded. Load order only grows at its end, so every copy,
//! whenever it looks, finds the same one.
//!
//! **Versions.** The note and the table both carry the rendezvous version. A copy that finds a
//! patcher speaking a version it does not know refuses to patch with
//! [`Error::Rendezvous`], naming the object; a later textpoke keeps speaking `v1` to join an
//! earlier patcher. The layouts of `PatcherV1`, [`Poke`] (with its `Code` and `WireInsn`) and
//! [`WireError`] are frozen; fields are only ever appended, and `size` says how many there are.
//!
//! **Unloading.** A copy that is not the patcher removes its sites from the patcher's registry
//! when its object is unloaded (a `.fini_array` entry: it takes the patch lock, so a batch in
//! flight on those sites finishes first, and no breakpoint is left behind), then frees its
//! indexes. At process exit nothing is torn down.

use std::mem::ManuallyDrop;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use super::{Code, PatchStats, Poke, trap};
use crate::os;
use crate::{CodeBytes, Error, Location, Result};

const MAGIC: [u8; 8] = *b"textpoke";
/// The rendezvous version this copy speaks.
pub const RENDEZVOUS_VERSION: u32 = 1;

/// The functions and identity one copy of textpoke offers the others. Frozen layout (`v1`):
/// append only.
#[repr(C)]
pub struct PatcherV1 {
    magic: [u8; 8],
    version: u32,
    /// `size_of::<PatcherV1>()` for the version that built it.
    size: u32,
    /// `textpoke <version>`, NUL-padded, for messages.
    name: [u8; 32],
    /// Makes this copy the patcher (pins its object). 0, or an errno.
    claim: extern "C" fn() -> i32,
    lock: extern "C" fn(),
    try_lock: extern "C" fn() -> bool,
    unlock: extern "C" fn(),
    /// Applies a batch. The caller holds the lock.
    patch: unsafe extern "C" fn(*mut Poke, usize, *mut PatchStats, *mut WireError) -> bool,
    /// Registers a sorted array of site addresses, valid until unregistered. The caller holds
    /// the lock. False when the registry is full.
    register: unsafe extern "C" fn(*const usize, usize) -> bool,
    /// Forgets an array registered before; returns once no trap handler reads it. The caller
    /// holds the lock.
    unregister: unsafe extern "C" fn(*const usize),
    /// Traps emulated and rewound so far.
    trap_counts: unsafe extern "C" fn(*mut usize, *mut usize),
    /// Whether the process is exiting (nothing is torn down then).
    exiting: extern "C" fn() -> bool,
    /// Whether a thread (by id) is running the patcher's SIGTRAP handler, or left it within
    /// the given number of nanoseconds.
    in_trap_handler: extern "C" fn(i32, u64) -> bool,
    /// The first instruction of the patcher's SIGTRAP handler.
    trap_handler_entry: extern "C" fn() -> usize,
    // Appended after the first release; present when `size` covers them.
    /// Runs one control request (UTF-8 text, see `crate::control`) on this copy's own items,
    /// writing its JSON reply through the sink. The caller must not hold the lock (a change
    /// takes it) and must keep this copy's object loaded. Returns how many items matched, or
    /// -1 when the request failed (the reply says why).
    control: unsafe extern "C" fn(*const u8, usize, Sink, *mut libc::c_void) -> i64,
    /// Starts serving the control socket in this copy (which must be the patcher's: its object
    /// is permanent). Writes the socket's address, or why it could not, through the sink.
    /// 0 on success, -1 on failure.
    serve: unsafe extern "C" fn(Sink, *mut libc::c_void) -> i32,
}

/// Where a copy writes text for another: `(context, bytes, length)`, called any number of
/// times, appending.
type Sink = unsafe extern "C" fn(*mut libc::c_void, *const u8, usize);

/// Bytes of a table that has every field of the first release (before `control`): any later
/// table has at least these.
const V1_CORE_SIZE: usize = std::mem::offset_of!(PatcherV1, control);

const fn name() -> [u8; 32] {
    let mut out = [0u8; 32];
    let parts: [&[u8]; 2] = [b"textpoke ", env!("CARGO_PKG_VERSION").as_bytes()];
    let mut n = 0;
    let mut p = 0;
    while p < parts.len() {
        let mut i = 0;
        while i < parts[p].len() && n < out.len() - 1 {
            out[n] = parts[p][i];
            n += 1;
            i += 1;
        }
        p += 1;
    }
    out
}

/// This copy's table, which the note points at.
static PATCHER: PatcherV1 = PatcherV1 {
    magic: MAGIC,
    version: RENDEZVOUS_VERSION,
    size: size_of::<PatcherV1>() as u32,
    name: name(),
    claim: abi_claim,
    lock: abi_lock,
    try_lock: abi_try_lock,
    unlock: abi_unlock,
    patch: abi_patch,
    register: abi_register,
    unregister: abi_unregister,
    trap_counts: abi_trap_counts,
    exiting: abi_exiting,
    in_trap_handler: abi_in_trap_handler,
    trap_handler_entry: abi_trap_handler_entry,
    control: abi_control,
    serve: abi_serve,
};

os::rendezvous_note!(PATCHER, "1");

/// The process's patcher, once this copy has found it.
static OWNER: AtomicPtr<PatcherV1> = AtomicPtr::new(std::ptr::null_mut());

fn this() -> &'static PatcherV1 {
    &PATCHER
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The process's patcher: found (and made permanent) on first use.
fn owner() -> Result<&'static PatcherV1> {
    let p = OWNER.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: OWNER only holds tables of permanent objects (see `join`).
        return Ok(unsafe { &*p });
    }
    let found = join()?;
    OWNER.store(
        found as *const PatcherV1 as *mut PatcherV1,
        Ordering::Release,
    );
    Ok(found)
}

fn join() -> Result<&'static PatcherV1> {
    let refuse = |object: &str, why: String| Error::Rendezvous {
        object: object.to_string(),
        why,
    };
    // An object that goes away between the scan and the pin is skipped by looking again; a
    // few tries cover any realistic churn.
    for _ in 0..64 {
        let Some(found) = os::first_rendezvous() else {
            // Our own note is always there once linked in; serve ourselves regardless.
            return claim(this(), "this object");
        };
        if found.anchor == this() as *const PatcherV1 as usize {
            return claim(this(), &found.object);
        }
        if found.version != RENDEZVOUS_VERSION {
            return Err(refuse(
                &found.object,
                format!(
                    "its note declares rendezvous v{}; {} speaks v{RENDEZVOUS_VERSION}",
                    found.version,
                    text(&PATCHER.name)
                ),
            ));
        }
        // Pin before reading anything behind the note but the note itself.
        if !os::pin_object_of(found.anchor) {
            continue;
        }
        // SAFETY: the note points at its copy's `PatcherV1`, a static in an object that is now
        // permanent; its header (magic, version, size) is checked before any function is used.
        let other = unsafe { &*(found.anchor as *const PatcherV1) };
        check_table(other, &found.object)?;
        return claim(other, &found.object);
    }
    Err(refuse(
        "the loaded objects",
        "the object holding the process's patcher kept being unloaded".into(),
    ))
}

/// Refuses a table this version cannot use: not textpoke's, another rendezvous version, or
/// shorter than a `v1` table.
fn check_table(p: &PatcherV1, object: &str) -> Result<()> {
    if p.magic == MAGIC && p.version == RENDEZVOUS_VERSION && p.size as usize >= V1_CORE_SIZE {
        return Ok(());
    }
    Err(Error::Rendezvous {
        object: object.to_string(),
        why: format!(
            "its patcher table ({}, rendezvous v{}, {} bytes) is not a v{RENDEZVOUS_VERSION} table \
             of at least {} bytes",
            if p.magic == MAGIC {
                "textpoke"
            } else {
                "no textpoke signature"
            },
            p.version,
            p.size,
            V1_CORE_SIZE
        ),
    })
}

fn claim(p: &'static PatcherV1, object: &str) -> Result<&'static PatcherV1> {
    match (p.claim)() {
        0 => Ok(p),
        errno => Err(Error::Rendezvous {
            object: object.to_string(),
            why: format!(
                "{} could not make its object permanent (errno {errno})",
                text(&p.name)
            ),
        }),
    }
}

/// Registers, once, the fork handlers of the OS layer and of the engine's trap bookkeeping.
fn register_fork_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    os::register_fork_handlers();
    ONCE.call_once(|| os::at_fork_child(super::forget_after_fork));
}

/// Whether `p` (checked by [`check_table`]) has the field ending `end` bytes in.
fn has_field(p: &PatcherV1, end: usize) -> bool {
    p.size as usize >= end
}

/// Appends what a copy wrote to the `Vec<u8>` at `ctx`.
unsafe extern "C" fn sink_to_vec(ctx: *mut libc::c_void, bytes: *const u8, len: usize) {
    // SAFETY: the caller passes the `Vec<u8>` it gave as context, and `len` readable bytes.
    unsafe { (*(ctx as *mut Vec<u8>)).extend_from_slice(std::slice::from_raw_parts(bytes, len)) }
}

/// Writes `text` through a sink.
///
/// # Safety
///
/// `sink` and `ctx` are a pair handed over by a caller of `control` or `serve`.
unsafe fn write_to(sink: Sink, ctx: *mut libc::c_void, text: &str) {
    // SAFETY: the caller's guarantee; the text is readable for its length.
    unsafe { sink(ctx, text.as_ptr(), text.len()) }
}

/// What this copy answers control requests with: set at load by the crate root (the engine
/// knows nothing of what the requests mean).
#[derive(Clone, Copy)]
pub struct ControlFns {
    /// Runs a request on this copy's items: [`Answer::Replied`] or [`Answer::Failed`].
    pub request: fn(&[u8]) -> Answer,
    /// Starts serving in this copy; the socket's name, or why not.
    pub serve: fn() -> std::result::Result<String, String>,
}

static CONTROL: std::sync::OnceLock<ControlFns> = std::sync::OnceLock::new();

/// Sets what this copy answers control requests with (once; later calls change nothing).
pub fn set_control(fns: ControlFns) {
    let _ = CONTROL.set(fns);
}

unsafe extern "C" fn abi_control(
    request: *const u8,
    len: usize,
    sink: Sink,
    ctx: *mut libc::c_void,
) -> i64 {
    // SAFETY: the caller passes `len` readable bytes.
    let request = unsafe { std::slice::from_raw_parts(request, len) };
    // On the wire: items matched and the reply; -1 and why the request failed; or 0 and
    // nothing from a copy still loading.
    let (matched, reply) = match CONTROL.get() {
        // A panic must not cross the C boundary into another copy.
        Some(c) => match std::panic::catch_unwind(|| (c.request)(request)) {
            Ok(Answer::Replied(matched, reply)) => (matched as i64, reply),
            Ok(Answer::Failed(why) | Answer::Silent(why)) => (-1, why),
            Err(_) => (-1, "the request panicked".into()),
        },
        None => (0, String::new()),
    };
    // SAFETY: the pair came with the call.
    unsafe { write_to(sink, ctx, &reply) };
    matched
}

unsafe extern "C" fn abi_serve(sink: Sink, ctx: *mut libc::c_void) -> i32 {
    let (code, text) = match serve_here() {
        Ok(name) => (0, name),
        Err(why) => (-1, why),
    };
    // SAFETY: the pair came with the call.
    unsafe { write_to(sink, ctx, &text) };
    code
}

fn serve_here() -> std::result::Result<String, String> {
    let serve = CONTROL
        .get()
        .ok_or("this copy of textpoke has not finished loading")?
        .serve;
    std::panic::catch_unwind(serve).unwrap_or_else(|_| Err("starting the server panicked".into()))
}

/// One copy's answer to a control request.
#[derive(Debug)]
pub struct CopyReply {
    /// Path of the object that holds the copy.
    pub object: String,
    /// What it said.
    pub answer: Answer,
}

/// What a copy said to a control request.
#[derive(Debug)]
pub enum Answer {
    /// It matched this many items, and replied this.
    Replied(u64, String),
    /// The request failed there, for this reason.
    Failed(String),
    /// It takes no requests (another rendezvous version, too old, or still loading): why.
    Silent(String),
}

/// Runs `request` in every copy of textpoke in the process that takes control requests, in
/// load order, each on its own items. Each copy's object is kept loaded while it runs; an
/// object unloaded meanwhile is skipped. Takes the loader's lock: never call it under the
/// patch lock.
pub fn control_each(request: &[u8]) -> Vec<CopyReply> {
    let mut out = Vec::new();
    for found in os::all_rendezvous() {
        let Some(_held) = os::hold_object_at(found.anchor) else {
            continue; // unloaded since the scan
        };
        let silent = || {
            Answer::Silent(format!(
                "this copy of textpoke (rendezvous v{}) does not take control requests, or has \
                 not finished loading",
                found.version
            ))
        };
        let table = (found.version == RENDEZVOUS_VERSION)
            .then(|| {
                // SAFETY: the note declares this version's `PatcherV1`, a static of an object
                // now held loaded; its header is checked before any function is used.
                unsafe { &*(found.anchor as *const PatcherV1) }
            })
            .filter(|t| {
                check_table(t, &found.object).is_ok()
                    && has_field(
                        t,
                        std::mem::offset_of!(PatcherV1, serve) + size_of::<Sink>(),
                    )
            });
        let answer = if let Some(table) = table {
            let mut reply = Vec::new();
            // SAFETY: the object stays loaded (held), we hold no lock, and the sink appends to
            // `reply`, which outlives the call.
            let matched = unsafe {
                (table.control)(
                    request.as_ptr(),
                    request.len(),
                    sink_to_vec,
                    &mut reply as *mut Vec<u8> as *mut _,
                )
            };
            let text = String::from_utf8_lossy(&reply).into_owned();
            match u64::try_from(matched) {
                Err(_) => Answer::Failed(text),
                Ok(_) if text.is_empty() => silent(),
                Ok(matched) => Answer::Replied(matched, text),
            }
        } else {
            silent()
        };
        out.push(CopyReply {
            object: found.object,
            answer,
        });
    }
    out
}

/// Starts the control server in the process's patcher's copy (whose object is permanent, so
/// the serving thread never runs unloaded code). Returns the socket's address.
pub fn serve_in_patcher() -> std::result::Result<String, String> {
    let owner = owner().map_err(|e| e.to_string())?;
    if std::ptr::eq(owner, this()) {
        return serve_here();
    }
    if !has_field(
        owner,
        std::mem::offset_of!(PatcherV1, serve) + size_of::<Sink>(),
    ) {
        return Err(format!(
            "the process's patcher ({}) predates the control server",
            text(&owner.name)
        ));
    }
    let mut out = Vec::new();
    // SAFETY: the patcher's object is permanent; the sink appends to `out`, which outlives
    // the call.
    let code = unsafe { (owner.serve)(sink_to_vec, &mut out as *mut Vec<u8> as *mut _) };
    let text = String::from_utf8_lossy(&out).into_owned();
    if code == 0 { Ok(text) } else { Err(text) }
}

/// Proof that the caller holds the process's patch lock. Released on drop.
pub struct PatchGuard {
    owner: &'static PatcherV1,
}

impl Drop for PatchGuard {
    fn drop(&mut self) {
        (self.owner.unlock)();
    }
}

/// Takes the process's patch lock, waiting as long as needed.
pub fn lock() -> Result<PatchGuard> {
    register_fork_handlers();
    let owner = owner()?;
    (owner.lock)();
    Ok(PatchGuard { owner })
}

/// Takes the process's patch lock if no one holds it, without waiting.
pub fn try_lock() -> Option<PatchGuard> {
    register_fork_handlers();
    let owner = owner().ok()?;
    (owner.try_lock)().then_some(PatchGuard { owner })
}

/// Applies a batch through the process's patcher.
pub fn patch(lock: &PatchGuard, pokes: &mut [Poke]) -> Result<PatchStats> {
    if is_here(lock) {
        return super::patch_here(lock, pokes);
    }
    let mut stats = PatchStats::default();
    let mut err = WireError::empty();
    // SAFETY: we hold the patcher's lock (the guard); the pokes are valid for the call.
    if unsafe { (lock.owner.patch)(pokes.as_mut_ptr(), pokes.len(), &mut stats, &mut err) } {
        Ok(stats)
    } else {
        Err(err.into_error())
    }
}

/// This copy's site arrays registered with the patcher: (pointer, length) of leaked boxes.
/// Only touched under the patch lock.
static REGISTERED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Registers `addrs` (sorted) as sites textpoke may patch, until this copy's object is
/// unloaded.
pub fn register_sites(lock: &PatchGuard, addrs: Vec<usize>) -> Result<()> {
    debug_assert!(addrs.is_sorted());
    let addrs = Box::leak(addrs.into_boxed_slice());
    // SAFETY: we hold the lock; the array stays valid until `release` unregisters it.
    if unsafe { (lock.owner.register)(addrs.as_ptr(), addrs.len()) } {
        REGISTERED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((addrs.as_ptr() as usize, addrs.len()));
        Ok(())
    } else {
        // SAFETY: the box was leaked just above and never shared.
        drop(unsafe { Box::from_raw(addrs) });
        Err(Error::BadTable {
            table: "(engine)",
            why: format!(
                "the process's patcher cannot register more than {} site tables",
                trap::REGISTRY_SLOTS
            ),
        })
    }
}

/// (emulated, rewound) trap counts of the process's patcher.
pub fn trap_counts() -> (usize, usize) {
    let Ok(owner) = owner() else {
        return trap::trap_counts();
    };
    let (mut emulated, mut rewound) = (0, 0);
    // SAFETY: both pointers are valid for writes.
    unsafe { (owner.trap_counts)(&mut emulated, &mut rewound) };
    (emulated, rewound)
}

/// Threads of this process whose signal mask blocks SIGTRAP: a thread that meets a site
/// mid-batch while it blocks SIGTRAP is killed by the kernel (a trap signal cannot be
/// blocked), so a program can look for such threads before it patches. A thread on textpoke's
/// own SIGTRAP handler path (which blocks SIGTRAP while it runs) is not listed.
pub fn threads_blocking_sigtrap() -> Result<Vec<os::ThreadInfo>> {
    let owner = OWNER.load(Ordering::Acquire);
    // SAFETY: OWNER only holds tables of permanent objects.
    let owner = unsafe { owner.as_ref() };
    let inside = |tid, within| owner.is_some_and(|o| (o.in_trap_handler)(tid, within));
    os::threads_blocking_sigtrap(&os::TrapView {
        inside: &inside,
        // Without a patcher yet, no thread is on its handler path.
        entry: owner.map_or(usize::MAX, |o| (o.trap_handler_entry)()),
    })
}

/// Whether the lock's holder, the process's patcher, is this copy of textpoke.
pub fn is_here(lock: &PatchGuard) -> bool {
    std::ptr::eq(lock.owner, this())
}

/// The object that holds the process's patcher, for messages.
pub fn patcher_object(lock: &PatchGuard) -> String {
    crate::os::describe(lock.owner as *const PatcherV1 as usize)
        .0
        .map_or_else(|| "(unknown object)".into(), |(name, _)| name)
}

/// Address of the process's patcher's table, and whether it is this copy's: tests use it to
/// show that every copy agrees.
pub fn patcher_id() -> Result<(usize, bool)> {
    let owner = owner()?;
    Ok((
        owner as *const PatcherV1 as usize,
        std::ptr::eq(owner, this()),
    ))
}

static CLAIMED: AtomicBool = AtomicBool::new(false);
static EXITING: AtomicBool = AtomicBool::new(false);

extern "C" fn mark_exiting() {
    EXITING.store(true, Ordering::Release);
}

extern "C" fn abi_claim() -> i32 {
    if CLAIMED.load(Ordering::Acquire) {
        return 0;
    }
    // Outside any lock of ours: pinning takes the loader's lock (see `os::pin_object_of`).
    if !os::pin_object_of(this() as *const PatcherV1 as usize) {
        return libc::ESTALE;
    }
    os::lock::register_fork_handlers();
    if !CLAIMED.swap(true, Ordering::AcqRel) {
        // This object is permanent now, so the function outlives every dlclose.
        os::at_exit(mark_exiting);
    }
    0
}

extern "C" fn abi_lock() {
    os::lock::lock();
}

extern "C" fn abi_try_lock() -> bool {
    os::lock::try_lock()
}

extern "C" fn abi_unlock() {
    os::lock::unlock();
}

extern "C" fn abi_in_trap_handler(tid: i32, within_ns: u64) -> bool {
    os::in_trap_handler(tid, within_ns)
}

extern "C" fn abi_trap_handler_entry() -> usize {
    os::trap_handler_entry()
}

extern "C" fn abi_exiting() -> bool {
    EXITING.load(Ordering::Acquire)
}

/// # Safety
///
/// The caller holds this copy's lock and passes `n` valid pokes and valid out-pointers.
unsafe extern "C" fn abi_patch(
    pokes: *mut Poke,
    n: usize,
    stats: *mut PatchStats,
    err: *mut WireError,
) -> bool {
    // SAFETY: the caller's contract.
    let pokes = unsafe { std::slice::from_raw_parts_mut(pokes, n) };
    // The caller holds our lock and releases it itself.
    let guard = ManuallyDrop::new(PatchGuard { owner: this() });
    match super::patch_here(&guard, pokes) {
        Ok(s) => {
            // SAFETY: the caller's contract.
            unsafe { stats.write(s) };
            true
        }
        Err(e) => {
            // SAFETY: the caller's contract.
            unsafe { err.write(WireError::of(&e)) };
            false
        }
    }
}

/// # Safety
///
/// The caller holds this copy's lock; `addrs` is valid for `n` reads until unregistered.
unsafe extern "C" fn abi_register(addrs: *const usize, n: usize) -> bool {
    trap::register(addrs, n)
}

/// # Safety
///
/// The caller holds this copy's lock.
unsafe extern "C" fn abi_unregister(addrs: *const usize) {
    trap::unregister(addrs);
}

/// # Safety
///
/// Both pointers are valid for writes.
unsafe extern "C" fn abi_trap_counts(emulated: *mut usize, rewound: *mut usize) {
    let (e, r) = trap::trap_counts();
    // SAFETY: the caller's contract.
    unsafe {
        emulated.write(e);
        rewound.write(r);
    }
}

/// When this copy's object is being unloaded: removes its sites from the patcher's registry
/// (waiting for a batch in flight) and frees them. Returns whether the caller should free the
/// rest of this copy's state: false at exit (nothing is torn down), for the patcher itself (its
/// object is permanent) and for a copy that never joined.
pub(crate) fn unload_copy() -> bool {
    let owner = OWNER.load(Ordering::Acquire);
    if owner.is_null() || std::ptr::eq(owner, this()) {
        return false;
    }
    // SAFETY: OWNER only holds tables of permanent objects.
    let owner = unsafe { &*owner };
    if (owner.exiting)() {
        return false;
    }
    (owner.lock)();
    let registered = std::mem::take(&mut *REGISTERED.lock().unwrap_or_else(|e| e.into_inner()));
    for &(ptr, _) in &registered {
        // SAFETY: we hold the lock; `ptr` was registered by this copy.
        unsafe { (owner.unregister)(ptr as *const usize) };
    }
    (owner.unlock)();
    for (ptr, len) in registered {
        // SAFETY: leaked by `register_sites`; no trap handler reads it any more.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr as *mut usize, len)) });
    }
    true
}

/// An [`Error`] in the frozen `v1` layout, for errors the patcher returns to another copy.
#[repr(C)]
pub struct WireError {
    kind: u32,
    errno: i32,
    addrs: [usize; 2],
    code: [Code; 2],
    text_len: u32,
    text: [u8; 480],
}

const E_OTHER: u32 = 0;
const E_SITE_MISMATCH: u32 = 1;
const E_OUTSIDE_TEXT: u32 = 2;
const E_OVERLAPPING: u32 = 3;
const E_BAD_TABLE: u32 = 4;
const E_SYSCALL: u32 = 5;
const E_CORE_SYNC: u32 = 6;
const E_INCONSISTENT: u32 = 7;

impl WireError {
    fn empty() -> Self {
        WireError {
            kind: E_OTHER,
            errno: 0,
            addrs: [0; 2],
            code: [Code::new(&[]).expect("empty code fits"); 2],
            text_len: 0,
            text: [0; 480],
        }
    }

    fn with_text(mut self, s: &str) -> Self {
        let mut n = s.len().min(self.text.len());
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.text[..n].copy_from_slice(&s.as_bytes()[..n]);
        self.text_len = n as u32;
        self
    }

    fn of(e: &Error) -> Self {
        let w = WireError::empty();
        let code = |b: &CodeBytes| Code::new(&b.bytes).unwrap_or(Code::new(&[]).expect("fits"));
        match e {
            Error::SiteMismatch {
                site,
                expected,
                found,
            } => WireError {
                kind: E_SITE_MISMATCH,
                addrs: [site.addr, 0],
                code: [code(expected), code(found)],
                ..w
            },
            Error::OutsideText { addr, object, .. } => WireError {
                kind: E_OUTSIDE_TEXT,
                addrs: [addr.addr, 0],
                ..w
            }
            .with_text(object),
            Error::OverlappingPatches { first, second } => WireError {
                kind: E_OVERLAPPING,
                addrs: [first.addr, second.addr],
                ..w
            },
            Error::BadTable { why, .. } => WireError {
                kind: E_BAD_TABLE,
                ..w
            }
            .with_text(why),
            Error::Syscall { call, errno } => WireError {
                kind: E_SYSCALL,
                errno: errno.raw_os_error(),
                ..w
            }
            .with_text(call),
            Error::CoreSyncUnavailable { why } => WireError {
                kind: E_CORE_SYNC,
                ..w
            }
            .with_text(why),
            Error::Inconsistent { site, why } => WireError {
                kind: E_INCONSISTENT,
                addrs: [site.addr, 0],
                ..w
            }
            .with_text(why),
            other => w.with_text(&other.to_string()),
        }
    }

    fn into_error(self) -> Error {
        let text =
            String::from_utf8_lossy(&self.text[..(self.text_len as usize).min(480)]).into_owned();
        let bytes = |i: usize| CodeBytes {
            addr: self.addrs[0],
            bytes: self.code[i].as_slice().to_vec(),
        };
        match self.kind {
            E_SITE_MISMATCH => Error::SiteMismatch {
                site: Location::of(self.addrs[0]),
                expected: bytes(0),
                found: bytes(1),
            },
            E_OUTSIDE_TEXT => Error::OutsideText {
                what: "site",
                addr: Location::of(self.addrs[0]),
                table: "(engine)",
                object: text,
            },
            E_OVERLAPPING => Error::OverlappingPatches {
                first: Location::of(self.addrs[0]),
                second: Location::of(self.addrs[1]),
            },
            E_BAD_TABLE => Error::BadTable {
                table: "(engine)",
                why: text,
            },
            E_SYSCALL => Error::Syscall {
                call: text,
                errno: rustix::io::Errno::from_raw_os_error(self.errno),
            },
            E_CORE_SYNC => Error::CoreSyncUnavailable { why: text },
            E_INCONSISTENT => Error::Inconsistent {
                site: Location::of(self.addrs[0]),
                why: text,
            },
            _ => Error::Rendezvous {
                object: "the process's patcher".into(),
                why: text,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(magic: [u8; 8], version: u32, size: u32) -> PatcherV1 {
        PatcherV1 {
            magic,
            version,
            size,
            ..PATCHER
        }
    }

    #[test]
    fn tables_of_other_versions_are_refused_by_name() {
        assert!(check_table(&PATCHER, "here").is_ok());
        let later = table(MAGIC, 2, size_of::<PatcherV1>() as u32 + 16);
        let e = check_table(&later, "/plugins/libnew.so").unwrap_err();
        assert!(matches!(&e, Error::Rendezvous { object, .. } if object == "/plugins/libnew.so"));
        assert!(e.to_string().contains("rendezvous v2"), "{e}");
        let short = table(MAGIC, 1, 16);
        assert!(
            check_table(&short, "x")
                .unwrap_err()
                .to_string()
                .contains("16 bytes")
        );
        let foreign = table(*b"notours!", 1, size_of::<PatcherV1>() as u32);
        assert!(
            check_table(&foreign, "x")
                .unwrap_err()
                .to_string()
                .contains("no textpoke signature")
        );
    }

    #[test]
    fn errors_cross_the_wire_as_the_same_variants() {
        let e = Error::SiteMismatch {
            site: Location::of(0x1000),
            expected: CodeBytes {
                addr: 0x1000,
                bytes: vec![0x0f, 0x1f, 0x44, 0, 0],
            },
            found: CodeBytes {
                addr: 0x1000,
                bytes: vec![0xcc, 0x1f, 0x44, 0, 0],
            },
        };
        let back = WireError::of(&e).into_error();
        assert!(matches!(
            &back,
            Error::SiteMismatch { site, expected, found }
                if site.addr == 0x1000 && expected.bytes[0] == 0x0f && found.bytes[0] == 0xcc
        ));
        let e = Error::syscall("pwrite(/proc/self/mem, 0x1000)", rustix::io::Errno::PERM);
        assert!(matches!(
            WireError::of(&e).into_error(),
            Error::Syscall { call, errno } if call.starts_with("pwrite") && errno == rustix::io::Errno::PERM
        ));
        let long = "x".repeat(2000);
        assert!(matches!(
            WireError::of(&Error::CoreSyncUnavailable { why: long }).into_error(),
            Error::CoreSyncUnavailable { why } if why.len() == 480
        ));
    }
}
