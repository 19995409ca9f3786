//! Loads copies of the `textpoke-plugin` cdylib, each from its own file so that every copy is a
//! distinct object with its own copy of textpoke, and calls its C API.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The plugin, as built for this fixture.
pub static PLUGIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/plugin.so"));

/// The plugin's C API version this fixture speaks.
pub const API_VERSION: u32 = 1;

type ErrFn<A> = unsafe extern "C" fn(A, *mut u8, usize) -> i32;

/// One loaded copy of the plugin. Unloaded (`dlclose`) on drop.
pub struct Plugin {
    handle: *mut libc::c_void,
    path: PathBuf,
    patcher: unsafe extern "C" fn(*mut bool) -> usize,
    key_count: extern "C" fn() -> usize,
    set: unsafe extern "C" fn(usize, bool, *mut u8, usize) -> i32,
    set_all: ErrFn<u64>,
    run: extern "C" fn(usize) -> usize,
    call: extern "C" fn(u64) -> u64,
    retarget: ErrFn<usize>,
    double: extern "C" fn(u64) -> u64,
    alt: extern "C" fn() -> u64,
    traps: extern "C" fn() -> usize,
}

// SAFETY: the plugin's functions are thread-safe (textpoke's API is), and the handle is only
// closed on drop.
unsafe impl Send for Plugin {}
// SAFETY: as above.
unsafe impl Sync for Plugin {}

/// A directory for this process's plugin files.
fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("textpoke-plugins-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
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
            ($name:literal) => {{
                // SAFETY: looking up a symbol in the handle we just opened.
                let p = unsafe { libc::dlsym(handle, concat!($name, "\0").as_ptr().cast()) };
                if p.is_null() {
                    return Err(format!("{}: no symbol {}", path.display(), $name));
                }
                // SAFETY: the plugin defines the symbol with the signature of the field it is
                // stored in (see textpoke-plugin's C API, version API_VERSION).
                #[allow(clippy::missing_transmute_annotations)] // the field's type names it
                unsafe {
                    std::mem::transmute::<*mut libc::c_void, _>(p)
                }
            }};
        }
        let version: extern "C" fn() -> u32 = sym!("tpp_api_version");
        if version() != API_VERSION {
            return Err(format!(
                "{}: plugin API version {} (want {API_VERSION})",
                path.display(),
                version()
            ));
        }
        Ok(Plugin {
            handle,
            path: path.to_path_buf(),
            patcher: sym!("tpp_patcher"),
            key_count: sym!("tpp_key_count"),
            set: sym!("tpp_set"),
            set_all: sym!("tpp_set_all"),
            run: sym!("tpp_run"),
            call: sym!("tpp_call"),
            retarget: sym!("tpp_retarget"),
            double: sym!("tpp_double"),
            alt: sym!("tpp_alt"),
            traps: sym!("tpp_traps_emulated"),
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
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // SAFETY: the handle came from `dlopen` and is closed once.
        unsafe { libc::dlclose(self.handle) };
    }
}
