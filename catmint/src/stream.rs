//! Stream sockets of a [`Catmint`]: RC connection setup through rdma_cm
//! (client: resolve address, resolve route, create the QP and post receives,
//! connect; server: listen, admit requests within the backlog, accept) and
//! the timers that bound it; also the dispatch of every rdma_cm event.

use crate::rc::Rc;
use crate::sys::cm::{CmEvent, CmId, PortSpace};
use crate::sys::{ffi, Error, Result};
use crate::types::{Done, Sink, SockId, Tag};
use crate::wire::Hello;
use crate::{attempt_ms, connect_errno, Catmint, Listener, Sock};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::time::Instant;

impl Catmint {
    /// A new stream (RC) socket.
    pub fn stream_socket(&mut self) -> Result<SockId> {
        let channel = self.channel.clone();
        self.socks.insert_with(|key| Ok(Sock::Idle { id: CmId::new(&channel, PortSpace::Tcp, key)?, bound: None }))
    }

    /// Starts listening on a bound stream socket; up to `backlog` connections wait for accept.
    pub fn listen(&mut self, s: SockId, backlog: i32) -> Result<()> {
        let sock = self.socks.take(s).ok_or(Error::new("listen", libc::EBADF))?;
        let (result, sock) = match sock {
            Sock::Idle { id, bound } => match id.listen(backlog) {
                Ok(()) => (
                    Ok(()),
                    Sock::Listening(Listener {
                        _id: id,
                        backlog: backlog.max(1) as usize,
                        ready: VecDeque::new(),
                        accepts: VecDeque::new(),
                        handshaking: 0,
                        waiting: VecDeque::new(),
                    }),
                ),
                Err(e) => (Err(e), Sock::Idle { id, bound }),
            },
            Sock::Listening(mut l) => {
                l.backlog = backlog.max(1) as usize;
                (Ok(()), Sock::Listening(l))
            }
            other => (Err(Error::new("listen", libc::EINVAL)), other),
        };
        self.socks.put_back(s, sock);
        result
    }

    /// Asks for the next incoming connection on a listening socket, reported to `out` under `tag`.
    pub fn accept(&mut self, s: SockId, tag: Tag, out: &mut dyn Sink) -> Result<()> {
        let Sock::Listening(l) = self.sock_mut(s)? else { return Err(Error::new("accept", libc::EINVAL)) };
        l.accepts.push_back(tag);
        Self::match_accepts(l, out);
        self.promote(s);
        self.trim_due |= self.socks.reclaim();
        Ok(())
    }

    pub(crate) fn match_accepts(l: &mut Listener, out: &mut dyn Sink) {
        while !l.accepts.is_empty() && !l.ready.is_empty() {
            let tag = l.accepts.pop_front().expect("checked");
            let (sock, peer) = l.ready.pop_front().expect("checked");
            out.push((tag, Done::Accepted { sock, peer }));
        }
    }

    /// Starts connecting a stream socket to `to` (address and route resolution, then the CM handshake); reported under `tag`.
    pub fn connect(&mut self, s: SockId, to: SocketAddrV4, tag: Tag) -> Result<()> {
        let deadline = Instant::now() + self.cfg.timeout;
        let timeout_ms = attempt_ms(deadline).unwrap_or(1);
        let sock = self.socks.take(s).ok_or(Error::new("connect", libc::EBADF))?;
        let (result, sock) = match sock {
            // A bound id resolves from its own address.
            Sock::Idle { id, bound } => match id.resolve_addr(None, to, timeout_ms) {
                Ok(()) => {
                    self.start_timer(s);
                    (Ok(()), Sock::Resolving { id, bound, to, tag, deadline })
                }
                Err(e) => (Err(e), Sock::Idle { id, bound }),
            },
            other => (Err(Error::new("connect", libc::EINVAL)), other),
        };
        self.socks.put_back(s, sock);
        result
    }

    pub(crate) fn on_cm_event(&mut self, ev: &CmEvent, out: &mut dyn Sink) {
        use ffi::rdma_cm_event_type::*;
        let kind = ev.kind();
        log::debug!("catmint: cm event {} status {}", ev.name(), ev.status());
        if kind == RDMA_CM_EVENT_CONNECT_REQUEST {
            return self.on_connect_request(ev);
        }
        let Some(s) = self.socks.lookup(ev.key()) else { return };
        let Some(sock) = self.socks.take(s) else { return };
        if let Sock::Resolver { .. } = sock {
            return self.on_resolver_event(s, sock, ev, out);
        }
        let sock = match (kind, sock) {
            (RDMA_CM_EVENT_ADDR_ERROR, Sock::Resolving { id, bound, to, tag, deadline })
                if attempt_ms(deadline).is_some() =>
            {
                // One attempt timed out: try again until the deadline.
                let ms = attempt_ms(deadline).unwrap_or(1);
                match id.resolve_addr(None, to, ms) {
                    Ok(()) => Sock::Resolving { id, bound, to, tag, deadline },
                    Err(e) => self.connect_failed(s, id, bound, tag, e.errno, out),
                }
            }
            (RDMA_CM_EVENT_ADDR_RESOLVED, Sock::Resolving { id, bound, to, tag, deadline }) => {
                let ms = self.cfg.timeout.as_millis().min(i32::MAX as u128) as i32;
                match id.resolve_route(ms) {
                    Ok(()) => Sock::Resolving { id, bound, to, tag, deadline },
                    Err(e) => self.connect_failed(s, id, bound, tag, e.errno, out),
                }
            }
            (RDMA_CM_EVENT_ROUTE_RESOLVED, Sock::Resolving { id, bound, tag, deadline, .. }) => {
                let key = self.socks.key_of(s);
                match self.new_endpoint(id, key) {
                    Ok(ep) => {
                        let hello = ep.hello().emit();
                        match ep.id().connect(&hello) {
                            Ok(()) => Sock::Connecting { ep, bound, tag, deadline },
                            Err(e) => self.connect_failed_ep(s, ep, bound, tag, e.errno, out),
                        }
                    }
                    Err((e, Some(id))) => self.connect_failed(s, id, bound, tag, e.errno, out),
                    Err((e, None)) => self.connect_failed_fresh(s, bound, tag, e.errno, out),
                }
            }
            (RDMA_CM_EVENT_ESTABLISHED, Sock::Connecting { mut ep, bound, tag, .. }) => {
                match Hello::parse(&ev.private_data()) {
                    Some(h) => {
                        self.timed -= 1;
                        ep.established(h);
                        out.push((tag, Done::Connected));
                        Sock::Connected(ep)
                    }
                    None => {
                        ep.id().disconnect();
                        self.connect_failed_ep(s, ep, bound, tag, libc::EPROTO, out)
                    }
                }
            }
            (RDMA_CM_EVENT_ESTABLISHED, Sock::Incoming { ep, listener, peer, .. }) => {
                self.timed -= 1;
                match self.socks.get_mut(listener) {
                    Some(Sock::Listening(l)) => {
                        l.handshaking -= 1;
                        l.ready.push_back((s, peer));
                        Self::match_accepts(l, out);
                        Sock::Connected(ep)
                    }
                    // The listener closed meanwhile.
                    _ => {
                        ep.id().disconnect();
                        self.graveyard.push(Sock::Connected(ep));
                        return;
                    }
                }
            }
            (
                RDMA_CM_EVENT_REJECTED
                | RDMA_CM_EVENT_ADDR_ERROR
                | RDMA_CM_EVENT_ROUTE_ERROR
                | RDMA_CM_EVENT_UNREACHABLE
                | RDMA_CM_EVENT_CONNECT_ERROR,
                sock,
            ) => {
                let errno = connect_errno(kind, ev.status());
                match sock {
                    Sock::Resolving { id, bound, tag, .. } => self.connect_failed(s, id, bound, tag, errno, out),
                    Sock::Connecting { ep, bound, tag, .. } => self.connect_failed_ep(s, ep, bound, tag, errno, out),
                    Sock::Incoming { ep, listener, .. } => {
                        self.timed -= 1;
                        if let Some(Sock::Listening(l)) = self.socks.get_mut(listener) {
                            l.handshaking -= 1;
                        }
                        self.graveyard.push(Sock::Connected(ep));
                        return;
                    }
                    Sock::Connected(mut ep) => {
                        ep.disconnected(out);
                        Sock::Connected(ep)
                    }
                    other => other,
                }
            }
            (RDMA_CM_EVENT_DISCONNECTED, Sock::Connected(mut ep)) => {
                ep.disconnected(out);
                ep.id().disconnect();
                Sock::Connected(ep)
            }
            (RDMA_CM_EVENT_DISCONNECTED, Sock::Closing { ep, .. }) => {
                self.timed -= 1;
                self.graveyard.push(Sock::Closing { ep, deadline: Instant::now() });
                return;
            }
            (_, sock) => sock,
        };
        self.socks.put_back(s, sock);
    }

    pub(crate) fn on_connect_request(&mut self, ev: &CmEvent) {
        let lkey = ev.key();
        if let Some(l) = self.socks.lookup(lkey).filter(|&l| matches!(self.socks.get(l), Some(Sock::Dgram(_)))) {
            return self.on_sidr_request(l, ev);
        }
        // The request's new id is ours to own (or to refuse).
        let Ok(child) = ev.take_child(&self.channel) else { return };
        let listener = self.socks.lookup(lkey).filter(|&l| matches!(self.socks.get(l), Some(Sock::Listening(_))));
        let (Some(l), Some(hello)) = (listener, Hello::parse(&ev.private_data())) else {
            // No listener, or not a catmint peer: refuse; the id is destroyed
            // once the event is acknowledged.
            child.reject();
            self.graveyard.push(Sock::Idle { id: child, bound: None });
            return;
        };
        let Some(Sock::Listening(li)) = self.socks.get_mut(l) else { unreachable!("checked above") };
        if li.ready.len() + li.handshaking < li.backlog {
            self.admit(l, child, hello);
        } else if li.waiting.len() < li.backlog.max(16) {
            // A full backlog leaves the connect in progress, as TCP does;
            // accept() admits it when room frees up (or the peer times out).
            li.waiting.push_back((child, hello));
        } else {
            child.reject();
            self.graveyard.push(Sock::Idle { id: child, bound: None });
        }
    }

    /// Creates the endpoint of an incoming connection and accepts it.
    pub(crate) fn admit(&mut self, listener: SockId, child: CmId, peer_hello: Hello) {
        let peer = child.peer_addr().unwrap_or(SocketAddrV4::new(0.into(), 0));
        let mut child = Some(child);
        let inserted = self.socks.insert_with(|key| {
            let id = child.take().expect("made once");
            id.set_key(key);
            Ok(Sock::Idle { id, bound: Some(peer) })
        });
        let Ok(s) = inserted else {
            // No room (EMFILE): refuse. The id may have an event not yet
            // acknowledged (the request being handled), so it is destroyed
            // from the graveyard, never here (rdma_destroy_id would wait).
            if let Some(id) = child {
                log::warn!("catmint: connection from {peer} refused: socket table full");
                id.reject();
                self.graveyard.push(Sock::Idle { id, bound: None });
            }
            return;
        };
        let Some(Sock::Idle { id, .. }) = self.socks.take(s) else { unreachable!("just inserted") };
        let key = self.socks.key_of(s);
        match self.new_endpoint(id, key) {
            Ok(mut ep) => {
                ep.established(peer_hello);
                let hello = ep.hello().emit();
                if let Err(e) = ep.id().accept(&hello, 0) {
                    log::warn!("catmint: accept from {peer}: {e}");
                    ep.id().reject();
                    self.graveyard.push(Sock::Connected(ep));
                    return;
                }
                if let Some(Sock::Listening(l)) = self.socks.get_mut(listener) {
                    l.handshaking += 1;
                }
                self.start_timer(s);
                let deadline = Instant::now() + self.cfg.timeout;
                self.socks.put_back(s, Sock::Incoming { ep, listener, peer, deadline });
            }
            Err((e, id)) => {
                log::warn!("catmint: connection from {peer}: {e}");
                if let Some(id) = id {
                    id.reject();
                    self.graveyard.push(Sock::Idle { id, bound: None });
                }
            }
        }
    }

    /// Admits waiting connection requests while the backlog has room.
    pub(crate) fn promote(&mut self, l: SockId) {
        loop {
            let Some(Sock::Listening(li)) = self.socks.get_mut(l) else { return };
            if li.ready.len() + li.handshaking >= li.backlog {
                return;
            }
            let Some((child, hello)) = li.waiting.pop_front() else { return };
            self.admit(l, child, hello);
        }
    }

    /// A connect failed on an id that never got a QP: report, and leave the
    /// socket idle with a fresh id so it may connect again.
    pub(crate) fn connect_failed(
        &mut self,
        s: SockId,
        id: CmId,
        bound: Option<SocketAddrV4>,
        tag: Tag,
        errno: i32,
        out: &mut dyn Sink,
    ) -> Sock {
        self.graveyard.push(Sock::Idle { id, bound: None });
        self.connect_failed_fresh(s, bound, tag, errno, out)
    }

    pub(crate) fn connect_failed_ep(
        &mut self,
        s: SockId,
        ep: Rc,
        bound: Option<SocketAddrV4>,
        tag: Tag,
        errno: i32,
        out: &mut dyn Sink,
    ) -> Sock {
        self.graveyard.push(Sock::Connected(ep));
        self.connect_failed_fresh(s, bound, tag, errno, out)
    }

    pub(crate) fn connect_failed_fresh(
        &mut self,
        s: SockId,
        bound: Option<SocketAddrV4>,
        tag: Tag,
        errno: i32,
        out: &mut dyn Sink,
    ) -> Sock {
        self.timed -= 1;
        out.push((tag, Done::Failed(errno)));
        let key = self.socks.key_of(s);
        match CmId::new(&self.channel, PortSpace::Tcp, key) {
            Ok(id) => {
                // Re-bind to the address the old id had (its port is free again
                // once the old id is destroyed, so bind the address only).
                if let Some(b) = bound {
                    let _ = id.bind(SocketAddrV4::new(*b.ip(), 0));
                }
                Sock::Idle { id, bound }
            }
            Err(e) => {
                log::error!("catmint: {e}");
                Sock::Broken
            }
        }
    }

    pub(crate) fn check_timers(&mut self, out: &mut dyn Sink) {
        let now = Instant::now();
        let ids = std::mem::take(&mut self.timed_ids);
        for &s in &ids {
            // A close also ends once its FIN is out (or the connection broke).
            let expired = match self.socks.get(s) {
                Some(Sock::Closing { ep, .. }) if ep.sends_drained() || ep.is_broken() => true,
                Some(sock) => sock.deadline().is_some_and(|d| now >= d),
                None => false,
            };
            if !expired {
                continue;
            }
            match self.socks.take(s) {
                Some(Sock::Resolving { id, bound, tag, .. }) => {
                    let sock = self.connect_failed(s, id, bound, tag, libc::ETIMEDOUT, out);
                    self.socks.put_back(s, sock);
                }
                Some(Sock::Connecting { ep, bound, tag, .. }) => {
                    let sock = self.connect_failed_ep(s, ep, bound, tag, libc::ETIMEDOUT, out);
                    self.socks.put_back(s, sock);
                }
                Some(Sock::Incoming { ep, listener, .. }) => {
                    self.timed -= 1;
                    if let Some(Sock::Listening(l)) = self.socks.get_mut(listener) {
                        l.handshaking -= 1;
                    }
                    ep.id().disconnect();
                    self.graveyard.push(Sock::Connected(ep));
                }
                Some(Sock::Closing { ep, .. }) => {
                    self.timed -= 1;
                    ep.id().disconnect();
                    self.graveyard.push(Sock::Connected(ep));
                }
                Some(Sock::Resolver { id, owner, dst, deadline }) => {
                    self.timed -= 1;
                    self.graveyard.push(Sock::Resolver { id, owner, dst, deadline });
                    if let Some(o) = self.socks.lookup(owner) {
                        self.resolve_failed(o, dst, libc::ETIMEDOUT, out);
                    }
                }
                Some(other) => self.socks.put_back(s, other),
                None => {}
            }
        }
        // Keep the ids still timed (and those that started meanwhile),
        // each once.
        let mut ids = ids;
        ids.append(&mut self.timed_ids);
        ids.retain(|&s| self.socks.get(s).is_some_and(|sock| sock.deadline().is_some()));
        ids.sort_unstable();
        ids.dedup();
        self.timed_ids = ids;
    }

    /// A socket entered a timed state (a connect, an accept's handshake, a
    /// close waiting for its FIN, a datagram destination's resolution).
    pub(crate) fn start_timer(&mut self, s: SockId) {
        self.timed += 1;
        self.timed_ids.push(s);
    }
}
