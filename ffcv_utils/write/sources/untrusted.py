"""Reading what users hand the writer without trusting it: tar archives (ImageNet's, its
per-class tars, webdataset shards, the devkit) and image folders, with every loop and every
read bounded.

Tars are parsed here from their 512-byte headers instead of by ``tarfile``, which loops forever
on a negative size (CVE-2025-8194) and takes quadratic time on a crafted pax header
(CVE-2024-6232) in the Pythons we run on. Each header costs one bounded step: sizes are
octal or non-negative base-256, every member ends inside its archive, extension headers (pax,
GNU long names) are capped and parsed in linear time, and an archive has at most
``MEMBERS_CAP`` headers, so a scan is linear in the archive's size. Only regular members are
returned; sparse, link and device members are reported as skipped, directories ignored.

Folders are walked with the same care: regular files only (a FIFO or a device is never opened
for reading; ``read_regular`` opens non-blocking and checks the file type after opening), symbolic
links followed only inside the root and never twice into the same folder, hidden entries pruned
before descending, and a cap on the entries one walk visits.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from ...base import files
from ...base.cli import UserError
from ...base.files import file_kind, open_regular

BLOCK = 512
MEMBER_CAP = 1 << 30  # bytes of one archive member or file read into memory
MEMBERS_CAP = 5_000_000  # headers in one archive (ImageNet's val tar has 50,000)
EXTENSION_CAP = 1 << 20  # bytes of one pax or GNU long-name header
EXPAND_CAP = 256 << 20  # bytes a compressed tar (the devkit, 2.5 MB packed) may expand to
ENTRIES_CAP = 10_000_000  # entries one folder walk visits
KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"1": "hard link", b"2": "symbolic link",
         b"3": "character device", b"4": "block device", b"5": "dir", b"6": "FIFO",
         b"S": "sparse"}


@dataclass(frozen=True, slots=True)
class Member:
    """A member of an archive: its name, where its bytes lie in the archive file, how many,
    and its kind (``file`` for a regular file)."""

    name: str
    offset: int
    size: int
    kind: str = "file"


class _Region:
    """Forward reads of a tar's bytes: a slice ``[start, end)`` of a seekable file, or a
    decompressing stream (``end`` None) that may yield at most ``expand_cap`` bytes."""

    def __init__(self, f: BinaryIO, where: str, start: int = 0, end: int | None = None,
                 expand_cap: int = EXPAND_CAP):
        self.f, self.where, self.start, self.end, self.pos = f, where, start, end, 0
        self.expand_cap = expand_cap

    def read(self, n: int) -> bytes:
        if self.end is None:
            if self.pos + n > self.expand_cap:
                raise UserError(f"{self.where}: expands to more than "
                                f"{self.expand_cap >> 20:,} MiB (a decompression bomb?)")
            data = self.f.read(n)
        else:
            self.f.seek(self.start + self.pos)
            data = self.f.read(max(0, min(n, self.end - self.start - self.pos)))
        self.pos += len(data)
        return data

    def skip_to(self, pos: int) -> None:
        while self.end is None and self.pos < pos:
            if not self.read(min(pos - self.pos, 1 << 20)):
                break
        self.pos = max(self.pos, pos)

    def fits(self, pos: int) -> bool:
        return self.end is None or self.start + pos <= self.end


def _damaged(where: str, offset: int, why: str) -> UserError:
    if offset == 0:
        return UserError(f"cannot read {where} as a tar archive: not an uncompressed tar "
                         f"archive ({why})")
    return UserError(f"{where}: damaged tar archive at byte {offset}: {why}")


def _number(field: bytes) -> int:
    """A header's number: octal digits, or GNU base-256 (first byte 0x80); negative ones
    (base-256 0xff, or a sign) raise ValueError."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if text.strip(b"01234567"):
        raise ValueError(f"not a non-negative octal number: {field!r}")
    return int(text or b"0", 8)


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored == unsigned:
        return True
    return stored == unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _header(block: bytes, where: str, offset: int) -> tuple[str, bytes, int]:
    """``(name, type flag, size)`` of one header block, checked."""
    try:
        if not _checksum_ok(block):
            raise ValueError("bad header checksum")
        size = _number(block[124:136])
    except ValueError as e:
        raise _damaged(where, offset, str(e)) from None
    name = _text(block[:100])
    if block[257:263] == b"ustar\0" and block[345] != 0:  # POSIX ustar: a name prefix
        name = _text(block[345:500]) + "/" + name
    return name, block[156:157], size


def _pax(payload: bytes, where: str, offset: int) -> dict[str, str]:
    """The ``length key=value\\n`` records of a pax header, in one linear pass."""
    out, pos = {}, 0
    while pos < len(payload) and payload[pos] != 0:
        space = payload.find(b" ", pos, pos + 21)
        digits = payload[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _damaged(where, offset, "malformed pax header")
        end = pos + int(digits)
        key, eq, value = payload[space + 1:end - 1].partition(b"=")
        if end > len(payload) or end <= space + 1 or payload[end - 1] != 10 or not eq:
            raise _damaged(where, offset, "malformed pax header")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return out


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _sparse_blocks(region: _Region, block: bytes, where: str, offset: int) -> int:
    """Bytes of the extra sparse-map blocks after an old GNU sparse header (each block says
    whether another follows), read and bounded like headers."""
    extra, more = 0, block[482]
    while more:
        nxt = region.read(BLOCK)
        if len(nxt) < BLOCK or extra >= EXTENSION_CAP:
            raise _damaged(where, offset, "sparse map runs past the end")
        extra, more = extra + BLOCK, nxt[504]
    return extra


def _extension(region: _Region, flag: bytes, size: int, where: str, offset: int, ext: dict):
    """Read a pax (``x``/``g``) or GNU long-name (``L``/``K``) header's data into ``ext``."""
    if size > EXTENSION_CAP:
        raise _damaged(where, offset, f"extended header of {size} bytes")
    payload = region.read(_padded(size))[:size]
    if len(payload) < size:
        raise _damaged(where, offset, "archive ends inside a header")
    if flag == b"x":
        ext.update(_pax(payload, where, offset))
    elif flag == b"L":
        ext["path"] = _text(payload)


def _member(name: str, flag: bytes, size: int, ext: dict, data: int) -> Member:
    name = ext.get("path", name)
    kind = KINDS.get(flag, f"type {flag!r}")
    if kind == "file" and name.endswith("/"):
        kind = "dir"
    if any(k.startswith("GNU.sparse.") for k in ext):
        kind = "sparse"
    while name.startswith("./"):
        name = name[2:]
    return Member(name, data, size, kind)


def _members(region: _Region) -> Iterator[Member]:
    """Every member of a tar, in archive order, offsets from the start of the file; the
    data of a member may be read (from the same region) before the next is asked for."""
    offset, count, ext, where = 0, 0, {}, region.where
    while True:
        block = region.read(BLOCK)
        if not block or block == bytes(BLOCK):
            return
        if len(block) < BLOCK:
            raise _damaged(where, offset, "archive ends inside a header")
        count += 1
        if count > MEMBERS_CAP:
            raise UserError(f"{where}: more than {MEMBERS_CAP:,} members")
        name, flag, size = _header(block, where, offset)
        data = offset + BLOCK
        if flag == b"S":
            data += _sparse_blocks(region, block, where, offset)
        extension = flag in (b"x", b"g", b"L", b"K")
        if "size" in ext and not extension:  # a pax size is the next member's
            if not ext["size"].isdigit() or len(ext["size"]) > 19:
                raise _damaged(where, offset, f"bad pax size {ext['size'][:40]!r}")
            size = int(ext["size"])
        if not region.fits(data + size):
            raise _damaged(where, offset, f"member of {size} bytes runs past the end")
        if extension:
            _extension(region, flag, size, where, offset, ext if flag != b"g" else {})
        else:
            yield _member(name, flag, size, ext, region.start + data)
            ext = {}
        offset = data + _padded(size)
        region.skip_to(offset)


def read_regular(path: str | Path, cap: int = MEMBER_CAP) -> bytes:
    """The bytes of a regular file of at most ``cap`` (1 GiB) bytes; else OSError saying why."""
    return files.read_regular(path, cap)


def open_tar(path: str | Path) -> BinaryIO:
    """An archive opened by ``open_regular``; a one-line refusal when it cannot be."""
    try:
        return open_regular(path)
    except OSError as e:
        raise UserError(f"cannot read {path} as a tar archive: {e.strerror or e}") from None


def tar_members(f: BinaryIO, where: str, start: int = 0, size: int | None = None
                ) -> Iterator[Member]:
    """The members of the uncompressed tar in ``f`` (or in its bytes ``[start, start+size)``,
    a tar inside a tar), offsets from the start of ``f``."""
    end = os.fstat(f.fileno()).st_size if size is None else start + size
    return _members(_Region(f, where, start, end))


def skip_reason(m: Member, cap: int = MEMBER_CAP) -> str | None:
    """Why a member is not read as a file (None: it is); directories say ``""`` (not reported)."""
    if m.kind == "dir":
        return ""
    if m.kind != "file":
        return f"not a regular file ({m.kind} member)"
    if m.size > cap:
        return f"member of {m.size:,} bytes, over the {cap:,} byte limit"
    return None


def regular_members(path: str | Path, members: Iterable[Member]
                    ) -> tuple[list[Member], list[tuple[str, str]]]:
    """The regular files among a tar's ``members``, and ``(name, why)`` for those skipped."""
    kept, skipped = [], []
    for m in members:
        why = skip_reason(m)
        if why is None:
            kept.append(m)
        elif why:
            skipped.append((f"{path}:{m.name}", why))
    return kept, skipped


def scan_tar(path: str | Path) -> tuple[list[Member], list[tuple[str, str]]]:
    """The regular files of an uncompressed tar in archive order, and ``(name, why)`` for
    the members skipped."""
    with open_tar(path) as f:
        return regular_members(path, tar_members(f, str(path)))


def read_at(f: BinaryIO, m: Member, where: str, cap: int = MEMBER_CAP) -> bytes:
    """A member's bytes (at most ``cap``, else a one-line refusal)."""
    if m.size > cap:
        raise UserError(f"{where}: {m.size:,} bytes, over the {cap:,} byte limit")
    f.seek(m.offset)
    data = f.read(m.size)
    if len(data) != m.size:
        raise UserError(f"{where}: archive ends early (did it change?)")
    return data


def _decompressing(f: BinaryIO) -> BinaryIO:
    head = f.read(6)
    f.seek(0)
    for magic, module in ((b"\x1f\x8b", gzip), (b"BZh", bz2), (b"\xfd7zXZ", lzma)):
        if head.startswith(magic):
            return module.open(f, "rb")
    return f


def is_compressed(path: str | Path) -> bool:
    """Whether a tar is gzip, bzip2 or xz compressed (then it is read as a stream)."""
    with open_tar(path) as raw, _decompressing(raw) as f:
        return f is not raw


def stream_tar(path: str | Path, wanted: Callable[[Member], bool], cap: int = MEMBER_CAP,
               expand_cap: int = EXPAND_CAP) -> Iterator[tuple[Member, bytes | None]]:
    """Every member of a tar that may be gzip, bzip2 or xz compressed, read forward once:
    ``(member, its bytes)`` for the regular members ``wanted`` accepts (each at most ``cap``
    bytes, else a one-line refusal), ``(member, None)`` for the others. A compressed tar may
    expand to at most ``expand_cap`` bytes, and is read to its end so that a cut or corrupt
    stream is an error, not a shorter archive. Offsets count from the start of the
    decompressed tar, the same in every pass."""
    import zlib

    with open_tar(path) as raw, _decompressing(raw) as f:
        stream = f is not raw
        region = _Region(f, str(path), 0, None if stream else os.fstat(raw.fileno()).st_size,
                         expand_cap)
        try:
            for m in _members(region):
                if skip_reason(m, cap=1 << 62) is not None or not wanted(m):
                    yield m, None
                    continue
                if m.size > cap:
                    raise UserError(f"{path}:{m.name}: {m.size:,} bytes, over the {cap:,} "
                                    "byte limit")
                data = region.read(m.size) if stream else read_at(raw, m, str(path))
                if len(data) != m.size:
                    raise UserError(f"{path}:{m.name}: archive ends inside this member")
                yield m, data
            while stream and region.read(1 << 20):
                pass
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise UserError(f"cannot read {path}: damaged archive ({e})") from None


def find_in_tar(path: str | Path, wanted: Callable[[str], bool], cap: int) -> bytes | None:
    """The first regular member whose name ``wanted`` accepts, of a tar that may be gzip,
    bzip2 or xz compressed; read as a stream, at most ``EXPAND_CAP`` bytes decompressed and
    ``cap`` bytes for the member. None when no member matches."""
    found = stream_tar(path, lambda m: wanted(m.name), cap)
    try:
        return next((data for _, data in found if data is not None), None)
    finally:
        found.close()


def visible(name: str) -> bool:
    """Hidden entries (``.git``, ``.DS_Store``, ``._x.jpg``) are never data."""
    return not name.startswith(".")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _check_entry(entry: os.DirEntry, top: str, visited: set) -> tuple[str | None, bool]:
    """``(why the entry is skipped or None, whether it is a folder)``; links must lead to
    places inside ``top`` (a real path)."""
    try:
        st = entry.stat()
    except OSError as e:
        return f"unreadable ({e.strerror})", False
    if entry.is_symlink() and not _inside(os.path.realpath(entry.path), top):
        return f"symbolic link to outside {top}", False
    if stat.S_ISDIR(st.st_mode):
        if (st.st_dev, st.st_ino) in visited:
            return "folder already visited (a symbolic link loop?)", True
        visited.add((st.st_dev, st.st_ino))
        return None, True
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({file_kind(st.st_mode)})", False
    return None, False


def _listing(folder: str, seen: int) -> tuple[list[os.DirEntry], int]:
    """The visible entries of one folder sorted by name, and how many entries it has (all
    of them count towards ``ENTRIES_CAP``, hidden ones too)."""
    out, n = [], 0
    with os.scandir(folder) as it:
        for entry in it:
            n += 1
            if seen + n > ENTRIES_CAP:
                raise UserError(f"more than {ENTRIES_CAP:,} entries under {folder}")
            if visible(entry.name):
                out.append(entry)
    return sorted(out, key=lambda e: e.name), n


def walk_files(top: str | Path, root: str | Path | None = None
               ) -> tuple[list[str], list[tuple[str, str]]]:
    """The visible regular files under ``top`` (paths that start with ``top``) in torchvision
    ``ImageFolder`` order (folders by path, files by name), and ``(path, why)`` for every entry
    skipped. ``top`` must lie inside ``root`` (a class folder in its split: default ``top``);
    symbolic links below it are followed only to places inside ``top`` (so a class never
    takes another's images) and into each folder once."""
    top, real = str(top), os.path.realpath(top)
    if root is not None and not _inside(real, os.path.realpath(root)):
        return [], [(top, f"symbolic link to outside {root}")]
    st = os.stat(top)
    visited, stack, folders, skipped, seen = {(st.st_dev, st.st_ino)}, [top], [], [], 0
    while stack:
        folder = stack.pop()
        try:
            entries, n = _listing(folder, seen)
        except OSError as e:
            skipped.append((folder, f"unreadable folder ({e.strerror})"))
            continue
        seen += n
        files = []
        for entry in entries:
            why, is_dir = _check_entry(entry, real, visited)
            if why is not None:
                skipped.append((entry.path, why))
            else:
                (stack if is_dir else files).append(entry.path)
        folders.append((folder, files))
    folders.sort(key=lambda item: item[0])
    return [f for _, files in folders for f in files], skipped
