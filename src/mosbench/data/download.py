"""Fetch a corpus archive once, verify it, and pull out its three splits safely.

The archive is cached under ``cache_dir`` so later runs (and machines without
network access, where a user copied the archive by hand) never download again.
Only the three configured members are read, as bytes; nothing is extracted to
disk by name, so a hostile archive cannot write outside ``raw_dir``. Any archive
that contains such a hostile member is rejected outright all the same. A rejected
archive is deleted from the cache unless it matched a configured sha256 (then the
config's member entries are what is wrong); a failed run leaves no split files.
"""

import hashlib
import http.client
import posixpath
import tarfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from mosbench.errors import MosbenchError
from mosbench.io import all_or_nothing, atomic_path, write_json

SPLITS = ("train", "valid", "test")
TIMEOUT_S = 60
_CHUNK = 1 << 20
# Leading bytes of gzip, bzip2, xz and zip: a file that starts like an archive
# but does not open as one is a broken download, not a wrong file type.
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"PK\x03\x04")
# Everything the tar/zip/compression modules raise on damaged input.
_CORRUPT_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in chunks so large archives use little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_corpus(name: str, source: dict, raw_dir, cache_dir) -> dict:
    """Fetch (or reuse) the archive of corpus ``name`` and write its splits to ``raw_dir``.

    Writes ``raw_dir/{train,valid,test}.txt`` and, last, ``raw_dir/source.json``
    describing where they came from; returns that description.
    """
    raw_dir, cache_dir = Path(raw_dir), Path(cache_dir)
    if source.get("kind") != "archive":
        raise MosbenchError(f"sources.{name}.kind is {source.get('kind')!r}; expected 'archive'")
    url = str(source.get("url") or "")
    members = source.get("members") or {}
    missing = [s for s in SPLITS if not (members.get(s) or {}).get("path")]
    if missing:
        raise MosbenchError(
            f"sources.{name}.members lacks a path for {', '.join(missing)}; "
            f"expected one member path per split ({', '.join(SPLITS)})"
        )
    basename = posixpath.basename(urllib.parse.urlparse(url).path) if "://" in url else ""
    basename = basename or Path(url).name
    if not basename:
        raise MosbenchError(f"sources.{name}.url {url!r} does not name an archive file")

    archive = cache_dir / basename
    # A failed (re)run leaves no split files and no source.json, not the previous run's.
    outputs = [raw_dir / f"{split}.txt" for split in SPLITS] + [raw_dir / "source.json"]
    with all_or_nothing(*outputs):
        verified = _norm_hash(source.get("sha256"))
        archive_sha = _fetch_cached(name, url, archive, verified)
        try:
            data, files = _checked_members(name, archive, members)
        except MosbenchError as exc:
            if verified is None and archive.exists():
                # Unverified and rejected: do not keep it, so the next run fetches afresh.
                archive.unlink()
                raise MosbenchError(f"{exc}; the cached archive was deleted") from None
            raise
        info = {"name": name, "kind": "archive", "url": url,
                "archive_sha256": archive_sha, "files": files}
        _write_outputs(raw_dir, data, info)
    return info


def _checked_members(name, archive, members):
    """The split members' bytes (checked: sha256, UTF-8) and their description for source.json."""
    wanted = {split: members[split]["path"] for split in SPLITS}
    data = _read_members(archive, wanted)
    files = {}
    for split in SPLITS:
        member, blob = wanted[split], data[split]
        actual = hashlib.sha256(blob).hexdigest()
        expected = _norm_hash(members[split].get("sha256"))
        if expected and actual != expected:
            raise MosbenchError(
                f"member {member!r} of {archive} has sha256 {actual}; expected {expected} "
                f"(sources.{name}.members.{split}.sha256)"
            )
        try:
            blob.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MosbenchError(
                f"member {member!r} of {archive} is not valid UTF-8 "
                f"(bad byte at offset {exc.start}); expected UTF-8 text"
            ) from None
        files[split] = {"sha256": actual, "bytes": len(blob), "member": member}
    return data, files


def _norm_hash(value):
    return str(value).strip().lower() if value else None


def _fetch_cached(name, url, archive, expected):
    """Return the sha256 of a verified archive at ``archive``, fetching it if needed."""
    if archive.exists():
        try:
            actual = sha256_file(archive)
        except OSError as exc:
            raise MosbenchError(
                f"cannot read the cached archive {archive} ({exc.strerror}); expected a readable "
                "file: fix its permissions or delete it so that it is fetched again"
            ) from None
        if expected is None or actual == expected:
            return actual
        # A stale or damaged copy: drop it so a failed re-fetch leaves nothing behind.
        archive.unlink()
    return _fetch(name, url, archive, expected)


def _fetch(name, url, archive, expected):
    scheme = urllib.parse.urlparse(url).scheme.lower() if "://" in url else ""
    if scheme not in ("http", "https", "file", ""):
        raise MosbenchError(
            f"sources.{name}.url {url!r} has unsupported scheme {scheme!r}; "
            "expected http://, https://, file:// or a local path"
        )
    archive.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # atomic_path deletes the temp file on any error, so no partial archive survives.
    with atomic_path(archive) as tmp:
        try:
            if scheme in ("http", "https"):
                opened = urllib.request.urlopen(url, timeout=TIMEOUT_S)
            else:
                local = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
                opened = open(local if scheme else url, "rb")
            with opened as src, open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            verb = "reach" if scheme.startswith("http") else "read"
            raise MosbenchError(
                f"could not {verb} {url} ({exc}). To place the archive by hand: download {url} "
                f"on a machine with access and copy it to {archive} "
                f"(sha256 {expected or 'not configured'}), or set sources.{name}.url "
                "to a local mirror or file:// path"
            ) from None
        actual = digest.hexdigest()
        if expected and actual != expected:
            raise MosbenchError(
                f"archive downloaded from {url} has sha256 {actual}; expected {expected} "
                f"(sources.{name}.sha256); the download was discarded"
            )
    return actual


def _read_members(archive, wanted):
    """Return {split: bytes} for the wanted members, after vetting every member name."""
    try:
        if tarfile.is_tarfile(archive):
            return _read_tar(archive, wanted)
        if zipfile.is_zipfile(archive):
            return _read_zip(archive, wanted)
        with open(archive, "rb") as f:
            head = f.read(8)
        problem = "not a tar or zip archive"
        if head.startswith(_ARCHIVE_MAGIC):
            problem = "truncated or corrupt"
    except _CORRUPT_ERRORS as exc:
        problem = f"truncated or corrupt ({exc})"
    # Delete it so the next run downloads a fresh copy instead of failing again.
    archive.unlink(missing_ok=True)
    raise MosbenchError(
        f"archive {archive} is {problem}; it was deleted and will be fetched again "
        "on the next run"
    )


def _check_name(archive, name):
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or _has_drive(name):
        raise MosbenchError(
            f"archive {archive} contains member {name!r} with an absolute or escaping path; "
            "refusing to use it (expected only relative paths inside the archive)"
        )
    return norm


def _has_drive(name):
    # "C:/x" or "C:x" is absolute on Windows even though it has no leading slash.
    return name[1:2] == ":" and name[:1].isalpha()


def _reject_link(archive, name):
    raise MosbenchError(
        f"archive {archive} contains link or special member {name!r}; "
        "refusing to use it (expected only regular files and folders)"
    )


def _pick(archive, wanted, found):
    """Map each split to its entry in ``found`` (normalised name -> entry)."""
    picked = {}
    for split, member in wanted.items():
        entry = found.get(posixpath.normpath(member))
        if entry is None:
            raise MosbenchError(
                f"archive {archive} has no member {member!r} (for split {split}); "
                f"expected members: {', '.join(wanted.values())}"
            )
        picked[split] = entry
    return picked


def _read_tar(archive, wanted):
    with tarfile.open(archive) as tar:
        found = {}
        for m in tar.getmembers():  # reads to the end, so truncation shows up here
            norm = _check_name(archive, m.name)
            if not (m.isfile() or m.isdir()):
                _reject_link(archive, m.name)
            if m.isfile():
                found[norm] = m
        picked = _pick(archive, wanted, found)
        return {split: tar.extractfile(m).read() for split, m in picked.items()}


def _read_zip(archive, wanted):
    with zipfile.ZipFile(archive) as zf:
        found = {}
        for info in zf.infolist():
            norm = _check_name(archive, info.filename)
            # Unix file type lives in the high 16 bits; 0o120000 is a symlink.
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                _reject_link(archive, info.filename)
            if not info.is_dir():
                found[norm] = info
        picked = _pick(archive, wanted, found)
        return {split: zf.read(info) for split, info in picked.items()}


def _write_outputs(raw_dir, data, info):
    """Write the split files, then source.json: its presence means the splits are complete."""
    for split in SPLITS:
        with atomic_path(raw_dir / f"{split}.txt") as tmp:
            tmp.write_bytes(data[split])
    write_json(raw_dir / "source.json", info)
