//! The qtoken engine: descriptors, tokens, and waiting.
//!
//! One [`Engine`] drives one backend. Every I/O call allocates a token, hands
//! the request to the backend and returns; the backend reports outcomes
//! (immediately or from `poll`), and `wait*` polls until the wanted token is
//! done. [`crate::LibOs`] keeps one engine per thread (each tagged with
//! its shard number) and routes every call to the right one.

pub mod handles;
pub mod queue;
pub mod token;

use crate::backend::{Backend, Completions, OpId, Outcome, SockType};
use crate::buffer::Buffer;
use crate::error::{fail, Error, Result};
use handles::HandleTable;
use queue::{Phase, Queue, QueueTable};
use std::net::{Shutdown, SocketAddrV4};
use std::os::fd::RawFd;
use token::{OpKind, TokenTable};

/// A queue token: names one asynchronous operation.
pub type QToken = u64;

/// Engines a process can have at once: one per thread (see
/// [`crate::LibOs`]), told apart by a tag in their descriptors, tokens and
/// lent-buffer handles.
pub const MAX_SHARDS: usize = 128;

/// The bit where the shard tag starts in a descriptor and in a token's low
/// half; the slot index takes the bits below it.
pub const SHARD_SHIFT: u32 = 24;

/// The tag of shard `shard`, as it sits in a descriptor or token.
pub(crate) fn shard_tag(shard: usize) -> u32 {
    assert!(shard < MAX_SHARDS, "shard {shard} out of range");
    (shard as u32) << SHARD_SHIFT
}

/// The shard whose engine issued descriptor `qd` (any number maps to a
/// shard; that engine refuses a number it did not issue).
#[inline]
pub fn shard_of_qd(qd: QDesc) -> usize {
    ((qd as u32) >> SHARD_SHIFT) as usize & (MAX_SHARDS - 1)
}

/// The shard whose engine issued token `qt`.
#[inline]
pub fn shard_of_token(qt: QToken) -> usize {
    ((qt as u32) >> SHARD_SHIFT) as usize & (MAX_SHARDS - 1)
}

/// A queue descriptor.
pub type QDesc = i32;

/// What a finished operation produced.
#[derive(Debug)]
pub enum QValue {
    /// The pushed bytes were handed to the device.
    Push,
    /// Received data; `from` is the sender on datagram sockets. A zero-length
    /// buffer on a stream socket is end of file (the peer closed).
    Pop {
        /// The message (empty: end of file on a stream socket).
        buf: Buffer,
        /// The sender, on datagram sockets.
        from: Option<SocketAddrV4>,
    },
    /// A new connection, with its own descriptor.
    Accept {
        /// The new connection's descriptor.
        qd: QDesc,
        /// Who connected.
        peer: SocketAddrV4,
    },
    /// The connection is established (or the default peer is set).
    Connect,
    /// The operation failed with this positive errno.
    Failed(i32),
}

/// A finished operation.
#[derive(Debug)]
pub struct QResult {
    /// The descriptor the operation ran on.
    pub qd: QDesc,
    /// The operation's token.
    pub qt: QToken,
    /// What it produced.
    pub value: QValue,
}

impl QResult {
    /// The errno of a failed operation, or 0.
    pub fn errno(&self) -> i32 {
        match self.value {
            QValue::Failed(e) => e,
            _ => 0,
        }
    }
}

/// The engine proper. Not thread-safe by itself; see [`crate::LibOs`].
pub struct Engine {
    backend: Box<dyn Backend>,
    queues: QueueTable,
    tokens: TokenTable<QValue>,
    out: Completions,
    /// Buffers lent to C code (`sga_buf` handles).
    pub(crate) handles: HandleTable,
    /// Completions applied since the last `take_fresh`.
    fresh: usize,
    /// Which of the process's engines this is (see [`MAX_SHARDS`]).
    shard: usize,
}

impl Engine {
    /// An engine over `backend`, with no descriptors yet.
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self::with_shard(backend, 0)
    }

    /// An engine over `backend` whose descriptors, tokens and handles carry
    /// the tag of shard `shard` (below [`MAX_SHARDS`]).
    pub fn with_shard(backend: Box<dyn Backend>, shard: usize) -> Self {
        Engine {
            backend,
            queues: QueueTable::with_shard(shard),
            tokens: TokenTable::with_shard(shard),
            out: Completions::default(),
            handles: HandleTable::with_shard(shard),
            fresh: 0,
            shard,
        }
    }

    /// The shard this engine is (0 for [`Engine::new`]).
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The backend's name.
    pub fn libos_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Creates a socket. `ty` may carry SOCK_NONBLOCK/SOCK_CLOEXEC, which are
    /// meaningless here and ignored.
    pub fn socket(&mut self, domain: i32, ty: i32, protocol: i32) -> Result<QDesc> {
        if domain != libc::AF_INET {
            return fail(libc::EAFNOSUPPORT, "only AF_INET sockets are supported");
        }
        let ty = match (ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC), protocol) {
            (libc::SOCK_STREAM, 0 | libc::IPPROTO_TCP) => SockType::Stream,
            (libc::SOCK_DGRAM, 0 | libc::IPPROTO_UDP) => SockType::Datagram,
            (libc::SOCK_STREAM | libc::SOCK_DGRAM, _) => {
                return fail(libc::EPROTONOSUPPORT, "protocol does not match the socket type")
            }
            _ => return fail(libc::EPROTONOSUPPORT, "only SOCK_STREAM and SOCK_DGRAM are supported"),
        };
        self.open(ty)
    }

    /// Creates a socket of a known type.
    pub fn open(&mut self, ty: SockType) -> Result<QDesc> {
        let sock = self.backend.socket(ty)?;
        match self.queues.insert(Queue::new(sock, ty)) {
            Ok(qd) => Ok(qd),
            Err(e) => {
                let _ = self.backend.close(sock, &mut self.out);
                Err(e)
            }
        }
    }

    /// Binds a descriptor to a local address (port 0: the backend picks one).
    pub fn bind(&mut self, qd: QDesc, addr: SocketAddrV4) -> Result<()> {
        let q = self.queues.get(qd)?;
        q.check_bind()?;
        let local = self.backend.bind(q.sock, addr)?;
        self.queues.get_mut(qd)?.local = Some(local);
        Ok(())
    }

    /// The address a socket is bound to (after bind, connect or accept).
    pub fn local_addr(&self, qd: QDesc) -> Result<Option<SocketAddrV4>> {
        Ok(self.queues.get(qd)?.local)
    }

    /// Makes a bound stream descriptor listen; `backlog` is clamped to 1..=SOMAXCONN.
    pub fn listen(&mut self, qd: QDesc, backlog: i32) -> Result<()> {
        let q = self.queues.get(qd)?;
        q.check_listen()?;
        self.backend.listen(q.sock, backlog.clamp(1, libc::SOMAXCONN))?;
        self.queues.get_mut(qd)?.phase = Phase::Listening;
        Ok(())
    }

    /// Starts accepting one connection on a listening descriptor.
    pub fn accept(&mut self, qd: QDesc) -> Result<QToken> {
        let q = self.queues.get(qd)?;
        q.check_accept()?;
        let sock = q.sock;
        let op = self.tokens.issue(qd, OpKind::Accept);
        let r = self.backend.accept(sock, op, &mut self.out);
        self.started(op, r)
    }

    /// Starts connecting a stream descriptor, or sets a datagram descriptor's default peer.
    pub fn connect(&mut self, qd: QDesc, to: SocketAddrV4) -> Result<QToken> {
        let q = self.queues.get(qd)?;
        q.check_connect()?;
        if to.ip().is_unspecified() || to.port() == 0 {
            return fail(libc::EINVAL, "cannot connect to a zero address or port");
        }
        let (sock, ty) = (q.sock, q.ty);
        let op = self.tokens.issue(qd, OpKind::Connect);
        let q = self.queues.get_mut(qd)?;
        let (old_phase, old_peer) = (q.phase, q.peer);
        q.peer = Some(to);
        if ty == SockType::Stream {
            q.phase = Phase::Connecting;
        }
        let r = self.backend.connect(sock, to, op, &mut self.out);
        if r.is_err() {
            let q = self.queues.get_mut(qd)?;
            (q.phase, q.peer) = (old_phase, old_peer);
        }
        self.started(op, r)
    }

    /// Pushes `buf` (the whole view) on a connected socket, or to `to` on a
    /// datagram socket.
    #[inline]
    pub fn push(&mut self, qd: QDesc, buf: Buffer, to: Option<SocketAddrV4>) -> Result<QToken> {
        let q = self.queues.get(qd)?;
        if to.is_some_and(|a| a.ip().is_unspecified() || a.port() == 0) {
            return fail(libc::EINVAL, "cannot push to a zero address or port");
        }
        let to = q.push_target(to)?;
        if q.shut_wr {
            return fail(libc::EPIPE, "socket is shut down for writing");
        }
        if buf.is_empty() {
            return fail(libc::EINVAL, "cannot push zero bytes");
        }
        if buf.len() > u32::MAX as usize {
            return fail(libc::EINVAL, "segment longer than 4 GiB");
        }
        let sock = q.sock;
        let op = self.tokens.issue(qd, OpKind::Push);
        let r = self.backend.push(sock, buf, to, op, &mut self.out);
        self.started(op, r)
    }

    /// Starts receiving one message on a descriptor.
    #[inline]
    pub fn pop(&mut self, qd: QDesc) -> Result<QToken> {
        let q = self.queues.get(qd)?;
        q.check_pop()?;
        if q.shut_rd && q.ty == SockType::Stream {
            return Ok(self.pop_shut(qd));
        }
        let sock = q.sock;
        let op = self.tokens.issue(qd, OpKind::Pop);
        let r = self.backend.pop(sock, op, &mut self.out);
        self.started(op, r)
    }

    /// A pop on a stream shut for reading: end of file at once.
    #[cold]
    fn pop_shut(&mut self, qd: QDesc) -> QToken {
        let op = self.tokens.issue(qd, OpKind::Pop);
        if self.tokens.complete(op, QValue::Pop { buf: Buffer::heap(0), from: None }) {
            self.fresh += 1;
        }
        op
    }

    /// Shuts down one or both directions of a connected socket, as
    /// shutdown(2). ENOTCONN unless the socket is connected (stream) or has
    /// a default peer (datagram). After `Write`, pushes fail with EPIPE and a
    /// stream's peer gets end of file once what was pushed before is out;
    /// this end can still pop. After `Read`, a stream's new pops end at once
    /// with end of file (pops already pending finish as the libOS decides:
    /// see [`Backend::shutdown`]); a datagram socket's pops are unaffected,
    /// as in Linux. Shutting down a direction again does nothing.
    pub fn shutdown(&mut self, qd: QDesc, how: Shutdown) -> Result<()> {
        let q = self.queues.get(qd)?;
        q.check_shutdown()?;
        let (rd, wr) = match how {
            Shutdown::Read => (true, false),
            Shutdown::Write => (false, true),
            Shutdown::Both => (true, true),
        };
        // Only what changes goes to the backend: a second FIN is never sent.
        let how = match (rd && !q.shut_rd, wr && !q.shut_wr) {
            (false, false) => return Ok(()),
            (true, false) => Shutdown::Read,
            (false, true) => Shutdown::Write,
            (true, true) => Shutdown::Both,
        };
        let sock = q.sock;
        let r = self.backend.shutdown(sock, how, &mut self.out);
        self.apply();
        r?;
        let q = self.queues.get_mut(qd)?;
        q.shut_rd |= rd;
        q.shut_wr |= wr;
        Ok(())
    }

    /// Closes a descriptor; its pending operations finish with ECANCELED.
    pub fn close(&mut self, qd: QDesc) -> Result<()> {
        let q = self.queues.remove(qd)?;
        let r = self.backend.close(q.sock, &mut self.out);
        self.apply();
        r
    }

    /// Sets a socket option, passed to the backend as the raw bytes of its value.
    pub fn setsockopt(&mut self, qd: QDesc, level: i32, name: i32, val: &[u8]) -> Result<()> {
        let sock = self.queues.get(qd)?.sock;
        self.backend.setsockopt(sock, level, name, val)
    }

    /// Reads a socket option into `val`; returns the bytes written.
    pub fn getsockopt(&mut self, qd: QDesc, level: i32, name: i32, val: &mut [u8]) -> Result<usize> {
        let sock = self.queues.get(qd)?.sock;
        self.backend.getsockopt(sock, level, name, val)
    }

    /// The peer of a connected descriptor (ENOTCONN otherwise).
    pub fn peer_addr(&mut self, qd: QDesc) -> Result<SocketAddrV4> {
        let q = self.queues.get(qd)?;
        if q.phase != Phase::Connected {
            return fail(libc::ENOTCONN, "socket is not connected");
        }
        if q.ty == SockType::Datagram {
            // The default peer set by connect; every libOS agrees on it.
            return q.peer.ok_or(Error::new(libc::ENOTCONN, "no default peer"));
        }
        let sock = q.sock;
        self.backend.peer_addr(sock)
    }

    /// The largest datagram `qd` can push (EINVAL on a stream socket).
    pub fn max_datagram(&mut self, qd: QDesc) -> Result<usize> {
        let q = self.queues.get(qd)?;
        if q.ty != SockType::Datagram {
            return fail(libc::EINVAL, "not a datagram socket");
        }
        let sock = q.sock;
        Ok(self.backend.max_datagram(sock))
    }

    /// Memory the libOS can push without copying.
    pub fn alloc(&mut self, len: usize) -> Result<Buffer> {
        self.backend.alloc(len)
    }

    /// Moves the backend forward and applies what finished.
    #[inline]
    pub fn poll(&mut self) {
        self.backend.poll(&mut self.out);
        self.apply();
    }

    /// Arms the backend's wake-up and returns its descriptor.
    pub fn arm(&mut self) -> Option<RawFd> {
        self.backend.arm()
    }

    /// See [`Backend::next_deadline`].
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        self.backend.next_deadline()
    }

    /// See [`Backend::set_sleeping`].
    pub fn set_sleeping(&mut self, sleeping: bool) {
        self.backend.set_sleeping(sleeping)
    }

    /// Takes a finished operation; `Err(EINVAL)` if `qt` is not a live token,
    /// `Ok(None)` if it is still pending.
    #[inline]
    pub fn take(&mut self, qt: QToken) -> Result<Option<QResult>> {
        self.take_ready(qt).transpose()
    }

    /// [`Engine::take`] in the shape a wait wants: `Some` once the wait for
    /// `qt` is over (its result, or EINVAL if `qt` is not a live token),
    /// `None` while it is pending.
    #[inline]
    pub(crate) fn take_ready(&mut self, qt: QToken) -> Option<Result<QResult>> {
        match self.tokens.take(qt) {
            Some(f) => Some(Ok(QResult { qd: f.qd, qt, value: f.outcome })),
            None if self.tokens.is_live(qt) => None,
            None => Some(fail(libc::EINVAL, "not a live queue token (stale, consumed or forged)")),
        }
    }

    /// True if `qt` names a live (pending or finished) operation.
    pub fn is_live(&self, qt: QToken) -> bool {
        self.tokens.is_live(qt)
    }

    /// True if `qt` is finished and not yet taken.
    pub fn is_done(&self, qt: QToken) -> bool {
        self.tokens.is_done(qt)
    }

    /// Takes the oldest finished operation not yet taken.
    pub fn take_next(&mut self) -> Option<QResult> {
        self.tokens.take_next().map(|f| QResult { qd: f.qd, qt: f.token, value: f.outcome })
    }

    /// True if any finished operation waits to be taken.
    pub fn any_done(&mut self) -> bool {
        self.tokens.any_done()
    }

    /// Operations issued and not yet finished.
    pub fn pending(&self) -> usize {
        self.tokens.pending()
    }

    /// Open descriptors.
    pub fn open_descriptors(&self) -> Vec<QDesc> {
        self.queues.open().collect()
    }

    /// Number of completions applied since the last call.
    pub(crate) fn take_fresh(&mut self) -> usize {
        std::mem::take(&mut self.fresh)
    }

    /// Finishes issuing `op`: a refused request frees its token.
    #[inline]
    fn started(&mut self, op: OpId, r: Result<()>) -> Result<QToken> {
        match r {
            Ok(()) => {
                self.apply();
                Ok(op)
            }
            Err(e) => Err(self.refused(op, e)),
        }
    }

    /// The backend refused to start `op`: frees its token and returns `e`.
    #[cold]
    fn refused(&mut self, op: OpId, e: Error) -> Error {
        // A backend that refuses must not also have completed the op.
        self.out.0.retain(|(o, _)| *o != op);
        self.tokens.complete(op, QValue::Failed(e.errno()));
        let _ = self.tokens.take(op);
        self.apply();
        e
    }

    /// Turns backend outcomes into results, updating socket state.
    #[inline]
    fn apply(&mut self) {
        // Half the calls (an issue that completes later, a poll that finds
        // nothing) have nothing to apply: decided here, without a call.
        if !self.out.0.is_empty() {
            self.apply_some();
        }
    }

    /// [`Engine::apply`] once there is something to apply.
    #[inline(never)]
    fn apply_some(&mut self) {
        let Engine { backend, queues, tokens, out, fresh, .. } = self;
        match out.0.len() {
            0 => {}
            // The common case, one completion per call or poll: no drain.
            1 => {
                if let Some((op, outcome)) = out.0.pop() {
                    finish(backend.as_mut(), queues, tokens, fresh, op, outcome);
                }
            }
            // In the order reported; the vector keeps its capacity.
            _ => {
                for (op, outcome) in out.0.drain(..) {
                    finish(backend.as_mut(), queues, tokens, fresh, op, outcome);
                }
            }
        }
    }
}

/// Records one backend outcome as its operation's result and counts it in
/// `fresh`.
#[inline]
fn finish(
    backend: &mut dyn Backend,
    queues: &mut QueueTable,
    tokens: &mut TokenTable<QValue>,
    fresh: &mut usize,
    op: OpId,
    outcome: Outcome,
) {
    // The per-message outcomes change no socket state and need no lookup
    // of the operation first. Each arm completes on its own, so the slot is
    // written as one whole value (a write in pieces, merged from several
    // arms, stalls the read that takes it moments later).
    let done = match outcome {
        Outcome::Pushed => tokens.complete(op, QValue::Push),
        Outcome::Popped { buf, from } => tokens.complete(op, QValue::Pop { buf, from }),
        other => tokens.complete_with(op, |qd, kind| result_of(backend, queues, qd, kind, other)),
    };
    if done {
        *fresh += 1;
    } else {
        unknown_completion(backend, op);
    }
}

/// A backend bug: a completion for an operation that is not pending.
#[cold]
fn unknown_completion(backend: &dyn Backend, op: OpId) {
    log::error!("{}: completion for unknown operation {op:#x} dropped", backend.name());
}

/// The result an outcome gives the operation (`qd`, `kind`), and what it
/// does to the socket's state. Out of line: the outcomes that change socket
/// state come once per connection, not per message.
#[inline(never)]
fn result_of(backend: &mut dyn Backend, queues: &mut QueueTable, qd: QDesc, kind: OpKind, outcome: Outcome) -> QValue {
    match outcome {
        Outcome::Pushed => QValue::Push,
        Outcome::Popped { buf, from } => QValue::Pop { buf, from },
        Outcome::Connected => {
            if let Ok(q) = queues.get_mut(qd) {
                q.phase = Phase::Connected;
                // A stream connect picked the local address (and port) if
                // bind did not: getsockname must tell it.
                if q.ty == SockType::Stream {
                    q.local = backend.local_addr(q.sock).or(q.local);
                }
            }
            QValue::Connect
        }
        Outcome::Accepted { sock, peer } => {
            let mut q = Queue::new(sock, SockType::Stream);
            q.phase = Phase::Connected;
            q.peer = Some(peer);
            q.local = backend.local_addr(sock);
            match queues.insert(q) {
                Ok(new_qd) => QValue::Accept { qd: new_qd, peer },
                Err(e) => {
                    let _ = backend.close(sock, &mut Completions::default());
                    QValue::Failed(e.errno())
                }
            }
        }
        Outcome::Failed(errno) => {
            if kind == OpKind::Connect {
                if let Ok(q) = queues.get_mut(qd) {
                    if q.phase == Phase::Connecting {
                        q.phase = Phase::Idle;
                        q.peer = None;
                    }
                }
            }
            QValue::Failed(errno)
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for qd in self.queues.open().collect::<Vec<_>>() {
            let _ = self.close(qd);
        }
    }
}
