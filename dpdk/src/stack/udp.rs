//! The UDP port table: which socket owns which local port, and ephemeral
//! port selection.

/// First and last ephemeral port (the IANA dynamic range).
pub const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Binding failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindError {
    /// The port is taken (EADDRINUSE).
    InUse,
    /// No ephemeral port is free (EADDRINUSE as well, as Linux reports).
    Exhausted,
}

impl BindError {
    /// The errno for this failure.
    pub fn errno(self) -> i32 {
        libc::EADDRINUSE
    }
}

/// Local port -> socket token. A flat table: one lookup per received
/// datagram, with no hashing.
pub struct PortTable {
    /// token + 1 per port, 0 if free.
    owners: Box<[u32]>,
    next_ephemeral: u16,
}

impl Default for PortTable {
    fn default() -> Self {
        Self::new()
    }
}

impl PortTable {
    pub fn new() -> Self {
        PortTable { owners: vec![0u32; 65536].into_boxed_slice(), next_ephemeral: *EPHEMERAL.start() }
    }

    /// Binds `port` (0: an ephemeral one) to `token`; returns the port.
    pub fn bind(&mut self, port: u16, token: u32) -> Result<u16, BindError> {
        let port = if port == 0 { self.pick_ephemeral()? } else { port };
        let slot = &mut self.owners[usize::from(port)];
        if *slot != 0 {
            return Err(BindError::InUse);
        }
        *slot = token.checked_add(1).expect("socket tokens stay below u32::MAX");
        Ok(port)
    }

    /// Frees `port`.
    pub fn unbind(&mut self, port: u16) {
        self.owners[usize::from(port)] = 0;
    }

    /// The token bound to `port`.
    pub fn lookup(&self, port: u16) -> Option<u32> {
        self.owners[usize::from(port)].checked_sub(1)
    }

    fn pick_ephemeral(&mut self) -> Result<u16, BindError> {
        let span = u32::from(EPHEMERAL.end() - EPHEMERAL.start()) + 1;
        for _ in 0..span {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p == *EPHEMERAL.end() { *EPHEMERAL.start() } else { p + 1 };
            if self.owners[usize::from(p)] == 0 {
                return Ok(p);
            }
        }
        Err(BindError::Exhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_lookup_unbind() {
        let mut t = PortTable::new();
        assert_eq!(t.bind(7, 0), Ok(7));
        assert_eq!(t.lookup(7), Some(0));
        assert_eq!(t.bind(7, 1), Err(BindError::InUse));
        t.unbind(7);
        assert_eq!(t.lookup(7), None);
        assert_eq!(t.bind(7, 1), Ok(7));
    }

    #[test]
    fn ephemeral_ports_are_distinct_and_in_range() {
        let mut t = PortTable::new();
        let a = t.bind(0, 1).unwrap();
        let b = t.bind(0, 2).unwrap();
        assert_ne!(a, b);
        assert!(EPHEMERAL.contains(&a) && EPHEMERAL.contains(&b));
    }

    #[test]
    fn ephemeral_range_can_run_out() {
        let mut t = PortTable::new();
        for i in 0..=u32::from(EPHEMERAL.end() - EPHEMERAL.start()) {
            t.bind(0, i).unwrap();
        }
        assert_eq!(t.bind(0, 9), Err(BindError::Exhausted));
        t.unbind(50000);
        assert_eq!(t.bind(0, 9), Ok(50000));
    }
}
