//! The control socket: a Unix stream socket named by process id, and who may use it.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Mutex;

/// The socket file to remove at exit, if the socket has one.
static SOCKET_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

extern "C" fn remove_socket_file() {
    if let Some(path) = SOCKET_FILE.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_file(path);
    }
}

/// Where process `pid`'s control socket is: `DIR/textpoke-PID.sock` for a runtime directory
/// `DIR`, else `@textpoke-PID` in the abstract namespace.
pub fn control_socket_name(pid: u32, runtime_dir: Option<&std::path::Path>) -> String {
    match runtime_dir {
        Some(dir) => dir
            .join(format!("textpoke-{pid}.sock"))
            .display()
            .to_string(),
        None => format!("@textpoke-{pid}"),
    }
}

/// Binds this process's control socket: in `$XDG_RUNTIME_DIR` when that is a directory the
/// socket can be made in (the file is made readable and writable by its owner only, and
/// removed at exit), else in the abstract namespace, where clients look next. Returns the
/// listener, non-blocking, and its name.
pub fn bind_control_socket() -> io::Result<(UnixListener, String)> {
    let pid = std::process::id();
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir());
    let in_dir = dir.as_deref().and_then(|d| {
        let name = control_socket_name(pid, Some(d));
        bind_file(PathBuf::from(&name)).ok().map(|l| (l, name))
    });
    let (listener, name) = match in_dir {
        Some(bound) => bound,
        // No usable runtime directory (unset, read-only, a path too long for a socket).
        None => {
            let name = control_socket_name(pid, None);
            let addr = SocketAddr::from_abstract_name(&name[1..])?;
            (UnixListener::bind_addr(&addr)?, name)
        }
    };
    listener.set_nonblocking(true)?;
    Ok((listener, name))
}

fn bind_file(path: PathBuf) -> io::Result<UnixListener> {
    // A file left by an earlier process with this id (pids are reused) is stale: only this
    // process can serve this name.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    let mut file = SOCKET_FILE.lock().unwrap_or_else(|e| e.into_inner());
    if file.replace(path).is_none() {
        super::at_exit(remove_socket_file);
    }
    Ok(listener)
}

/// Connects to a control socket named as [`control_socket_name`] names it.
pub fn connect_control_socket(name: &str) -> io::Result<UnixStream> {
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            UnixStream::connect_addr(&SocketAddr::from_abstract_name(abstract_name)?)
        }
        None => UnixStream::connect(name),
    }
}

/// The user id of the process at the other end of `stream`, from the kernel (`SO_PEERCRED`),
/// or why it is not known.
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(stream)?.uid.as_raw())
}

/// Whether a peer running as `uid` may control this process: the same effective user, or
/// root.
pub fn may_control(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Blocks, in the calling thread, every signal but those the kernel raises for faults and
/// those textpoke's engine sends or meets (`keep`): a program's signals (SIGINT, timers, its
/// `sigwait` thread's) must not be delivered to a thread of textpoke's.
pub fn block_program_signals(keep: &[i32]) {
    // SAFETY: `sigset_t` is plain data, filled by `sigfillset` before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid `sigset_t`; the calls only edit it and this thread's mask.
    unsafe {
        libc::sigfillset(&mut set);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGABRT,
        ]
        .iter()
        .chain(keep)
        {
            libc::sigdelset(&mut set, *sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}
