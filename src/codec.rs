//! A tiny binary codec used for storage keys, record values and audit events.
//!
//! Variable-length parts are length-prefixed, so no two tuples encode to the same bytes,
//! and a key's prefix for `(tenant, subject)` never matches another subject's keys.

/// Bytes that do not decode as the expected `what` (a record, a key, an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} does not decode")]
pub struct CodecError(pub &'static str);

/// Appends primitives to a buffer.
#[derive(Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(mut self, n: u8) -> Self {
        self.0.push(n);
        self
    }

    pub fn u32(mut self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// Length-prefixed (u32 BE) bytes.
    pub fn bytes(self, b: &[u8]) -> Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        let mut w = self.u32(len);
        w.0.extend_from_slice(b);
        w
    }

    /// Length-prefixed UTF-8.
    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    /// A length-prefixed list of byte strings.
    pub fn list(self, items: &[Vec<u8>]) -> Self {
        let mut w = self.u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
        for item in items {
            w = w.bytes(item);
        }
        w
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads primitives back; every read is bounds-checked and names what was expected.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, which is a `what` (for error messages).
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, CodecError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    pub fn u64(&mut self) -> Result<u64, CodecError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = usize::try_from(self.u32()?).map_err(|_| CodecError(self.what))?;
        self.take(len)
    }

    pub fn str(&mut self) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| CodecError(self.what))
    }

    pub fn list(&mut self) -> Result<Vec<Vec<u8>>, CodecError> {
        let count = self.u32()?;
        let mut out = Vec::new();
        for _ in 0..count {
            out.push(self.bytes()?.to_vec());
        }
        Ok(out)
    }

    /// Bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Fails unless every byte was consumed: trailing garbage is corruption too.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError(self.what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_never_collide() {
        let a = Writer::new().str("ab").str("c").finish();
        let b = Writer::new().str("a").str("bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn round_trip_and_strict_end() {
        let buf = Writer::new().u8(7).u32(9).u64(11).str("x").finish();
        let mut r = Reader::new(&buf, "test");
        assert_eq!(r.u8().ok(), Some(7));
        assert_eq!(r.u32().ok(), Some(9));
        assert_eq!(r.u64().ok(), Some(11));
        assert_eq!(r.str().ok(), Some("x"));
        assert!(r.finish().is_ok());
        let mut short = Reader::new(&buf[..3], "test");
        assert!(short.u8().is_ok());
        assert!(short.u32().is_err());
        assert!(Reader::new(&buf, "test").finish().is_err());
    }
}
