//! Locating damage in RocksDB's write-ahead log, for error messages and
//! `Store::repair`.
//!
//! RocksDB decides whether a log is damaged (see "Recovery" in `FORMAT.md`); its
//! status says only what ("Corruption: checksum mismatch"), not where. This
//! module reads the `*.log` files the way RocksDB's `log::Reader` does and
//! returns the first physical record that is damaged, so the error can name the
//! file and the byte offset. It never decides whether the store opens.
//!
//! The log format (RocksDB `db/log_format.h`): the file is cut into blocks of
//! 32 KiB; a block holds physical records and, when fewer than 7 bytes are left,
//! zero padding. A record is `u32 masked crc32c | u16 length | u8 type |
//! [u32 log number, recyclable types only] | payload`, little-endian; the crc
//! covers the type byte, the log number and the payload. A logical record (one
//! `WriteBatch`) is one FULL record or FIRST, MIDDLE..., LAST fragments.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Bytes per log block.
const BLOCK_SIZE: usize = 32 * 1024;
/// Header of a record: crc, length, type.
const HEADER_SIZE: usize = 7;
/// Header of a recyclable record: the above and the log number.
const RECYCLABLE_HEADER_SIZE: usize = 11;

/// Where the log is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalDamage {
    /// The log file's name (`000004.log`).
    pub file: String,
    /// Byte offset of the damaged record's header in the file.
    pub offset: u64,
    /// What is wrong there.
    pub reason: &'static str,
}

/// The write-ahead log files of `dir`, oldest first.
pub(crate) fn wal_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .extension()
            .filter(|extension| *extension == "log")
            .and_then(|_| path.file_stem()?.to_str()?.parse::<u64>().ok());
        if let Some(number) = number {
            files.push((number, path));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// The first damaged record in the log files of `dir`, if any. A record cut
/// short by the end of a file (a torn write) is not damage.
pub(crate) fn find_wal_damage(dir: &Path) -> io::Result<Option<WalDamage>> {
    for path in wal_files(dir)? {
        if let Some((offset, reason)) = scan(File::open(&path)?)? {
            let file = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok(Some(WalDamage {
                file,
                offset,
                reason,
            }));
        }
    }
    Ok(None)
}

/// Reads up to one block; fewer bytes only at the end of the file.
fn read_block(file: &mut impl Read, block: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match file.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// The offset and kind of the first damaged record of one log, if any.
fn scan(mut file: impl Read) -> io::Result<Option<(u64, &'static str)>> {
    let mut block = vec![0u8; BLOCK_SIZE];
    let mut block_start = 0u64;
    // Inside a fragmented logical record (after FIRST, before LAST), and the
    // payload bytes of it so far.
    let mut in_fragment = false;
    let mut fragment_bytes = 0usize;
    loop {
        let len = read_block(&mut file, &mut block)?;
        if len == 0 {
            return Ok(None);
        }
        // RocksDB's reader treats a record that runs past the end of the last
        // (short) block as a torn write; in a full block it is damage.
        let last = len < BLOCK_SIZE;
        let block = &block[..len];
        let mut at = 0usize;
        while len - at >= HEADER_SIZE {
            let offset = block_start + at as u64;
            let header = &block[at..];
            let length = usize::from(u16::from_le_bytes([header[4], header[5]]));
            let kind = header[6];
            let header_size = if matches!(kind, 5..=8 | 11 | 131) {
                RECYCLABLE_HEADER_SIZE
            } else {
                HEADER_SIZE
            };
            if header_size + length > len - at {
                if last {
                    return Ok(None);
                }
                return Ok(Some((offset, "bad record length")));
            }
            if kind == 0 && length == 0 {
                // Preallocated or padded space: RocksDB skips the rest of the
                // block. Inside a fragmented record it is a hole.
                if in_fragment {
                    return Ok(Some((offset, "zeroed record header inside a record")));
                }
                break;
            }
            let stored = unmask(u32::from_le_bytes([
                header[0], header[1], header[2], header[3],
            ]));
            if crc32c(&header[6..header_size + length]) != stored {
                return Ok(Some((offset, "checksum mismatch")));
            }
            match kind {
                // An empty FIRST before a new record is an old writer's quirk
                // that RocksDB's reader accepts.
                1 | 5 | 2 | 6 if in_fragment && fragment_bytes > 0 => {
                    return Ok(Some((offset, "fragmented record without its end")));
                }
                1 | 5 => in_fragment = false,
                2 | 6 => {
                    in_fragment = true;
                    fragment_bytes = length;
                }
                3 | 7 | 4 | 8 if !in_fragment => {
                    return Ok(Some((offset, "fragment without the start of its record")));
                }
                3 | 7 => fragment_bytes += length,
                4 | 8 => in_fragment = false,
                _ => {}
            }
            at += header_size + length;
        }
        if last {
            return Ok(None);
        }
        block_start += BLOCK_SIZE as u64;
    }
}

/// The highest `head` that any intact group in the log files of `dir` wrote:
/// what the head was before the damage, for `Store::repair`'s report.
///
/// Unlike RocksDB's reader, which drops the rest of a block after a bad
/// record, this trusts the bad record's length and goes on: a record after it
/// whose crc holds is genuine. Every intact logical record is parsed as a
/// `WriteBatch` for a put of the `head` key in the `meta` (default) column
/// family. `None` when no intact group wrote one.
pub(crate) fn highest_logged_head(dir: &Path) -> io::Result<Option<u64>> {
    let mut highest = None;
    for path in wal_files(dir)? {
        let bytes = std::fs::read(&path)?;
        for batch in intact_logical_records(&bytes) {
            if let Some(head) = batch_head(&batch) {
                highest = highest.max(Some(head));
            }
        }
    }
    Ok(highest)
}

/// The logical records of one log whose every fragment has a valid crc,
/// skipping damaged ones.
fn intact_logical_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    // The fragments of the record being assembled, if all were intact so far.
    let mut partial: Option<Vec<u8>> = None;
    for block in bytes.chunks(BLOCK_SIZE) {
        let mut at = 0usize;
        while block.len() - at >= HEADER_SIZE {
            let header = &block[at..];
            let length = usize::from(u16::from_le_bytes([header[4], header[5]]));
            let kind = header[6];
            let header_size = if matches!(kind, 5..=8 | 11 | 131) {
                RECYCLABLE_HEADER_SIZE
            } else {
                HEADER_SIZE
            };
            if header_size + length > block.len() - at || (kind == 0 && length == 0) {
                partial = None;
                break;
            }
            let stored = unmask(u32::from_le_bytes([
                header[0], header[1], header[2], header[3],
            ]));
            let payload = &header[header_size..header_size + length];
            at += header_size + length;
            if crc32c(&header[6..header_size + length]) != stored {
                partial = None;
                continue;
            }
            match kind {
                1 | 5 => {
                    partial = None;
                    records.push(payload.to_vec());
                }
                2 | 6 => partial = Some(payload.to_vec()),
                3 | 7 => {
                    if let Some(partial) = &mut partial {
                        partial.extend_from_slice(payload);
                    }
                }
                4 | 8 => {
                    if let Some(mut record) = partial.take() {
                        record.extend_from_slice(payload);
                        records.push(record);
                    }
                }
                _ => {}
            }
        }
    }
    records
}

/// The value of a put of the `head` key in the default column family in a
/// `WriteBatch` (RocksDB `db/write_batch.cc`: u64 sequence, u32 count, then
/// records of a tag byte, [varint32 column family], varint32-prefixed key and
/// value). `None` if there is none, or the batch holds a record of another kind
/// before it (Cairn's groups write only puts, its scavenges only deletes).
fn batch_head(batch: &[u8]) -> Option<u64> {
    let mut rest = batch.get(12..)?;
    let mut head = None;
    while let Some((&tag, after)) = rest.split_first() {
        rest = after;
        let column_family = match tag {
            // kTypeValue, kTypeDeletion: default column family.
            0x1 | 0x0 => 0,
            // kTypeColumnFamilyValue, kTypeColumnFamilyDeletion.
            0x5 | 0x4 => varint32(&mut rest)?,
            _ => return head,
        };
        let key = prefixed(&mut rest)?;
        if matches!(tag, 0x1 | 0x5) {
            let value = prefixed(&mut rest)?;
            if column_family == 0 && key == b"head" && value.len() == 8 {
                let mut buffer = [0u8; 8];
                buffer.copy_from_slice(value);
                head = Some(u64::from_be_bytes(buffer));
            }
        }
    }
    head
}

/// Takes a LEB128 varint32 off the front of `bytes`.
fn varint32(bytes: &mut &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for shift in (0..35).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Takes a varint32-length-prefixed slice off the front of `bytes`.
fn prefixed<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = varint32(bytes)? as usize;
    if bytes.len() < len {
        return None;
    }
    let (slice, rest) = bytes.split_at(len);
    *bytes = rest;
    Some(slice)
}

/// RocksDB stores crcs masked (`crc32c::Mask`); this undoes it.
fn unmask(masked: u32) -> u32 {
    let rotated = masked.wrapping_sub(0xa282_ead8);
    rotated.rotate_left(15)
}

/// CRC-32C (Castagnoli), the checksum of RocksDB's log records.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The byte-at-a-time table of the reflected Castagnoli polynomial.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as RocksDB's `log::Writer` emits it.
    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut covered = vec![kind];
        covered.extend_from_slice(payload);
        let crc = crc32c(&covered);
        let masked = crc.rotate_right(15).wrapping_add(0xa282_ead8);
        let mut bytes = masked.to_le_bytes().to_vec();
        bytes.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&covered);
        bytes
    }

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            unmask(0x1234_5678_u32.rotate_right(15).wrapping_add(0xa282_ead8)),
            0x1234_5678
        );
    }

    #[test]
    fn scan_finds_flips_but_not_torn_tails() {
        let mut log = record(1, b"first batch");
        log.extend(record(1, b"second batch"));
        assert_eq!(scan(&log[..]).unwrap(), None);
        // A torn tail: the last record cut anywhere.
        for cut in 1..log.len() - 18 {
            assert_eq!(scan(&log[..log.len() - cut]).unwrap(), None, "cut {cut}");
        }
        let mut flipped = log.clone();
        flipped[14] ^= 1;
        assert_eq!(scan(&flipped[..]).unwrap(), Some((0, "checksum mismatch")));
        let mut flipped = log.clone();
        flipped[log.len() - 1] ^= 1;
        assert_eq!(scan(&flipped[..]).unwrap(), Some((18, "checksum mismatch")));
        // A fragment whose start is gone.
        let middle = record(3, b"middle");
        assert_eq!(
            scan(&middle[..]).unwrap(),
            Some((0, "fragment without the start of its record"))
        );
    }
}
