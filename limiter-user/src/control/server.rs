//! The control socket server: accepts connections on a Unix socket, checks each peer's
//! credentials, reads newline-delimited JSON requests and answers each with one line.
//!
//! The server knows nothing about the daemon: a [`Handler`] turns requests into responses.
//! Handlers are synchronous (the daemon forwards each request to its engine thread and waits
//! for the answer), so the server runs them, and the JSON decoding of up to 4 MiB lines, on
//! tokio's blocking pool: the event loop only moves bytes, and a slow request, a slow engine
//! or a slow client never holds up the accept loop or another connection.

use std::{
    fs::{self, DirBuilder, Permissions},
    future::Future,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt,
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::timeout,
};
use tracing::{debug, error, info, warn};

use super::{
    access::Access,
    framing::{
        decode_request, encode_response, frame_reader, is_blank, op_name, read_frame, Frame,
    },
    protocol::{ErrorKind, Request, ResponseLine, MAX_REQUEST_BYTES},
};

/// Answers control requests. The daemon implements it by forwarding to its engine thread;
/// `Fn(Request) -> ResponseLine` closures implement it too (tests, tools).
pub trait Handler: Send + Sync + 'static {
    /// Called on a blocking-pool thread, possibly for several connections at once.
    fn handle(&self, request: Request) -> ResponseLine;
}

impl<F> Handler for F
where
    F: Fn(Request) -> ResponseLine + Send + Sync + 'static,
{
    fn handle(&self, request: Request) -> ResponseLine {
        self(request)
    }
}

/// How long and how many: what keeps one client from holding resources forever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A connection that sends no complete request line for this long is closed.
    pub idle_timeout: Duration,
    /// A client that does not take its response within this long is dropped.
    pub write_timeout: Duration,
    /// Connections served at once; more are told to retry and closed.
    pub max_connections: usize,
    /// On shutdown, how long requests in flight may take to be answered.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot create the control socket's directory {}: {source}; create it (mode 0755) or \
         set `socket` in the configuration to a path in a writable directory",
        dir.display()
    )]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect {}: {source}; check the permissions of its directory", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} exists and is not a socket, so glance-limiter will not remove it: move it away or \
         set `socket` in the configuration to another path",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error(
        "another daemon is running on {}: stop it (systemctl stop glance-limiter) before \
         starting this one, or give this one another `socket` in its configuration",
        path.display()
    )]
    AlreadyRunning { path: PathBuf },
    #[error(
        "cannot tell whether a daemon listens on {}: {source}; remove the file if no \
         glance-limiter daemon is running, and start again",
        path.display()
    )]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot remove the stale control socket {}: {source}; remove it by hand and start again",
        path.display()
    )]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot listen on {}: {source}; check that its directory is writable and that the path \
         is shorter than 108 bytes",
        path.display()
    )]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot set the owner group or mode of {}: {source}; the daemon must run as root, or \
         as a member of socket_group",
        path.display()
    )]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the control server's event loop: {0}")]
    Runtime(#[source] io::Error),
}

/// A bound control socket, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created, so that shutdown removes our file
    /// and never a successor's.
    identity: (u64, u64),
    access: Access,
    limits: Limits,
}

impl Server {
    /// Creates the socket: the parent directory if missing (0755), replacing a stale socket
    /// file nobody listens on, then binds and sets the file's group and mode (0660 with a
    /// socket group, else 0600). Fails if a live daemon answers on `path`.
    pub fn bind(path: impl AsRef<Path>, access: Access) -> Result<Server, ServerError> {
        let path = path.as_ref().to_path_buf();
        create_parent(&path)?;
        remove_stale_socket(&path)?;
        let listener =
            std::os::unix::net::UnixListener::bind(&path).map_err(|source| ServerError::Bind {
                path: path.clone(),
                source,
            })?;
        let prepared = set_permissions(&path, &access)
            .and_then(|()| listener.set_nonblocking(true))
            .and_then(|()| fs::symlink_metadata(&path));
        let metadata = match prepared {
            Ok(metadata) => metadata,
            Err(source) => {
                let _ = fs::remove_file(&path);
                return Err(ServerError::Permissions { path, source });
            }
        };
        info!(
            socket = %path.display(),
            mode = format!("{:o}", access.socket_mode()),
            group = access.group.as_ref().map(|g| g.name.as_str()),
            "control socket listening"
        );
        Ok(Server {
            listener,
            path,
            identity: (metadata.dev(), metadata.ino()),
            access,
            limits: Limits::default(),
        })
    }

    pub fn with_limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown` completes, then lets requests in flight finish
    /// (up to [`Limits::shutdown_grace`]) and removes the socket file. Must run inside a tokio
    /// runtime with IO and time enabled.
    pub async fn run(
        self,
        handler: Arc<dyn Handler>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let listener = UnixListener::from_std(self.listener).map_err(ServerError::Runtime)?;
        let context = Arc::new(Context {
            slots: Arc::new(Semaphore::new(self.limits.max_connections)),
            access: self.access,
            limits: self.limits,
            handler,
        });
        let (closing_tx, closing) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(finished) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = finished {
                        error!(error = %e, "a control connection task failed");
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if let Some(admitted) = admit(stream, &context) {
                            let closing = closing.clone();
                            connections.spawn(serve_connection(admitted, context.clone(), closing));
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a control connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }

        closing_tx.send_replace(true);
        let drained = timeout(context.limits.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("control connections still busy at shutdown were closed");
            connections.shutdown().await;
        }
        drop(listener);
        remove_if_ours(&self.path, self.identity);
        Ok(())
    }
}

/// [`Server::bind`] then [`Server::run`].
pub async fn serve(
    path: impl AsRef<Path>,
    access: Access,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::bind(path, access)?.run(handler, shutdown).await
}

/// A server on its own thread and single-threaded runtime, for a caller that is not async
/// (the daemon). Dropping it stops the server and removes the socket file.
#[derive(Debug)]
pub struct ServerThread {
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Binds now (so the caller sees every startup error) and serves on a new thread.
pub fn spawn(
    path: impl AsRef<Path>,
    access: Access,
    limits: Limits,
    handler: Arc<dyn Handler>,
) -> Result<ServerThread, ServerError> {
    let server = Server::bind(path, access)?.with_limits(limits);
    let path = server.path().to_path_buf();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let served = runtime.block_on(server.run(handler, async {
                // A dropped sender stops the server too.
                let _ = stopped.await;
            }));
            if let Err(e) = served {
                error!(error = %e, "the control server stopped");
            }
            // A handler stuck in the engine must not keep the process from exiting.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(ServerError::Runtime)?;
    Ok(ServerThread {
        path,
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl ServerThread {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, answers requests in flight, removes the socket file, and waits.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("the control server thread panicked");
            }
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What every connection task shares.
struct Context {
    access: Access,
    limits: Limits,
    handler: Arc<dyn Handler>,
    /// One permit per connection being served.
    slots: Arc<Semaphore>,
}

struct Admitted {
    stream: UnixStream,
    _slot: OwnedSemaphorePermit,
    peer: String,
}

/// Checks the peer and takes a connection slot, or answers with one error line and closes.
/// Refusals are written here, without a task, so refused peers cost nothing to keep.
fn admit(stream: UnixStream, context: &Context) -> Option<Admitted> {
    let credentials = match stream.peer_cred() {
        Ok(credentials) => credentials,
        Err(e) => {
            warn!(error = %e, "cannot read a control peer's credentials; closing");
            return None;
        }
    };
    let (uid, gid, pid) = (credentials.uid(), credentials.gid(), credentials.pid());
    let peer = match pid {
        Some(pid) => format!("uid {uid} pid {pid}"),
        None => format!("uid {uid}"),
    };
    if !context.access.permits_connection(uid, gid, pid) {
        warn!(
            uid,
            gid, pid, "control connection refused: not root and not in the socket group"
        );
        refuse(stream, &forbidden(uid, &context.access));
        return None;
    }
    let Ok(slot) = context.slots.clone().try_acquire_owned() else {
        let limit = context.limits.max_connections;
        warn!(limit, "control connection refused: too many connections");
        refuse(
            stream,
            &ResponseLine::error(
                ErrorKind::Operational,
                format!(
                    "the daemon is already serving {limit} control connections; retry in a \
                     moment"
                ),
            ),
        );
        return None;
    };
    debug!(%peer, "control connection accepted");
    Some(Admitted {
        stream,
        _slot: slot,
        peer,
    })
}

fn forbidden(uid: u32, access: &Access) -> ResponseLine {
    let who = match &access.group {
        Some(group) => format!("root or a member of the socket group `{}`", group.name),
        None => "root (no socket_group is configured)".to_string(),
    };
    ResponseLine::error(
        ErrorKind::Forbidden,
        format!("permission denied for uid {uid}: run as {who}"),
    )
}

/// Best effort: a fresh socket's buffer takes a short line without blocking; a peer that is
/// gone simply misses it.
fn refuse(stream: UnixStream, response: &ResponseLine) {
    if let Ok(mut stream) = stream.into_std() {
        let _ = stream.write(&encode_response(response));
    }
}

/// Reads request lines and answers each, in order, until the peer closes, idles, sends a
/// line over the limit, or the server shuts down.
async fn serve_connection(
    admitted: Admitted,
    context: Arc<Context>,
    mut closing: watch::Receiver<bool>,
) {
    let Admitted {
        stream,
        peer,
        _slot,
    } = admitted;
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = frame_reader(read_half, MAX_REQUEST_BYTES);
    let limits = &context.limits;
    loop {
        let frame = tokio::select! {
            frame = timeout(limits.idle_timeout, read_frame(&mut reader)) => frame,
            _ = closing.wait_for(|closing| *closing) => return,
        };
        let response = match frame {
            Err(_) => {
                debug!(%peer, "control connection idle; closing");
                return;
            }
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "control connection failed");
                return;
            }
            Ok(Ok(Frame::End)) => return,
            Ok(Ok(Frame::TooLong)) => {
                let response = encode_response(&ResponseLine::error(
                    ErrorKind::BadInput,
                    format!(
                        "the request line is longer than {MAX_REQUEST_BYTES} bytes; split the \
                         prefixes into several smaller requests"
                    ),
                ));
                // The rest of the line is unread, so the connection cannot continue.
                let _ = send(&mut write_half, &response, limits.write_timeout).await;
                return;
            }
            Ok(Ok(Frame::Line(line))) if is_blank(&line) => continue,
            Ok(Ok(Frame::Line(line))) => answer(line, context.handler.clone()).await,
        };
        if let Err(e) = send(&mut write_half, &response, limits.write_timeout).await {
            debug!(%peer, error = %e, "cannot send a control response; closing");
            return;
        }
    }
}

/// Decodes and handles one line on the blocking pool; returns the encoded response.
async fn answer(line: Vec<u8>, handler: Arc<dyn Handler>) -> Vec<u8> {
    let handled = tokio::task::spawn_blocking(move || {
        let response = match decode_request(&line) {
            Ok(request) => {
                debug!(op = op_name(&request), "control request");
                handler.handle(request)
            }
            Err(rejection) => ResponseLine::error(rejection.kind, rejection.message),
        };
        encode_response(&response)
    })
    .await;
    handled.unwrap_or_else(|e| {
        error!(error = %e, "the control handler failed");
        encode_response(&ResponseLine::error(
            ErrorKind::Operational,
            "the daemon failed while handling this request (a bug; its log has the details); \
             nothing is known to have changed: check with `limiter list` and retry",
        ))
    })
}

async fn send(writer: &mut OwnedWriteHalf, bytes: &[u8], limit: Duration) -> io::Result<()> {
    match timeout(limit, writer.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read its response",
        )),
    }
}

fn create_parent(path: &Path) -> Result<(), ServerError> {
    let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    let created = DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        // The umask may have narrowed the mode; group members must be able to reach the socket.
        .and_then(|()| fs::set_permissions(dir, Permissions::from_mode(0o755)));
    created.map_err(|source| ServerError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Removes a socket file that nobody listens on (left by a daemon that was killed). Anything
/// else at the path is left alone: a live daemon's socket, or a file that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = %path.display(), "removing a stale control socket");
            fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ServerError::Probe {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn set_permissions(path: &Path, access: &Access) -> io::Result<()> {
    if let Some(group) = &access.group {
        std::os::unix::fs::chown(path, None, Some(group.gid))?;
    }
    fs::set_permissions(path, Permissions::from_mode(access.socket_mode()))
}

fn remove_if_ours(path: &Path, identity: (u64, u64)) {
    match fs::symlink_metadata(path) {
        Ok(metadata) if (metadata.dev(), metadata.ino()) == identity => {
            if let Err(e) = fs::remove_file(path) {
                warn!(socket = %path.display(), error = %e, "cannot remove the control socket");
            }
        }
        _ => debug!(socket = %path.display(), "the control socket file is gone or replaced"),
    }
}
