//! The control server: one thread of textpoke's, one Unix socket, one request per connection.
//!
//! Every socket is non-blocking and every client has a deadline, so a client that connects and
//! never speaks, or never reads its reply, holds nothing but its own connection until the
//! deadline closes it. Requests run one at a time on this thread; no lock is held while a
//! client is read or written.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::os;

/// Connections served at once; more are told so and closed.
const MAX_CLIENTS: usize = 128;
/// Longest request line.
const MAX_REQUEST: usize = 4096;
/// How long a client has to send its request and read its reply.
const DEADLINE: Duration = Duration::from_secs(5);

/// (process id, socket name) of the server this copy started: a child after `fork` has no
/// server thread, and serves anew under its own id.
static SERVING: Mutex<Option<(u32, String)>> = Mutex::new(None);

/// Starts the server thread, once per process; returns the socket's name.
pub(crate) fn start() -> Result<String, String> {
    let mut serving = SERVING.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some((p, name)) = &*serving
        && *p == pid
    {
        return Ok(name.clone());
    }
    let (listener, name) = os::bind_control_socket().map_err(|e| {
        format!(
            "cannot bind the control socket {}: {e}",
            os::control_socket_name(
                pid,
                std::env::var_os("XDG_RUNTIME_DIR")
                    .as_deref()
                    .map(std::path::Path::new)
            )
        )
    })?;
    std::thread::Builder::new()
        .name("textpoke-ctl".into())
        .spawn(move || run(listener))
        .map_err(|e| format!("cannot start the control thread: {e}"))?;
    *serving = Some((pid, name.clone()));
    Ok(name)
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    deadline: Instant,
}

impl Client {
    fn replying(&self) -> bool {
        !self.output.is_empty()
    }

    /// Reads what has arrived; answers once the request line is complete. False when the
    /// connection is done with.
    fn read(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    // The client closed its end: what it sent is the request, if anything.
                    if self.input.is_empty() {
                        return false;
                    }
                    self.answer();
                    return self.write();
                }
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    if let Some(end) = self.input.iter().position(|&b| b == b'\n') {
                        self.input.truncate(end);
                        self.answer();
                        return self.write();
                    }
                    if self.input.len() > MAX_REQUEST {
                        self.refuse(&format!(
                            "a request is one line of at most {MAX_REQUEST} bytes"
                        ));
                        return self.write();
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }

    fn answer(&mut self) {
        let reply = match std::str::from_utf8(&self.input) {
            Ok(line) => super::request(line),
            Err(_) => error_json("the request is not UTF-8"),
        };
        self.output = reply.into_bytes();
        self.output.push(b'\n');
    }

    fn refuse(&mut self, why: &str) {
        self.output = error_json(why).into_bytes();
        self.output.push(b'\n');
    }

    /// Writes what the socket takes. False once everything is written (or it failed).
    fn write(&mut self) -> bool {
        while self.sent < self.output.len() {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(0) => return false,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

/// A reply that carries only an error, in the shape of [`super::request`]'s.
fn error_json(why: &str) -> String {
    super::reply("", false, 0, &[why.to_owned()], &[])
}

/// Tells a client it is turned away, if its socket takes the line at once, and closes it.
fn turn_away(mut stream: UnixStream, why: &str) {
    let mut line = error_json(why);
    line.push('\n');
    let _ = stream.write(line.as_bytes());
}

fn run(listener: UnixListener) {
    os::block_program_signals(&[os::settle_signal()]);
    let mut clients: Vec<Client> = Vec::new();
    loop {
        let now = Instant::now();
        clients.retain(|c| c.deadline > now);
        let wait = clients
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(60));
        let ready: Vec<PollFlags> = {
            let mut fds = Vec::with_capacity(clients.len() + 1);
            fds.push(PollFd::new(&listener, PollFlags::IN));
            for c in &clients {
                let want = if c.replying() {
                    PollFlags::OUT
                } else {
                    PollFlags::IN
                };
                fds.push(PollFd::new(&c.stream, want));
            }
            let timeout = Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            if poll(&mut fds, Some(&timeout)).is_err() {
                // EINTR (a signal we do not block) or ENOMEM: look again, without spinning on
                // an error that persists.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            fds.iter().map(PollFd::revents).collect()
        };
        let mut keep = Vec::with_capacity(clients.len());
        for (mut c, flags) in clients.drain(..).zip(&ready[1..]) {
            let open = if flags.is_empty() {
                true
            } else if c.replying() {
                c.write()
            } else {
                c.read()
            };
            if open {
                keep.push(c);
            }
        }
        clients = keep;
        if !ready[0].is_empty() {
            accept_all(&listener, &mut clients);
        }
    }
}

fn accept_all(listener: &UnixListener, clients: &mut Vec<Client>) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // EMFILE, ENOBUFS...: the connection stays queued and the listener readable, so
            // pause rather than spin until descriptors free up.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        match os::peer_uid(&stream) {
            Ok(uid) if os::may_control(uid) => {}
            Ok(uid) => {
                turn_away(
                    stream,
                    &format!(
                        "refused: uid {uid} may not control this process (only its own user \
                         or root may)"
                    ),
                );
                continue;
            }
            Err(e) => {
                turn_away(
                    stream,
                    &format!("refused: the peer's credentials are unknown: {e}"),
                );
                continue;
            }
        }
        if clients.len() >= MAX_CLIENTS {
            turn_away(
                stream,
                &format!("busy: {MAX_CLIENTS} clients are connected"),
            );
            continue;
        }
        clients.push(Client {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            deadline: Instant::now() + DEADLINE,
        });
    }
}
