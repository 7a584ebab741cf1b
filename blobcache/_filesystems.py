"""Which file systems a store may be written on: the ``f_type`` statfs(2) gives
for the store's directory, against the mounts where flock or fsync may not hold.

Every guarantee of the store rests on two promises of its file system: an flock
one process holds excludes every other (one writer; the temp files a sweeper
leaves alone), and fsync returns only once the bytes would survive a power cut.
A local file system keeps both. A network file system keeps them only as far as
its server, its client and the mount's options do, which a program cannot see;
a FUSE file system only as far as its daemon implements them. A writer there
could corrupt the store without a sign (huggingface_hub PR #4306: flock doing
nothing on Lustre and NFS corrupted its cache), so ``require_trusted`` refuses
such a directory before anything is made or changed in it, unless the caller
says the file system keeps both (``Options.trust_filesystem``).

The numbers below are the kernel's, not the store's bytes (those are
``_format``'s, FORMAT.md's). Only Linux is looked at; see ``statfs``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from .errors import UnsafeFilesystemError

# f_type of statfs(2) -> the name a message gives: each a file system where
# flock or fsync may not mean what the store needs, for the reason above it.
UNTRUSTED: dict[int, str] = {
    # NFS_SUPER_MAGIC (include/uapi/linux/magic.h). flock is sent to the server
    # as a byte-range lock, or kept local to one client (mount option
    # local_lock, nolock); fsync is as durable as the server's export ("async"
    # exports acknowledge before the disk has the bytes).
    0x6969: "NFS",
    # SMB_SUPER_MAGIC (magic.h), the old smbfs; CIFS_MAGIC_NUMBER and
    # SMB2_MAGIC_NUMBER (statfs(2); fs/smb/client): the SMB client. flock is
    # emulated with SMB byte-range locks, or local only (nobrl); with
    # nostrictsync an fsync sends the server no flush.
    0x517B: "SMB",
    0xFF534D42: "CIFS (SMB)",
    0xFE534D42: "SMB2",
    # FUSE_SUPER_MAGIC (statfs(2); fs/fuse/inode.c), fuse and fuseblk alike:
    # sshfs, gcsfuse, s3fs, rclone mount. flock reaches the daemon only if it
    # implements locks, else the kernel keeps it local; a daemon that does not
    # implement fsync makes every later fsync succeed doing nothing (the kernel
    # takes its ENOSYS for "nothing to do", fs/fuse/file.c).
    0x65735546: "FUSE (virtiofs too: Docker Desktop and Kata shares)",
    # LL_SUPER_MAGIC (Lustre's lustre_user.h). flock fails by default, and
    # succeeds on one node only with -o localflock.
    0x0BD00BD0: "Lustre",
    # GPFS_SUPER_MAGIC (coreutils' stat.c; IBM Storage Scale): a cluster file
    # system whose locking across nodes and write-back are its configuration's.
    0x47504653: "GPFS",
    # V9FS_MAGIC (magic.h): 9P, WSL2's Windows drives (/mnt/c) and virtio-9p
    # shares of virtual machines. Locks stay in the client unless the mount
    # passes them on; fsync is as durable as the server (the host) makes it.
    0x01021997: "9P",
    # CEPH_SUPER_MAGIC (magic.h), the kernel CephFS client (ceph-fuse is FUSE).
    # It implements flock across clients; it is here as a network file system
    # whose guarantees are the cluster's, which blobcache has not been tested on.
    0x00C36400: "Ceph",
    # AFS_SUPER_MAGIC (magic.h; OpenAFS) and AFS_FS_MAGIC ("kAFS", the kernel's
    # client). AFS stores a file on the server at close or fsync, and other
    # clients see the version of the last close; its locks are whole-file
    # locks of the server, or local to the client.
    0x5346414F: "AFS",
    0x6B414653: "AFS (kAFS)",
}


class Statfs(ctypes.Structure):
    """The head of glibc's and musl's ``struct statfs`` (statfs(2)): ``f_type``
    and ``f_bsize`` are each an ``__fsword_t``, a C long on every Linux ABI
    CPython runs on but s390x, where both are 32 bits (its kernel's statfs.h
    mixes widths). The rest (block counts, fsid, flags) is not read: the pad
    leaves room for the largest layout (120 bytes on x86-64), twice over."""

    _word = ctypes.c_uint if platform.machine() == "s390x" else ctypes.c_long
    _fields_ = [("f_type", _word), ("f_bsize", _word), ("_rest", ctypes.c_char * 256)]


def statfs(path: str) -> Statfs | None:
    """statfs(2) of ``path``; None off Linux, or when the call fails.

    Off Linux nothing is refused: other systems spell the file system's type
    otherwise (the BSDs and macOS by name, in ``f_fstypename``), and a check
    that cannot tell must not stop a store it knows nothing against. A failed
    call (the directory removed meanwhile, no search permission) is for the
    open that follows to report, as it reports it without this check.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        result = Statfs()
        if libc.statfs(os.fsencode(path), ctypes.byref(result)) != 0:
            return None
    except (OSError, AttributeError):  # no libc to call, or no statfs in it
        return None
    return result


def statfs_type(path: str) -> int | None:
    """The file system type (``f_type``) of the file system holding ``path``,
    as an unsigned 32-bit number (a 32-bit long makes CIFS's negative); None
    when it cannot be told (see ``statfs``)."""
    result = statfs(path)
    return None if result is None else int(result.f_type) & 0xFFFF_FFFF


def require_trusted(root: str, looked_at: str) -> None:
    """Refuse to write the store at ``root`` if ``looked_at`` (``root``, or its
    nearest existing ancestor while ``root`` is yet to be made) is on a file
    system where flock or fsync may not hold. Only that directory's file
    system is asked: a mount inside the store (a blobs/ mounted from elsewhere
    by hand) is not looked for.

    :raises UnsafeFilesystemError: it is (nothing was made or changed).
    """
    f_type = statfs_type(looked_at)
    name = None if f_type is None else UNTRUSTED.get(f_type)
    if name is not None:
        raise UnsafeFilesystemError(root, name)
