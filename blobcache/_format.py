"""Every name, size and magic number of the on-disk format, as FORMAT.md specifies it.

Nothing else in the package defines a constant of the format: the other modules
import these. Change one here and in FORMAT.md in the same commit.
"""

from __future__ import annotations

import struct
from typing import Final

# --- The store root -----------------------------------------------------------
# <root>/FORMAT  marker: identifies a blobcache store and its format version.
# <root>/blobs/  the key directories, fanned out two levels.
MARKER_NAME: Final = "FORMAT"
MARKER_CONTENT: Final = b"blobcache 4\n"  # 12 bytes: "blobcache", space, version "4", newline
# Stores of the formats before, opened, upgraded by a writer (FORMAT.md, "Versions"):
MARKER_CONTENT_V3: Final = b"blobcache 3\n"  # the same files; every record's codec 0
MARKER_CONTENT_V2: Final = b"blobcache 2\n"  # the same files; record flags and kinds 4, 5 unused
MARKER_CONTENT_V1: Final = b"blobcache 1\n"  # 20-byte record headers, BCL1 segments
MARKERS_READ: Final = (MARKER_CONTENT, MARKER_CONTENT_V3, MARKER_CONTENT_V2, MARKER_CONTENT_V1)
# <root>/LOCK    empty; every open handle holds a shared flock on it.
LOCK_NAME: Final = "LOCK"
# <root>/STATE   the log's shared state, mapped by every writer; flocked to append.
# <root>/COMPACT empty; flocked by the one process compacting the log.
STATE_NAME: Final = "STATE"
COMPACT_NAME: Final = "COMPACT"
# STATE, 96 bytes (u64 little-endian each, after the magic, but wakes), in a file
# of one page: a hint, never fsynced, rebuilt from the log whenever it disagrees with it.
#   offset  size  field
#   0       4     magic b"BCS1", then 4 zero bytes
#   8       8     next: the next sequence number to hand out
#   16      8     segment: the number of the active segment
#   24      8     appended: where its last whole record ends
#   32      8     acked: how far its records are acknowledged (fdatasynced, with
#                 "fsync"): what other processes may see
#   40      8     pending: where the append under way ends (> appended: its writer died)
#   48      8     allocated: how far it is zero-filled ahead, durably
#   56      8     generation: compactions so far
#   64      8     synced: how far segment `synced_in` is known fdatasynced
#   72      8     synced_in: the segment `synced` is of (another: nothing known)
#   80      8     troubles: a random value, new at every failed fdatasync or write
#                 of the active segment, cut of it, failed settle
#   88      4     wakes: a u32 counter, the word that processes waiting for
#                 `synced` sleep on (futex); then 4 zero bytes
STATE_MAGIC: Final = b"BCS1"
STATE_LAYOUT: Final = struct.Struct("<4s4xQQQQQQQQQQI4x")
# The byte of STATE whose open file description lock (fcntl F_OFD_SETLK, apart
# from the file's flock) the one process fdatasyncing the log for all holds.
STATE_SYNC_BYTE: Final = 4095
BLOBS_DIR: Final = "blobs"

# --- Key directories ------------------------------------------------------------
# blobs/<h[0:2]>/<h[2:4]>/<h>/ where h is the 32 lower-case hex digits of
# xxh3_128(type tag + key bytes), seed 0. The tag makes "a" and b"a" two keys.
KEY_TAG_STR: Final = b"s"  # str keys, encoded as UTF-8
KEY_TAG_BYTES: Final = b"b"  # bytes keys, as they are
KEY_HASH_HEX_DIGITS: Final = 32
FANOUT_HEX_DIGITS: Final = 2  # per level; two levels: 256 x 256 directories at most
MAX_KEY_BYTES: Final = 65535  # encoded length; at least 4 KiB as promised, fits a u16 later

# --- The key file: <keydir>/key -------------------------------------------------
# Written once, durably, before any version of the key is published.
#   offset  size  field
#   0       4     magic b"BCK1"
#   4       1     tag: b"s" (str) or b"b" (bytes)
#   5       4     key length n, u32 little-endian
#   9       n     key bytes
#   9+n     8     xxh3_64 (seed 0) of bytes [0, 9+n), u64 little-endian
KEY_FILE_NAME: Final = "key"
KEY_FILE_MAGIC: Final = b"BCK1"
KEY_FILE_HEADER: Final = struct.Struct("<4scI")  # magic, tag, key length: 9 bytes
KEY_FILE_TRAILER: Final = struct.Struct("<Q")  # checksum: 8 bytes

# --- Version files ------------------------------------------------------------------
# A version file holds exactly the value's bytes; its name carries the metadata,
# so a single rename publishes data and metadata together:
#   v-<seq>-<length>-<checksum>     each field 16 lower-case hex digits
# seq is the store-wide sequence number (highest wins), length the value's size
# in bytes, checksum xxh3_64 (seed 0) of the value bytes. (A delete is a record
# in the log, whichever layout held the value.)
VERSION_PREFIX: Final = "v-"
# b-<seq>-<length>-<checksum>: a version bound to its record: put by a batch, or
# with an expiry (which only the record holds). It counts only while the log holds
# its version record (flag BOUND), which commits it, with the rest of its batch
# (FORMAT.md, "Batches"); compaction copies that record forward while it is live.
BATCH_VERSION_PREFIX: Final = "b-"
FIELD_HEX_DIGITS: Final = 16
FIELD_SEPARATOR: Final = "-"
VERSION_NAME_LEN: Final = 2 + 3 * FIELD_HEX_DIGITS + 2  # 52
MAX_SEQ: Final = 2**64 - 1

# --- Temp files -----------------------------------------------------------------
# .tmp-<16 hex random>: a version (or key file) being written. The writer holds an
# exclusive flock on it until it is renamed or removed, so a temp file nobody
# holds is an orphan of a crashed writer and may be deleted.
TEMP_PREFIX: Final = ".tmp-"
TEMP_RANDOM_HEX_DIGITS: Final = 16

# --- The log of small values: <root>/log/<segment>.log -------------------------------
# <segment> is 16 hex digits, a number that grows with each new segment. The
# highest-numbered segment is the active one (the only one written to, and the
# only one whose tail may be torn); every other is sealed and immutable.
LOG_DIR: Final = "log"
SEGMENT_SUFFIX: Final = ".log"
SEGMENT_NAME_LEN: Final = FIELD_HEX_DIGITS + len(SEGMENT_SUFFIX)  # 20
# Segment header, 16 bytes:
#   offset  size  field
#   0       4     magic b"BCL2" (format 1's segments: b"BCL1", still read)
#   4       1     flags: bit 0 = COMPACTED (this segment replaces every lower-numbered one)
#   5       3     zero
#   8       8     xxh3_64 of bytes [0, 8), u64 little-endian
SEGMENT_MAGIC: Final = b"BCL2"
SEGMENT_MAGIC_V1: Final = b"BCL1"
SEGMENT_HEADER: Final = struct.Struct("<4sB3xQ")
SEGMENT_FLAG_COMPACTED: Final = 0x01
# Record, 22-byte header, the key's n bytes, 8 bytes of expiry if flag EXPIRES,
# then the value's m bytes (format 1: the first 20 bytes only, no flags or codec):
#   offset  size  field
#   0       4     checksum: the low 32 bits of xxh3_64 of bytes [4, 22 + n + m),
#                 everything after this field
#   4       8     seq, the store-wide sequence number
#   12      4     m, the value's length (0 for a delete)
#   16      1     type: 1 = put, 2 = delete, 3 = version (a value in a file),
#                 4 = evict (a delete made by max_bytes), 5 = pin (m = 0)
#   17      1     key tag: b"s" or b"b"
#   18      2     n, the key's length
#   20      1     flags, bits below (a reader refuses a record with a bit it
#                 does not know: written by a newer blobcache)
#   21      1     codec: how the value's bytes encode it (CODEC_* below); a
#                 reader refuses a codec it does not know
#   22+n    8     expires (flag EXPIRES only): u64 little-endian, milliseconds
#                 since the Unix epoch (wall clock), when the value stops being served
# 32 bits of checksum, as LevelDB's CRC32C: a torn or flipped record goes
# unnoticed with odds of 1 in 4 billion, and a 100-byte value's record is 12%
# smaller than with 64 bits.
RECORD_HEADER: Final = struct.Struct("<IQIBcHBB")
RECORD_HEADER_V1: Final = struct.Struct("<IQIBcH")
RECORD_CHECKSUM_BYTES: Final = 4
RECORD_CHECKSUM_MASK: Final = 0xFFFFFFFF
RECORD_PUT: Final = 1
RECORD_DELETE: Final = 2
RECORD_VERSION: Final = 3
RECORD_EVICT: Final = 4
RECORD_PIN: Final = 5
RECORD_KINDS: Final = (RECORD_PUT, RECORD_DELETE, RECORD_VERSION, RECORD_EVICT, RECORD_PIN)
# Record flags:
#   bit 0  MORE     one of a batch, and more of the batch follow it: a reader
#                   applies a batch once it has read its last record (MORE clear),
#                   and none of it if the batch is cut short
#   bit 1  EXPIRES  the 8-byte expiry follows the key (puts and versions only)
#   bit 2  PINNED   a put or version of a pinned key; a pin record: pinned (set)
#                   or unpinned (clear)
#   bit 3  BOUND    a version record whose file has a b- name: it counts only
#                   while this record is in the log (a batch's, or one expiring)
FLAG_MORE: Final = 0x01
FLAG_EXPIRES: Final = 0x02
FLAG_PINNED: Final = 0x04
FLAG_BOUND: Final = 0x08
RECORD_FLAGS: Final = FLAG_MORE | FLAG_EXPIRES | FLAG_PINNED | FLAG_BOUND  # every bit known
EXPIRES: Final = struct.Struct("<Q")
# A version record's value, m = 16: the version file's length and xxh3_64, u64
# each; with seq they name the file (v-<seq>-<length>-<checksum>, or for one of
# a batch b-<seq>-<length>-<checksum>).
VERSION_BODY: Final = struct.Struct("<QQ")
MAX_INLINE_VALUE: Final = 2**32 - 1  # m is a u32
# Record codecs (byte 21): what the value's bytes are. The bytes themselves are
# the same whichever layout holds them (log record or version file), so path(key)
# of a typed large value is a file its own format's reader opens.
CODEC_RAW: Final = 0  # bytes put as they are (put, put_file, put_stream)
CODEC_NPY: Final = 1  # a numpy .npy file, format 1.0 or 2.0, never an object dtype
CODEC_SAFETENSORS: Final = 2  # a safetensors file: u64 header length, JSON header, data
CODEC_JSON: Final = 3  # UTF-8 JSON of None, bool, int, float, str, list, str-keyed dict
CODEC_PICKLE: Final = 4  # pickle protocol 5: only with serializer="pickle", read only so
CODECS: Final = (CODEC_RAW, CODEC_NPY, CODEC_SAFETENSORS, CODEC_JSON, CODEC_PICKLE)

# --- The index snapshot (FORMAT.md, "The index snapshot") -------------------------
# <root>/INDEX  what open needs to know of the log up to a position, written by
# close(), gc() and compaction (never by a put); optional: without it, or when
# it does not fit the log, open replays the whole log.
SNAPSHOT_NAME: Final = "INDEX"
SNAPSHOT_MAGIC: Final = b"BCX1"
SNAPSHOT_VERSION: Final = 2  # 2: the extra section ends with the directory book
# The header, 96 bytes (u64 little-endian each, but magic and version):
#   offset  size  field
#   0       4     magic b"BCX1"
#   4       4     version: 2 (u32)
#   8       8     segment: the log segment the snapshot covers up to
#   16      8     offset: in it, where the first record not covered starts
#   24      8     max_seq: no record covered, nor any version file it knows, is numbered above it
#   32      8     made: when it was written, ms since the epoch (for people)
#   40      8     segments: how many segment entries follow the header
#   48      8     entries: how many hashes, then as many entries, follow them
#   56      8     extra: the length of the extra section, after the entries
#   64      8     xxh3_64 of the segment entries
#   72      8     xxh3_64 of the hashes and the entries
#   80      8     xxh3_64 of the extra section
#   88      8     xxh3_64 of bytes 0-87
SNAPSHOT_HEADER: Final = struct.Struct("<4sIQQQQQQQQQQQ")
# A segment covered, 48 bytes: number; tail: xxh3_64 of its last SNAPSHOT_TAIL
# bytes covered (all of them, header included, in a shorter one), which a
# compaction's output in its place does not match (nor its header's flags:
# COMPACTED; the inode would not do, a copied store has new ones); end (the bytes covered:
# the whole file but in the last one); total and live record bytes (the log's
# book); its records' header size; its header's flags.
SNAPSHOT_SEGMENT: Final = struct.Struct("<QQQQQII")
SNAPSHOT_TAIL: Final = 4096
# The hashes: xxh3_64(key tag + key bytes), seed 0, one u64 per live key in the
# log, ascending; entry i is the key of hash i, 24 bytes: the record's seq;
# segment << 40 | offset; flags << 40 | the value's length.
SNAPSHOT_HASH: Final = struct.Struct("<Q")
SNAPSHOT_ENTRY: Final = struct.Struct("<QQQ")
SNAPSHOT_PLACE_SHIFT: Final = 40  # segment << 40 | offset; flags << 40 | length
SNAPSHOT_EAGER: Final = 0x01  # the value expires or is pinned: loaded at open
# The extra section: marshal (version 4) of a tuple of lists, see _snapshot.

# --- The remote tier (FORMAT.md, "The remote tier") ---------------------------------
# Objects under the remote's prefix:
#   blobcache-remote               the marker, created once
#   r/<key hash>/<version>         a key's version record; version: 20 decimal digits
#   b/<xxh3-128 hex>-<length>      a large value, content-addressed
REMOTE_MARKER_NAME: Final = "blobcache-remote"
REMOTE_MARKER_CONTENT: Final = b"blobcache-remote 1\n"
REMOTE_RECORDS: Final = "r"
REMOTE_BLOBS: Final = "b"
REMOTE_VERSION_DIGITS: Final = 20
# A record: this line, a JSON header of one line, then the inline value's bytes.
REMOTE_RECORD_MAGIC: Final = b"blobcache-record 1\n"
# <root>/REMOTE  the local store's account of the remote: which remote version holds
# which local value, and the deletes not yet uploaded (write-back). Lines of text:
#   "remote <url>"                         first line: the remote it is about
#   "V <key hash> <version> <seq> <crc>"   remote <version> holds local value <seq>
#   "D <key hash> <key b64> <crc>"         a local delete to upload (write-back)
# <crc>: 8 hex digits, xxh32 of the line before its space. A line that fails it
# (torn by a crash) is skipped: the key is then checked against the remote again.
REMOTE_LEDGER_NAME: Final = "REMOTE"
# A key's remote halves (put, read-through, refresh) hold an OFD lock on byte
# REMOTE_LOCK_BASE + (the key hash's first 15 hex digits) of LOCK: above memoize's
# bytes (below 2^62), never written.
REMOTE_LOCK_BASE: Final = 1 << 62
