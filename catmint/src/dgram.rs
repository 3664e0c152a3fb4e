//! Datagram sockets of a [`Catmint`]: binding, sending through per-destination
//! resolvers, and answering peers' SIDR requests.

use crate::sys::cm::{CmEvent, CmId, PortSpace};
use crate::sys::{ffi, Error, Result};
use crate::types::{Done, Payload, Sink, SockId, Tag};
use crate::ud::Ud;
use crate::{connect_errno, Catmint, Sock};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Instant;

impl Catmint {
    /// A new datagram (UD) socket.
    pub fn dgram_socket(&mut self) -> Result<SockId> {
        let channel = self.channel.clone();
        self.socks.insert_with(|key| {
            Ok(Sock::DgramUnbound {
                id: CmId::new(&channel, PortSpace::Udp, key)?,
                sends: Vec::new(),
                pops: Vec::new(),
                binding: false,
            })
        })
    }

    /// The largest datagram payload `s` can send: its path MTU less our
    /// header, or the smallest over all devices before it is bound.
    pub fn max_datagram(&self, s: SockId) -> usize {
        match self.socks.get(s) {
            Some(Sock::Dgram(ud)) => ud.max_payload,
            _ => self.devices.iter().map(|d| d.ctx.port_mtu(1)).min().unwrap_or(256) - crate::ud::UD_HDR_LEN,
        }
    }

    /// True for datagram sockets.
    pub fn is_datagram(&self, s: SockId) -> bool {
        matches!(self.socks.get(s), Some(Sock::Dgram(_) | Sock::DgramUnbound { .. }))
    }

    /// Binds a datagram socket and brings up its QP; it then answers peers'
    /// resolution requests (SIDR) with its QP number.
    pub(crate) fn bind_dgram(&mut self, s: SockId, addr: SocketAddrV4) -> Result<SocketAddrV4> {
        if addr.ip().is_unspecified() {
            return Err(Error::new(
                "catmint datagram sockets bind to a device's address, not 0.0.0.0",
                libc::EADDRNOTAVAIL,
            ));
        }
        let (id, sends, pops) = match self.socks.take(s) {
            Some(Sock::DgramUnbound { id, sends, pops, binding: false }) => (id, sends, pops),
            Some(other) => {
                self.socks.put_back(s, other);
                return Err(Error::new("bind", libc::EINVAL));
            }
            None => return Err(Error::new("bind", libc::EBADF)),
        };
        if let Err(e) = id.bind(addr) {
            self.socks.put_back(s, Sock::DgramUnbound { id, sends, pops, binding: false });
            return Err(if e.errno == libc::ENODEV { Error::new(e.call, libc::EADDRNOTAVAIL) } else { e });
        }
        let mut out = Vec::new();
        let ud = match self.bring_up(s, id, sends, pops, &mut out) {
            Ok(ud) => ud,
            Err(e) => {
                self.socks.put_back(s, Sock::Broken);
                return Err(e);
            }
        };
        let local = ud.local;
        self.socks.put_back(s, Sock::Dgram(ud));
        // Nothing can have been queued on a socket bound explicitly.
        debug_assert!(out.is_empty());
        Ok(local)
    }

    /// Creates the UD QP on a bound id, listens for SIDR, and replays what
    /// waited for the bind.
    fn bring_up(
        &mut self,
        s: SockId,
        id: CmId,
        sends: Vec<(Tag, Arc<dyn Payload>, SocketAddrV4)>,
        pops: Vec<Tag>,
        out: &mut dyn Sink,
    ) -> Result<Ud> {
        let dev = self.device_of(&id).ok_or(Error::new("ud: address of no RDMA device", libc::EADDRNOTAVAIL))?;
        id.listen(64)?;
        let d = &self.devices[dev];
        let key = self.socks.key_of(s);
        let c = &self.cfg;
        let mut ud = Ud::new(
            id,
            dev,
            &d.ctx,
            &d.pd,
            &d.cq,
            &self.pool,
            c.credits.max(16),
            c.sq_depth,
            c.inline,
            key,
            &self.notify,
        )?;
        self.arm_new_qp(dev);
        for tag in pops {
            ud.recv(tag, out);
        }
        for (tag, data, to) in sends {
            if ud.send(tag, data, to, out) {
                self.start_resolver(s, &mut ud, to, out);
            }
        }
        Ok(ud)
    }

    /// Sends a datagram to `to`, resolving it first if needed.
    pub(crate) fn send_dgram<P: Payload + 'static>(
        &mut self,
        s: SockId,
        data: P,
        to: SocketAddrV4,
        tag: Tag,
        out: &mut dyn Sink,
    ) -> Result<()> {
        // The common case, a bound socket: send without taking the socket
        // out of its slot, unless the destination needs a resolver.
        if let Some(Sock::Dgram(ud)) = self.socks.get_mut(s) {
            if ud.send(tag, data, to, out) {
                let Some(Sock::Dgram(mut ud)) = self.socks.take(s) else { unreachable!("matched above") };
                self.start_resolver(s, &mut ud, to, out);
                self.socks.put_back(s, Sock::Dgram(ud));
            }
            return Ok(());
        }
        match self.socks.take(s) {
            Some(Sock::DgramUnbound { id, mut sends, pops, binding }) => {
                // Not bound: the first resolver's route picks our address.
                sends.push((tag, Arc::new(data) as Arc<dyn Payload>, to));
                let first = !binding;
                self.socks.put_back(s, Sock::DgramUnbound { id, sends, pops, binding: true });
                if first {
                    if let Err(e) = self.spawn_resolver(s, None, to) {
                        self.unbound_failed(s, e.errno, out);
                    }
                }
                Ok(())
            }
            Some(other) => {
                self.socks.put_back(s, other);
                Err(Error::new("send", libc::EINVAL))
            }
            None => Err(Error::new("send", libc::EBADF)),
        }
    }

    fn start_resolver(&mut self, s: SockId, ud: &mut Ud, to: SocketAddrV4, out: &mut dyn Sink) {
        // From our own address, so the route (and the address handle made
        // from it) is the one our QP's device takes.
        let src = SocketAddrV4::new(*ud.local.ip(), 0);
        match self.spawn_resolver(s, Some(src), to) {
            Ok(r) => {
                if let Some(crate::ud::Peer::Resolving { resolver, .. }) = ud.peers.get_mut(&to) {
                    *resolver = r;
                }
            }
            Err(e) => ud.unresolved(to, e.errno, out),
        }
    }

    /// Starts resolving `dst` on a short-lived id of its own, from `src`
    /// (None: wherever the route goes, for a socket not bound yet). The
    /// caller passes `src`: the owner is taken out of its slot meanwhile.
    fn spawn_resolver(&mut self, owner: SockId, src: Option<SocketAddrV4>, dst: SocketAddrV4) -> Result<SockId> {
        let owner_key = self.socks.key_of(owner);
        let channel = self.channel.clone();
        let deadline = Instant::now() + self.cfg.timeout;
        let ms = crate::attempt_ms(deadline).unwrap_or(1);
        let r = self.socks.insert_with(|key| {
            let id = CmId::new(&channel, PortSpace::Udp, key)?;
            id.resolve_addr(src, dst, ms)?;
            Ok(Sock::Resolver { id, owner: owner_key, dst, deadline })
        })?;
        self.start_timer(r);
        Ok(r)
    }

    /// An unbound socket could not get an address: fail what waited.
    fn unbound_failed(&mut self, s: SockId, errno: i32, out: &mut dyn Sink) {
        if let Some(Sock::DgramUnbound { sends, binding, .. }) = self.socks.get_mut(s) {
            for (tag, _, _) in sends.drain(..) {
                out.push((tag, Done::Failed(errno)));
            }
            *binding = false;
        }
    }

    /// Events of resolver ids.
    pub(crate) fn on_resolver_event(&mut self, r: SockId, sock: Sock, ev: &CmEvent, out: &mut dyn Sink) {
        use ffi::rdma_cm_event_type::*;
        let Sock::Resolver { id, owner, dst, deadline } = sock else { unreachable!("only resolvers come here") };
        let owner_sock = self.socks.lookup(owner);
        let Some(o) = owner_sock else {
            // The socket closed meanwhile.
            self.timed -= 1;
            self.graveyard.push(Sock::Resolver { id, owner, dst, deadline });
            return;
        };
        let result: std::result::Result<Option<Sock>, i32> = match ev.kind() {
            RDMA_CM_EVENT_ADDR_RESOLVED => {
                let ms = self.cfg.timeout.as_millis().min(i32::MAX as u128) as i32;
                id.resolve_route(ms).map(|()| Some(Sock::Resolver { id, owner, dst, deadline })).map_err(|e| e.errno)
            }
            RDMA_CM_EVENT_ROUTE_RESOLVED => {
                // An unbound owner takes the route's source address now.
                if let Some(Sock::DgramUnbound { .. }) = self.socks.get(o) {
                    if let Some(local) = id.local_addr() {
                        self.implicit_bind(o, SocketAddrV4::new(*local.ip(), 0), r, dst, out);
                    }
                }
                id.connect(&[]).map(|()| Some(Sock::Resolver { id, owner, dst, deadline })).map_err(|e| e.errno)
            }
            RDMA_CM_EVENT_ESTABLISHED => {
                if let Some(Sock::Dgram(ud)) = self.socks.get_mut(o) {
                    ud.resolved(dst, ev.ud_param(), out);
                }
                self.graveyard.push(Sock::Resolver { id, owner, dst, deadline });
                Ok(None)
            }
            RDMA_CM_EVENT_ADDR_ERROR if crate::attempt_ms(deadline).is_some() => {
                // One attempt timed out: try again until the deadline (see
                // RESOLVE_ATTEMPT).
                let src = match self.socks.get(o) {
                    Some(Sock::Dgram(ud)) => Some(SocketAddrV4::new(*ud.local.ip(), 0)),
                    _ => None,
                };
                let ms = crate::attempt_ms(deadline).unwrap_or(1);
                match id.resolve_addr(src, dst, ms) {
                    Ok(()) => Ok(Some(Sock::Resolver { id, owner, dst, deadline })),
                    Err(e) => {
                        self.graveyard.push(Sock::Resolver { id, owner, dst, deadline });
                        Err(e.errno)
                    }
                }
            }
            kind @ (RDMA_CM_EVENT_ADDR_ERROR
            | RDMA_CM_EVENT_ROUTE_ERROR
            | RDMA_CM_EVENT_UNREACHABLE
            | RDMA_CM_EVENT_REJECTED
            | RDMA_CM_EVENT_CONNECT_ERROR) => {
                self.graveyard.push(Sock::Resolver { id, owner, dst, deadline });
                Err(connect_errno(kind, ev.status()))
            }
            _ => Ok(Some(Sock::Resolver { id, owner, dst, deadline })),
        };
        match result {
            Ok(Some(sock)) => self.socks.put_back(r, sock),
            Ok(None) => self.timed -= 1,
            Err(errno) => {
                self.timed -= 1;
                self.resolve_failed(o, dst, errno, out);
            }
        }
    }

    /// Resolution of `dst` for socket `o` failed (or timed out).
    pub(crate) fn resolve_failed(&mut self, o: SockId, dst: SocketAddrV4, errno: i32, out: &mut dyn Sink) {
        match self.socks.get_mut(o) {
            Some(Sock::Dgram(ud)) => ud.unresolved(dst, errno, out),
            Some(Sock::DgramUnbound { .. }) => self.unbound_failed(o, errno, out),
            _ => {}
        }
    }

    fn implicit_bind(
        &mut self,
        o: SockId,
        addr: SocketAddrV4,
        resolver: SockId,
        dst: SocketAddrV4,
        out: &mut dyn Sink,
    ) {
        let Some(Sock::DgramUnbound { id, sends, pops, .. }) = self.socks.take(o) else { return };
        if let Err(e) = id.bind(addr) {
            for (tag, _, _) in sends {
                out.push((tag, Done::Failed(e.errno)));
            }
            self.socks.put_back(o, Sock::DgramUnbound { id, sends: Vec::new(), pops, binding: false });
            return;
        }
        // The resolver already under way serves `dst`.
        let (first, rest): (Vec<_>, Vec<_>) = sends.into_iter().partition(|(_, _, to)| *to == dst);
        match self.bring_up(o, id, rest, pops, out) {
            Ok(mut ud) => {
                let mut queue = std::collections::VecDeque::new();
                for (tag, data, _) in first {
                    queue.push_back((tag, data));
                }
                ud.peers.insert(dst, crate::ud::Peer::Resolving { resolver, queue });
                self.socks.put_back(o, Sock::Dgram(ud));
            }
            Err(e) => {
                log::warn!("catmint: implicit bind to {addr}: {e}");
                for (tag, _, _) in first {
                    out.push((tag, Done::Failed(e.errno)));
                }
                self.socks.put_back(o, Sock::Broken);
            }
        }
    }

    /// A peer resolves our datagram socket: answer with our QP number.
    pub(crate) fn on_sidr_request(&mut self, listener: SockId, ev: &CmEvent) {
        let qpn = match self.socks.get(listener) {
            Some(Sock::Dgram(ud)) => ud.qpn(),
            _ => return,
        };
        let Ok(child) = ev.take_child(&self.channel) else { return };
        if let Err(e) = child.accept(&[], qpn) {
            log::warn!("catmint: SIDR reply: {e}");
        }
        // Destroyed once the request is acknowledged.
        self.graveyard.push(Sock::Idle { id: child, bound: None });
    }

    /// Closes a datagram socket.
    pub(crate) fn close_dgram(&mut self, sock: Sock, out: &mut dyn Sink) {
        match sock {
            Sock::Dgram(mut ud) => ud.cancel(out),
            Sock::DgramUnbound { sends, pops, .. } => {
                for (tag, _, _) in sends {
                    out.push((tag, Done::Failed(libc::ECANCELED)));
                }
                for tag in pops {
                    out.push((tag, Done::Failed(libc::ECANCELED)));
                }
            }
            _ => {}
        }
    }
}
