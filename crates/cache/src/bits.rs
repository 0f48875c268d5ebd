//! Fixed-width values packed least-significant bit first into bytes.

/// Appends values of up to 32 bits each to a byte slice.
pub(crate) struct BitWriter<'a> {
    out: &'a mut [u8],
    pos: usize,
    acc: u64,
    pending: u32,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Self {
            out,
            pos: 0,
            acc: 0,
            pending: 0,
        }
    }

    /// Appends the low `width` bits of `value` (`width` ≤ 32).
    pub(crate) fn put(&mut self, value: u32, width: u32) {
        debug_assert!(width <= 32);
        let mask = if width == 32 {
            u32::MAX
        } else {
            (1u32 << width) - 1
        };
        self.acc |= ((value & mask) as u64) << self.pending;
        self.pending += width;
        while self.pending >= 8 {
            self.out[self.pos] = self.acc as u8;
            self.acc >>= 8;
            self.pending -= 8;
            self.pos += 1;
        }
    }

    /// Writes the last partial byte; returns the bytes written.
    pub(crate) fn finish(self) -> usize {
        if self.pending > 0 {
            self.out[self.pos] = self.acc as u8;
            self.pos + 1
        } else {
            self.pos
        }
    }
}

/// Reads values written by [`BitWriter`].
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    acc: u64,
    available: u32,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            acc: 0,
            available: 0,
        }
    }

    /// The next `width`-bit value (`width` ≤ 32); zeros past the end.
    pub(crate) fn get(&mut self, width: u32) -> u32 {
        while self.available < width {
            let b = self.bytes.get(self.pos).copied().unwrap_or(0);
            self.acc |= (b as u64) << self.available;
            self.available += 8;
            self.pos += 1;
        }
        let mask = if width == 32 {
            u32::MAX as u64
        } else {
            (1u64 << width) - 1
        };
        let v = (self.acc & mask) as u32;
        self.acc >>= width;
        self.available -= width;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_mixed_widths_round_trip() {
        let values: Vec<(u32, u32)> = (0..200u32)
            .map(|i| {
                let w = 1 + i % 32;
                let v =
                    i.wrapping_mul(2_654_435_761) & if w == 32 { u32::MAX } else { (1 << w) - 1 };
                (v, w)
            })
            .collect();
        let bits: u32 = values.iter().map(|v| v.1).sum();
        let mut buf = vec![0u8; bits.div_ceil(8) as usize];
        let mut w = BitWriter::new(&mut buf);
        for &(v, width) in &values {
            w.put(v, width);
        }
        assert_eq!(w.finish(), buf.len());
        let mut r = BitReader::new(&buf);
        for &(v, width) in &values {
            assert_eq!(r.get(width), v);
        }
    }
}
