//! Eight bytes at a time: word arithmetic that marks bytes of a word loaded from memory
//! (little-endian, as the kernel program and its hosts are), for the parsers that look for
//! characters without a loop per byte.

/// The low seven bits of every byte.
pub const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
/// The high bit of every byte: the mark the functions here set.
pub const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
/// The low bit of every byte.
pub const ONES: u64 = 0x0101_0101_0101_0101;

/// `byte` in every byte of a word.
pub const fn repeated(byte: u8) -> u64 {
    ONES * byte as u64
}

/// 0x80 in each byte of `x` that is zero, 0 elsewhere (exact: no false positives).
#[inline(always)]
pub fn zero_bytes(x: u64) -> u64 {
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// 0x80 in each byte of `x` that is an ASCII digit, 0 elsewhere.
#[inline(always)]
pub fn digit_bytes(x: u64) -> u64 {
    let low7 = x & LOW7;
    // Adding 0x80 - c to a byte below 0x80 sets its high bit exactly when it is c or more,
    // and carries into no other byte.
    let from_zero = low7.wrapping_add(0x5050_5050_5050_5050);
    let from_colon = low7.wrapping_add(0x4646_4646_4646_4646);
    from_zero & !from_colon & !x & HIGH_BITS
}

/// The high bit of each of the first `n` bytes of a word.
#[inline(always)]
pub fn high_bits_of(n: usize) -> u64 {
    if n >= 8 {
        HIGH_BITS
    } else {
        HIGH_BITS & ((1u64 << (8 * n)) - 1)
    }
}

/// The bytes marked in `mask` (0x80, as above) as its low eight bits: bit i for byte i.
#[inline(always)]
pub fn byte_flags(mask: u64) -> u64 {
    // Byte i's mark, moved to bit 8i, lands at bit 56 + i through the constant's byte 7 - i
    // (2^(7-i)); no two products overlap, so nothing carries.
    ((mask >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// The index of the lowest byte marked in a mask of the functions above (not 0).
#[inline(always)]
pub fn lowest_byte(mask: u64) -> usize {
    let lowest = mask & mask.wrapping_neg();
    // lowest is 1 << (8k + 7); the multiplication moves byte 7-k of the constant, which
    // holds k, to the top.
    ((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// The index of the lowest set bit of a mask of at most 16 bits, if any.
#[inline(always)]
pub fn lowest_bit(mask: u64) -> Option<usize> {
    if mask == 0 {
        return None;
    }
    // The bits below the lowest set one, counted in pairs, nibbles, then bytes.
    let mut v = (mask & mask.wrapping_neg()) - 1;
    v -= (v >> 1) & 0x5555;
    v = (v & 0x3333) + ((v >> 2) & 0x3333);
    v = (v + (v >> 4)) & 0x0f0f;
    Some(((v + (v >> 8)) & 0x1f) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(bytes: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(w)
    }

    #[test]
    fn a_repeated_byte_fills_every_byte_of_the_word() {
        for byte in 0..=255u8 {
            assert_eq!(repeated(byte), u64::from_le_bytes([byte; 8]), "{byte:#x}");
        }
    }

    #[test]
    fn every_byte_value_is_told_apart_in_every_position() {
        for position in 0..8 {
            for byte in 0..=255u8 {
                // The other bytes are ones a wrong carry or borrow would show on.
                let mut bytes = [b'9'; 8];
                bytes[position] = byte;
                let x = word(&bytes);
                let mark = 0x80u64 << (8 * position);
                let others = HIGH_BITS & !mark;
                assert_eq!(
                    zero_bytes(x) & mark != 0,
                    byte == 0,
                    "{byte:#x} at {position}"
                );
                assert_eq!(zero_bytes(x) & others, 0);
                assert_eq!(
                    digit_bytes(x) & mark != 0,
                    byte.is_ascii_digit(),
                    "{byte:#x} at {position}"
                );
                assert_eq!(digit_bytes(x) & others, others);
            }
        }
    }

    #[test]
    fn flags_and_bit_indices_are_exact() {
        for flags in 0..=255u64 {
            let mask = (0..8)
                .filter(|i| flags & (1 << i) != 0)
                .fold(0, |m, i| m | (0x80u64 << (8 * i)));
            assert_eq!(byte_flags(mask), flags);
            if flags != 0 {
                assert_eq!(lowest_byte(mask), flags.trailing_zeros() as usize);
            }
        }
        assert_eq!(lowest_bit(0), None);
        for mask in 1..=0xffffu64 {
            assert_eq!(lowest_bit(mask), Some(mask.trailing_zeros() as usize));
        }
        for n in 0..=9 {
            assert_eq!(high_bits_of(n).count_ones() as usize, n.min(8));
        }
    }
}
