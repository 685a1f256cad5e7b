//! Byte layouts of what the memory database stores: varints, exchange records, cold blocks.
//!
//! A hot record is one exchange: time, turn, flags, the two texts (lz4 only when that helps,
//! which for one short exchange it rarely does). A cold block is a header (count, last id,
//! newest time, dictionary, frame table) and frames of [`FRAME_EXCHANGES`] exchanges, each
//! compressed on its own against the speaker's dictionary: one exchange is read by decompressing
//! one small frame, and the dictionary supplies the words and phrases that make small frames
//! compress as well as big blocks. Ids inside a block and times are stored as deltas.

use super::Exchange;

/// Longest text kept per side of an exchange; longer text is cut at a character boundary so one
/// runaway reply cannot make a record (and every later injection) huge.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

const FLAG_INTERRUPTED: u8 = 1;
/// A third text follows the two: the turn's tool calls (records written before it have none).
const FLAG_TOOLS: u8 = 2;
const FORMAT_RAW: u8 = 0;
const FORMAT_LZ4: u8 = 1;

/// Stored bytes that do not decode: the database was damaged or written by something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable {0}")]
pub struct Corrupt(pub &'static str);

/// Appends `v` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint at `*pos`, advancing it.
#[inline]
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Corrupt> {
    if let Some(&b) = buf.get(*pos)
        && b < 0x80
    {
        *pos += 1;
        return Ok(u64::from(b));
    }
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(*pos) else { return Err(Corrupt("varint (truncated)")) };
        *pos += 1;
        if shift > 63 {
            return Err(Corrupt("varint (too long)"));
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn get_bytes<'a>(buf: &'a [u8], pos: &mut usize, what: &'static str) -> Result<&'a [u8], Corrupt> {
    let len = usize::try_from(get_varint(buf, pos)?).map_err(|_| Corrupt(what))?;
    let end = pos.checked_add(len).filter(|&e| e <= buf.len()).ok_or(Corrupt(what))?;
    let s = &buf[*pos..end];
    *pos = end;
    Ok(s)
}

fn get_text(buf: &[u8], pos: &mut usize, what: &'static str) -> Result<String, Corrupt> {
    let bytes = get_bytes(buf, pos, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| Corrupt(what))
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Everything of an exchange but its id, which lives in the key (hot) or as a delta (cold).
fn put_body(out: &mut Vec<u8>, at_ms_field: u64, ex: &Exchange) {
    put_varint(out, at_ms_field);
    put_varint(out, ex.turn);
    let tools = if ex.tools.is_empty() { 0 } else { FLAG_TOOLS };
    out.push(if ex.interrupted { FLAG_INTERRUPTED } else { 0 } | tools);
    put_varint(out, ex.user.len() as u64);
    out.extend_from_slice(ex.user.as_bytes());
    put_varint(out, ex.assistant.len() as u64);
    out.extend_from_slice(ex.assistant.as_bytes());
    if !ex.tools.is_empty() {
        put_varint(out, ex.tools.len() as u64);
        out.extend_from_slice(ex.tools.as_bytes());
    }
}

fn get_body(buf: &[u8], pos: &mut usize, id: u64, at_ms: impl FnOnce(u64) -> u64) -> Result<Exchange, Corrupt> {
    let at = at_ms(get_varint(buf, pos)?);
    let turn = get_varint(buf, pos)?;
    let flags = *buf.get(*pos).ok_or(Corrupt("record flags"))?;
    *pos += 1;
    let user = get_text(buf, pos, "user text")?;
    let assistant = get_text(buf, pos, "assistant text")?;
    let tools = if flags & FLAG_TOOLS != 0 { get_text(buf, pos, "tool record")? } else { String::new() };
    Ok(Exchange { id, turn, at_ms: at, interrupted: flags & FLAG_INTERRUPTED != 0, user, assistant, tools })
}

/// Exchanges per independently compressed frame of a cold block: reading one exchange of a
/// block decompresses only its frame. Small frames alone compress poorly; compressing them
/// against the speaker's dictionary (earlier exchanges of the same speaker, which share its
/// words and phrases) makes them as small as whole blocks.
pub const FRAME_EXCHANGES: usize = 16;
/// Largest dictionary used (lz4 looks back at most 64 KiB).
pub const MAX_DICT_BYTES: usize = 64 * 1024;
const FORMAT_LZ4_DICT: u8 = 2;

/// Wraps a payload with its format byte, compressing it (against `dict` if given) when asked
/// and when that helps.
fn seal(payload: &[u8], compress: bool, dict: Option<&[u8]>, out: &mut Vec<u8>) {
    if compress {
        let (format, packed) = match dict {
            Some(d) if !d.is_empty() => (FORMAT_LZ4_DICT, lz4_flex::block::compress_prepend_size_with_dict(payload, d)),
            _ => (FORMAT_LZ4, lz4_flex::block::compress_prepend_size(payload)),
        };
        if packed.len() < payload.len() {
            out.push(format);
            out.extend_from_slice(&packed);
            return;
        }
    }
    out.push(FORMAT_RAW);
    out.extend_from_slice(payload);
}

fn unseal<'a>(value: &'a [u8], dict: &[u8]) -> Result<std::borrow::Cow<'a, [u8]>, Corrupt> {
    use std::borrow::Cow;
    let checked_size = |rest: &[u8]| -> Result<(), Corrupt> {
        // The size prefix is untrusted: refuse absurd sizes instead of allocating them.
        let (size, _) = lz4_flex::block::uncompressed_size(rest).map_err(|_| Corrupt("lz4 header"))?;
        if size > 64 * 1024 * 1024 { Err(Corrupt("lz4 size")) } else { Ok(()) }
    };
    match value.split_first() {
        Some((&FORMAT_RAW, rest)) => Ok(Cow::Borrowed(rest)),
        Some((&FORMAT_LZ4, rest)) => {
            checked_size(rest)?;
            lz4_flex::block::decompress_size_prepended(rest).map(Cow::Owned).map_err(|_| Corrupt("lz4 data"))
        }
        Some((&FORMAT_LZ4_DICT, rest)) => {
            if dict.is_empty() {
                return Err(Corrupt("compression dictionary (missing)"));
            }
            checked_size(rest)?;
            lz4_flex::block::decompress_size_prepended_with_dict(rest, dict)
                .map(Cow::Owned)
                .map_err(|_| Corrupt("lz4 data"))
        }
        _ => Err(Corrupt("value format")),
    }
}

/// The value of one hot-tier record.
pub fn encode_hot(ex: &Exchange, compress: bool) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16 + ex.user.len() + ex.assistant.len());
    put_body(&mut payload, ex.at_ms, ex);
    let mut out = Vec::with_capacity(payload.len() + 1);
    seal(&payload, compress, None, &mut out);
    out
}

/// Decodes a hot-tier record stored under `id`.
pub fn decode_hot(id: u64, value: &[u8]) -> Result<Exchange, Corrupt> {
    let payload = unseal(value, &[])?;
    let mut pos = 0;
    get_body(&payload, &mut pos, id, |v| v)
}

/// The records of one frame: ids as deltas from `first_id`, times as deltas from the previous.
fn frame_payload(first_id: u64, exchanges: &[Exchange], out: &mut Vec<u8>) {
    let (mut prev_id, mut prev_ms) = (first_id, 0i64);
    for ex in exchanges {
        put_varint(out, ex.id - prev_id);
        let ms = ex.at_ms as i64;
        put_body(out, zigzag(ms.wrapping_sub(prev_ms)), ex);
        prev_id = ex.id;
        prev_ms = ms;
    }
}

fn decode_frame(first_id: u64, payload: &[u8], out: &mut Vec<Exchange>) -> Result<(), Corrupt> {
    let (mut pos, mut prev_id, mut prev_ms) = (0usize, first_id, 0i64);
    while pos < payload.len() {
        let id = prev_id.checked_add(get_varint(payload, &mut pos)?).ok_or(Corrupt("block id"))?;
        let ex = get_body(payload, &mut pos, id, |v| prev_ms.wrapping_add(unzigzag(v)) as u64)?;
        prev_id = id;
        prev_ms = ex.at_ms as i64;
        out.push(ex);
    }
    Ok(())
}

/// Raw bytes of exchanges in the block format: what a speaker's dictionary is made of, so it
/// holds exactly the byte patterns frames will contain.
pub fn dictionary_from(exchanges: &[Exchange]) -> Vec<u8> {
    let mut raw = Vec::new();
    for frame in exchanges.chunks(FRAME_EXCHANGES) {
        frame_payload(frame[0].id, frame, &mut raw);
    }
    let cut = raw.len().saturating_sub(MAX_DICT_BYTES);
    raw.split_off(cut)
}

/// What a cold block says about itself without being decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// Exchanges in the block.
    pub count: u64,
    /// Id of the newest exchange in the block.
    pub last_id: u64,
    /// Newest timestamp in the block.
    pub newest_ms: u64,
    /// The speaker dictionary the frames were compressed against (0: none).
    pub dict: u32,
    /// First id and byte range of each frame.
    frames: Vec<(u64, usize, usize)>,
}

impl BlockHeader {
    /// Id of the oldest exchange in the block.
    pub fn first_id(&self) -> u64 {
        self.frames.first().map_or(self.last_id, |f| f.0)
    }
}

/// Encodes consecutive exchanges (ascending ids, at least one) as a cold block whose key holds
/// `first_key_id` (≤ the first id), in frames compressed against `dict` (id, bytes) if given.
pub fn encode_block(first_key_id: u64, exchanges: &[Exchange], compress: bool, dict: Option<(u32, &[u8])>) -> Vec<u8> {
    let mut frames = Vec::new();
    let mut table = Vec::new();
    let mut payload = Vec::new();
    let mut prev_first = first_key_id;
    for frame in exchanges.chunks(FRAME_EXCHANGES) {
        let first = frame[0].id;
        payload.clear();
        frame_payload(first, frame, &mut payload);
        let start = frames.len();
        seal(&payload, compress, dict.map(|d| d.1), &mut frames);
        put_varint(&mut table, first - prev_first);
        put_varint(&mut table, (frames.len() - start) as u64);
        prev_first = first;
    }
    let mut out = Vec::with_capacity(frames.len() + table.len() + 24);
    put_varint(&mut out, exchanges.len() as u64);
    put_varint(&mut out, exchanges.last().map_or(first_key_id, |e| e.id));
    put_varint(&mut out, exchanges.iter().map(|e| e.at_ms).max().unwrap_or(0));
    put_varint(&mut out, u64::from(dict.map_or(0, |d| d.0)));
    put_varint(&mut out, exchanges.len().div_ceil(FRAME_EXCHANGES) as u64);
    out.extend_from_slice(&table);
    out.extend_from_slice(&frames);
    out
}

/// Reads a cold block's header (stored under `first_key_id`).
pub fn block_header(first_key_id: u64, value: &[u8]) -> Result<BlockHeader, Corrupt> {
    let mut pos = 0;
    let count = get_varint(value, &mut pos)?;
    let last_id = get_varint(value, &mut pos)?;
    let newest_ms = get_varint(value, &mut pos)?;
    let dict = u32::try_from(get_varint(value, &mut pos)?).map_err(|_| Corrupt("block dictionary"))?;
    let n = get_varint(value, &mut pos)?;
    if n > count.max(1) {
        return Err(Corrupt("block frame count"));
    }
    let mut frames = Vec::with_capacity(n as usize);
    let mut first = first_key_id;
    let mut lens = Vec::with_capacity(n as usize);
    for _ in 0..n {
        first = first.checked_add(get_varint(value, &mut pos)?).ok_or(Corrupt("frame id"))?;
        let len = usize::try_from(get_varint(value, &mut pos)?).map_err(|_| Corrupt("frame length"))?;
        lens.push((first, len));
    }
    for (first, len) in lens {
        let end = pos.checked_add(len).filter(|&e| e <= value.len()).ok_or(Corrupt("frame length"))?;
        frames.push((first, pos, end));
        pos = end;
    }
    Ok(BlockHeader { count, last_id, newest_ms, dict, frames })
}

/// Decodes every exchange of a cold block, oldest first; `dict` is the dictionary its header
/// names (empty when none).
pub fn decode_block(first_key_id: u64, value: &[u8], dict: &[u8]) -> Result<Vec<Exchange>, Corrupt> {
    let header = block_header(first_key_id, value)?;
    let mut out = Vec::with_capacity(usize::try_from(header.count).unwrap_or(0).min(65_536));
    for &(first, start, end) in &header.frames {
        decode_frame(first, &unseal(&value[start..end], dict)?, &mut out)?;
    }
    if out.len() as u64 != header.count {
        return Err(Corrupt("block count"));
    }
    Ok(out)
}

/// Finds one exchange in a cold block, decompressing only its frame.
pub fn find_in_block(first_key_id: u64, value: &[u8], dict: &[u8], id: u64) -> Result<Option<Exchange>, Corrupt> {
    let header = block_header(first_key_id, value)?;
    let i = header.frames.partition_point(|f| f.0 <= id);
    let Some(&(first, start, end)) = i.checked_sub(1).and_then(|i| header.frames.get(i)) else { return Ok(None) };
    let mut exs = Vec::with_capacity(FRAME_EXCHANGES);
    decode_frame(first, &unseal(&value[start..end], dict)?, &mut exs)?;
    Ok(exs.into_iter().find(|e| e.id == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: u64, user: &str, assistant: &str) -> Exchange {
        Exchange {
            id,
            turn: id * 2,
            at_ms: 1_700_000_000_000 + id * 1500,
            interrupted: id.is_multiple_of(3),
            user: user.into(),
            assistant: assistant.into(),
            // Some with a tool record, most without (as written before records had one).
            tools: if id.is_multiple_of(4) {
                format!("calculate {{\"expression\":\"{id}*2\"}} → {}", id * 2)
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut pos = 0;
            assert_eq!(get_varint(&buf, &mut pos), Ok(v));
            assert_eq!(pos, buf.len());
        }
        assert!(get_varint(&[0x80, 0x80], &mut 0).is_err());
    }

    #[test]
    fn hot_records_and_blocks_round_trip_with_and_without_compression() {
        let exs: Vec<_> =
            (5..40).map(|i| ex(i, &format!("tell me about the garden {i}"), "the garden is lovely today")).collect();
        let dict = dictionary_from(&exs);
        for compress in [false, true] {
            assert_eq!(decode_hot(7, &encode_hot(&exs[2], compress)).unwrap(), Exchange { id: 7, ..exs[2].clone() });
            for d in [None, Some((3, dict.as_slice()))] {
                let block = encode_block(3, &exs, compress, d);
                let bytes = d.map_or(&[][..], |d| d.1);
                assert_eq!(decode_block(3, &block, bytes).unwrap(), exs);
                let h = block_header(3, &block).unwrap();
                assert_eq!((h.count, h.last_id), (35, 39));
                for e in &exs {
                    assert_eq!(find_in_block(3, &block, bytes, e.id).unwrap().as_ref(), Some(e));
                }
                assert_eq!(find_in_block(3, &block, bytes, 2).unwrap(), None);
            }
        }
        let plain = encode_block(5, &exs, true, None).len();
        assert!(plain < encode_block(5, &exs, false, None).len() / 2);
        assert!(encode_block(5, &exs, true, Some((1, &dict))).len() < plain);
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let exs = [ex(1, "a walk in the park", "the park is nice"), ex(2, "a walk in the park", "it is")];
        let dict = dictionary_from(&exs);
        let block = encode_block(1, &exs, true, Some((1, &dict)));
        for cut in 0..block.len() {
            let _ = decode_block(1, &block[..cut], &dict);
        }
        let mut flipped = block.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x5a;
            let _ = decode_block(1, &flipped, &dict);
            let _ = find_in_block(1, &flipped, &dict, 2);
            flipped[i] ^= 0x5a;
        }
        assert!(decode_block(1, &block, &[]).is_err(), "a block needing its dictionary must not decode without it");
        assert!(decode_hot(1, &[9, 1, 2]).is_err());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }
}
