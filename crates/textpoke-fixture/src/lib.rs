//! Loads copies of the `textpoke-plugin` cdylib, each from its own file so that every copy is a
//! distinct object with its own copy of textpoke, and calls its C API.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The plugin, as built for this fixture.
pub static PLUGIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/plugin.so"));

/// The plugin's C API version this fixture speaks.
pub const API_VERSION: u32 = 3;

/// Keys of the plugin (its own, besides the benchmark groups').
pub const KEYS: usize = 4;

/// Sites per key.
pub const SITES_PER_KEY: usize = 8;

/// Sizes of the plugin's benchmark site groups: one key controls exactly each many sites.
pub const GROUP_SIZES: [usize; 5] = [1, 10, 100, 1000, 10000];

/// What one batch of the plugin did (its `PatchStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Sites whose bytes changed.
    pub sites: usize,
    /// `pwrite` calls made.
    pub writes: usize,
    /// Core serializations made.
    pub syncs: usize,
}

type ErrFn<A> = unsafe extern "C" fn(A, *mut u8, usize) -> i32;
type ErrFn2<A, B> = unsafe extern "C" fn(A, B, *mut u8, usize) -> i32;
type GroupSetFn = unsafe extern "C" fn(usize, bool, *mut usize, *mut u8, usize) -> i32;

/// One loaded copy of the plugin. Unloaded (`dlclose`) on drop.
pub struct Plugin {
    handle: *mut libc::c_void,
    path: PathBuf,
    patcher: unsafe extern "C" fn(*mut bool) -> usize,
    key_count: extern "C" fn() -> usize,
    set: ErrFn2<usize, bool>,
    set_all: ErrFn<u64>,
    run: extern "C" fn(usize) -> usize,
    commit: ErrFn2<u64, usize>,
    group_set: GroupSetFn,
    group_sites: ErrFn2<usize, *mut usize>,
    group_run: extern "C" fn(usize) -> usize,
    call: extern "C" fn(u64) -> u64,
    retarget: ErrFn<usize>,
    double: extern "C" fn(u64) -> u64,
    alt: extern "C" fn() -> u64,
    traps: extern "C" fn() -> usize,
    imm: extern "C" fn() -> u64,
    set_imm: ErrFn<u64>,
}

// SAFETY: the plugin's functions are thread-safe (textpoke's API is), and the handle is only
// closed on drop.
unsafe impl Send for Plugin {}
// SAFETY: as above.
unsafe impl Sync for Plugin {}

/// The directory of this process's plugin files.
fn dir_path() -> PathBuf {
    std::env::temp_dir().join(format!("textpoke-plugins-{}", std::process::id()))
}

/// The directory for this process's plugin files, created if needed. The first call also
/// arranges for it to be removed when the process exits normally (`exit`, or a return from
/// `main`), so that test runs do not leave a copy of the plugin per process behind.
fn dir() -> PathBuf {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: registers a function that takes no arguments; this crate is linked into the
        // program, never unloaded, so the function outlives the registration.
        unsafe { libc::atexit(remove_at_exit) };
    });
    let d = dir_path();
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Removes this process's plugin files at exit (a forked child looks for its own pid's
/// directory, so it never removes its parent's).
extern "C" fn remove_at_exit() {
    let _ = remove_files();
}

/// Removes the files [`Plugin::load`] wrote for this process (copies still loaded stay mapped;
/// a later `load` writes its file again).
pub fn remove_files() -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir_path()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn dl_error() -> String {
    // SAFETY: `dlerror` returns null or a NUL-terminated message owned by the loader.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

impl Plugin {
    /// Writes copy number `n` of the plugin to its own file (once) and loads it
    /// `RTLD_NOW | RTLD_LOCAL`.
    pub fn load(n: usize) -> Result<Plugin, String> {
        let path = dir().join(format!("libtextpoke_plugin_{n}.so"));
        if !path.exists() {
            // Write under a temporary name and rename, so a concurrent loader never maps a
            // half-written file.
            static TMP: AtomicUsize = AtomicUsize::new(0);
            let tmp = path.with_extension(format!("tmp{}", TMP.fetch_add(1, Ordering::Relaxed)));
            std::fs::write(&tmp, PLUGIN).map_err(|e| format!("write {}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("rename: {e}"))?;
        }
        Self::load_path(&path)
    }

    /// Loads the plugin at `path`.
    pub fn load_path(path: &Path) -> Result<Plugin, String> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: loading a shared object we built; its initializers are Rust's (none of
        // textpoke's run at load).
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("dlopen {}: {}", path.display(), dl_error()));
        }
        macro_rules! sym {
            ($name:literal: $ty:ty) => {{
                // SAFETY: looking up a symbol in the handle we just opened.
                let p = unsafe { libc::dlsym(handle, concat!($name, "\0").as_ptr().cast()) };
                if p.is_null() {
                    // SAFETY: the handle came from `dlopen` above and is not used again.
                    unsafe { libc::dlclose(handle) };
                    return Err(format!("{}: no symbol {}", path.display(), $name));
                }
                // SAFETY: the plugin defines the symbol with this signature (see
                // textpoke-plugin's C API, version API_VERSION).
                unsafe { std::mem::transmute::<*mut libc::c_void, $ty>(p) }
            }};
        }
        let version = sym!("tpp_api_version": extern "C" fn() -> u32);
        if version() != API_VERSION {
            // SAFETY: the handle came from `dlopen` above and is not used again.
            unsafe { libc::dlclose(handle) };
            return Err(format!(
                "{}: plugin API version {} (want {API_VERSION})",
                path.display(),
                version()
            ));
        }
        Ok(Plugin {
            handle,
            path: path.to_path_buf(),
            patcher: sym!("tpp_patcher": unsafe extern "C" fn(*mut bool) -> usize),
            key_count: sym!("tpp_key_count": extern "C" fn() -> usize),
            set: sym!("tpp_set": ErrFn2<usize, bool>),
            set_all: sym!("tpp_set_all": ErrFn<u64>),
            run: sym!("tpp_run": extern "C" fn(usize) -> usize),
            commit: sym!("tpp_commit": ErrFn2<u64, usize>),
            group_set: sym!("tpp_group_set": GroupSetFn),
            group_sites: sym!("tpp_group_sites": ErrFn2<usize, *mut usize>),
            group_run: sym!("tpp_group_run": extern "C" fn(usize) -> usize),
            call: sym!("tpp_call": extern "C" fn(u64) -> u64),
            retarget: sym!("tpp_retarget": ErrFn<usize>),
            double: sym!("tpp_double": extern "C" fn(u64) -> u64),
            alt: sym!("tpp_alt": extern "C" fn() -> u64),
            traps: sym!("tpp_traps_emulated": extern "C" fn() -> usize),
            imm: sym!("tpp_imm": extern "C" fn() -> u64),
            set_imm: sym!("tpp_set_imm": ErrFn<u64>),
        })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The process's patcher as this copy sees it, and whether it is this copy.
    pub fn patcher(&self) -> (usize, bool) {
        let mut me = false;
        // SAFETY: `me` is valid for a write.
        let id = unsafe { (self.patcher)(&mut me) };
        (id, me)
    }

    /// Number of keys.
    pub fn key_count(&self) -> usize {
        (self.key_count)()
    }

    fn checked(f: impl FnOnce(*mut u8, usize) -> i32) -> Result<(), String> {
        let mut buf = [0u8; 512];
        if f(buf.as_mut_ptr(), buf.len()) == 0 {
            Ok(())
        } else {
            Err(CStr::from_bytes_until_nul(&buf)
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default())
        }
    }

    /// Sets key `key`.
    pub fn set(&self, key: usize, on: bool) -> Result<(), String> {
        // SAFETY: the buffer is valid for `cap` bytes.
        Self::checked(|e, cap| unsafe { (self.set)(key, on, e, cap) })
    }

    /// Sets every key in one batch from the bits of `mask`.
    pub fn set_all(&self, mask: u64) -> Result<(), String> {
        // SAFETY: as above.
        Self::checked(|e, cap| unsafe { (self.set_all)(mask, e, cap) })
    }

    /// Runs every site of key `key`; how many took the enabled path.
    pub fn run(&self, key: usize) -> usize {
        (self.run)(key)
    }

    /// Sets every key from the bits of `mask` and, with `Some(n)`, retargets the static call to
    /// `x + n`, in one batch.
    pub fn commit(&self, mask: u64, target: Option<usize>) -> Result<(), String> {
        let target = match target {
            Some(0) => return Err("no target x + 0".into()),
            Some(n) => n,
            None => 0,
        };
        // SAFETY: as above.
        Self::checked(|e, cap| unsafe { (self.commit)(mask, target, e, cap) })
    }

    /// Sets the key of the benchmark group of `size` sites (see [`GROUP_SIZES`]) in a batch of
    /// its own; what the batch did.
    pub fn group_set(&self, size: usize, on: bool) -> Result<GroupStats, String> {
        let mut stats = [0usize; 3];
        // SAFETY: `stats` has room for three words; the buffer is valid for `cap` bytes.
        Self::checked(|e, cap| unsafe { (self.group_set)(size, on, stats.as_mut_ptr(), e, cap) })?;
        Ok(GroupStats {
            sites: stats[0],
            writes: stats[1],
            syncs: stats[2],
        })
    }

    /// How many sites textpoke's table lists for the key of the group of `size` sites.
    pub fn group_sites(&self, size: usize) -> Result<usize, String> {
        let mut n = 0usize;
        // SAFETY: `n` is valid for a write; the buffer is valid for `cap` bytes.
        Self::checked(|e, cap| unsafe { (self.group_sites)(size, &mut n, e, cap) })?;
        Ok(n)
    }

    /// Runs every site of the group of `size` sites once; how many took the enabled path
    /// (`None`: no such group).
    pub fn group_run(&self, size: usize) -> Option<usize> {
        match (self.group_run)(size) {
            usize::MAX => None,
            n => Some(n),
        }
    }

    /// Calls the plugin's static call.
    pub fn call(&self, x: u64) -> u64 {
        (self.call)(x)
    }

    /// Retargets the plugin's static call to `x + n`.
    pub fn retarget(&self, n: usize) -> Result<(), String> {
        // SAFETY: as above.
        Self::checked(|e, cap| unsafe { (self.retarget)(n, e, cap) })
    }

    /// Address of the plugin's `tpp_double` (`2 * x`), for another object's static call.
    pub fn double_fn(&self) -> extern "C" fn(u64) -> u64 {
        self.double
    }

    /// Runs the plugin's alternative site (1: default, 2: the SSE2 replacement).
    pub fn alt(&self) -> u64 {
        (self.alt)()
    }

    /// Traps the process's patcher has emulated, as this copy sees them.
    pub fn traps_emulated(&self) -> usize {
        (self.traps)()
    }

    /// Reads the plugin's immediate value (built as `0x1111_1111_1111_1111`).
    pub fn imm(&self) -> u64 {
        (self.imm)()
    }

    /// Sets the plugin's immediate value.
    pub fn set_imm(&self, value: u64) -> Result<(), String> {
        // SAFETY: as above.
        Self::checked(|e, cap| unsafe { (self.set_imm)(value, e, cap) })
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // SAFETY: the handle came from `dlopen` and is closed once.
        unsafe { libc::dlclose(self.handle) };
    }
}
