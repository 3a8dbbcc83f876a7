//! Shared blocks: buffers that many small outputs (datagrams, frames,
//! messages) are written into and split off with `BytesMut::split`, so
//! each costs no allocation of its own (a block costs two: its memory and
//! its shared count). Whatever keeps one part of a block (a packet not yet
//! stable, a frame a slow client has not read) keeps all of it.

use bytes::BytesMut;

/// The usual size of a block.
pub const BLOCK: usize = 256 << 10;

/// Makes sure `block` has room for `len` more bytes: if it has not, it is
/// replaced by a new empty block of `size` bytes, or `len` if larger (the
/// parts already split off keep the old one alive; nothing is copied).
pub fn make_room(block: &mut BytesMut, len: usize, size: usize) {
    if block.capacity() - block.len() < len {
        *block = BytesMut::with_capacity(size.max(len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_block_is_replaced_and_parts_split_off_stay_whole() {
        let mut b = BytesMut::new();
        make_room(&mut b, 10, 64);
        assert!(b.capacity() >= 64);
        b.extend_from_slice(b"0123456789");
        let first = b.split().freeze();
        make_room(&mut b, 100, 64);
        assert!(b.capacity() >= 100, "a part larger than the block size gets room of its own");
        b.extend_from_slice(&[7; 100]);
        assert_eq!(&first[..], b"0123456789");
        let at = b.as_ptr();
        make_room(&mut b, 0, 64);
        assert_eq!(b.as_ptr(), at, "enough room: the same block");
    }
}
