"""Fetch a corpus archive once, verify it, and pull out its three splits safely.

An archive source names one address (``url``) or several mirrors of the same
archive (``urls``), tried in order. Whichever mirror answers gets the same
checks (the archive's sha256, then each member's): a mirror that fails (an
HTTP error, a timeout, a dead host, a file that fails a check) is logged with
its reason and the next one is tried; when every mirror fails, one error lists
each of them and why. Requests name mosbench and its version as the User-Agent.

The archive is cached under ``cache_dir`` so later runs (and machines without
network access, where a user copied the archive by hand) never download again;
a small note beside it records which mirror it came from. Only the three
configured members are read, as bytes; nothing is extracted to disk by name, so
a hostile archive cannot write outside ``raw_dir``. Any archive that contains
such a hostile member is rejected outright all the same. A rejected archive is
deleted from the cache unless it matched a configured sha256 (then the config's
member entries are what is wrong); a failed run leaves no split files.
"""

import hashlib
import http.client
import json
import posixpath
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from mosbench import __version__
from mosbench.errors import MosbenchError
from mosbench.io import all_or_nothing, atomic_path, write_json

SPLITS = ("train", "valid", "test")
TIMEOUT_S = 60
# Some mirrors (wikitext.smerity.com among them) answer Python's default
# "Python-urllib/3.x" with 403; naming the client is also plain courtesy.
USER_AGENT = f"mosbench/{__version__} (corpus download)"
_CHUNK = 1 << 20
# Leading bytes of gzip, bzip2, xz and zip: a file that starts like an archive
# but does not open as one is a broken download, not a wrong file type.
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"PK\x03\x04")
# Everything the tar/zip/compression modules raise on damaged input.
_CORRUPT_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)


class _MirrorFailed(Exception):
    """One mirror did not give a usable archive.

    ``reason`` is short, for the list of every mirror; ``alone`` is the whole
    message when the source has only this one address.
    """

    def __init__(self, reason, alone):
        super().__init__(reason)
        self.reason, self.alone = reason, alone


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
    describing where they came from (``url``: the mirror that served the
    archive, None for one placed in the cache by hand); returns that description.
    """
    raw_dir, cache_dir = Path(raw_dir), Path(cache_dir)
    if source.get("kind") != "archive":
        raise MosbenchError(f"sources.{name}.kind is {source.get('kind')!r}; expected 'archive'")
    key, urls = _mirrors(name, source)
    members = source.get("members") or {}
    missing = [s for s in SPLITS if not (members.get(s) or {}).get("path")]
    if missing:
        raise MosbenchError(
            f"sources.{name}.members lacks a path for {', '.join(missing)}; "
            f"expected one member path per split ({', '.join(SPLITS)})"
        )
    # Every mirror fills the same cache file, named after the first one.
    archive = cache_dir / _archive_name(name, key, urls[0])
    # A failed (re)run leaves no split files and no source.json, not the previous run's.
    outputs = [raw_dir / f"{split}.txt" for split in SPLITS] + [raw_dir / "source.json"]
    with all_or_nothing(*outputs):
        verified = _norm_hash(source.get("sha256"))
        found = _from_cache(name, archive, verified, members)
        if found is None:
            found = _from_mirrors(name, key, urls, archive, verified, members)
        archive_sha, url, data, files = found
        info = {"name": name, "kind": "archive", "url": url,
                "archive_sha256": archive_sha, "files": files}
        _write_outputs(raw_dir, data, info)
    return info


def _mirrors(name, source):
    """The config key used ('url' or 'urls') and the addresses, in the order to try them."""
    if source.get("urls") is None:
        key, urls = "url", [source.get("url")]
    elif source.get("url") is not None:
        raise MosbenchError(f"sources.{name} sets both url and urls; expected one of them "
                            "(urls: mirrors tried in order)")
    else:
        key, urls = "urls", source["urls"]
        if not isinstance(urls, list) or not urls:
            raise MosbenchError(f"sources.{name}.urls is {urls!r}; expected a non-empty list "
                                "of addresses, tried in order")
    urls = [str(u or "") for u in urls]
    # Check every address before fetching any: a typo in the last mirror is a config
    # error now, not a surprise on the day the first mirrors are down.
    for i, url in enumerate(urls):
        scheme = _scheme(url)
        if scheme not in ("http", "https", "file", ""):
            raise MosbenchError(
                f"{_where(name, key, i)} {url!r} has unsupported scheme {scheme!r}; "
                "expected http://, https://, file:// or a local path"
            )
    return key, urls


def _where(name, key, i):
    return f"sources.{name}.url" if key == "url" else f"sources.{name}.urls[{i}]"


def _scheme(url):
    return urllib.parse.urlparse(url).scheme.lower() if "://" in url else ""


def _archive_name(name, key, url):
    basename = posixpath.basename(urllib.parse.urlparse(url).path) if "://" in url else ""
    basename = basename or Path(url).name
    if not basename:
        raise MosbenchError(f"{_where(name, key, 0)} {url!r} does not name an archive file")
    return basename


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


def _from_cache(name, archive, expected, members):
    """(sha256, url, data, files) from the cached archive, or None when it must be fetched."""
    if not archive.exists():
        return None
    try:
        actual = sha256_file(archive)
    except OSError as exc:
        raise MosbenchError(
            f"cannot read the cached archive {archive} ({exc.strerror}); expected a readable "
            "file: fix its permissions or delete it so that it is fetched again"
        ) from None
    if expected is not None and actual != expected:
        # A stale or damaged copy: drop it so a failed re-fetch leaves nothing behind.
        _discard(archive)
        return None
    try:
        data, files = _checked_members(name, archive, members)
    except MosbenchError as exc:
        if expected is None and archive.exists():
            # Unverified and rejected: do not keep it, so the next run fetches afresh.
            _discard(archive)
            raise MosbenchError(f"{exc}; the cached archive was deleted") from None
        raise
    return actual, _noted_url(archive, actual), data, files


def _from_mirrors(name, key, urls, archive, expected, members):
    """(sha256, url, data, files) from the first mirror whose archive passes every check."""
    failures = []
    for i, url in enumerate(urls):
        try:
            actual = _fetch(name, key, url, archive, expected)
            try:
                data, files = _checked_members(name, archive, members)
            except MosbenchError as exc:
                if expected is not None:
                    # The archive is the configured one, so every mirror would fail the
                    # same way: the config's member entries are wrong. Keep the archive.
                    raise
                alone = str(exc)  # a corrupt archive is already gone, and the message says so
                if archive.exists():
                    _discard(archive)
                    alone += "; the cached archive was deleted"
                raise _MirrorFailed(str(exc), alone) from None
        except _MirrorFailed as exc:
            failures.append((url, exc))
            if i + 1 < len(urls):
                print(f"mosbench: download: mirror {url} failed ({exc.reason}); "
                      f"trying {urls[i + 1]}", file=sys.stderr, flush=True)
            continue
        _note_url(archive, url, actual)
        return actual, url, data, files
    if len(urls) == 1:
        raise MosbenchError(failures[0][1].alone)
    listed = "; ".join(f"({n}) {url}: {exc.reason}" for n, (url, exc) in enumerate(failures, 1))
    raise MosbenchError(
        f"no mirror of sources.{name} gave a verified archive, {len(urls)} tried: {listed}. "
        f"Nothing was kept. To place the archive by hand: download it from one of them on a "
        f"machine with access and copy it to {archive} (sha256 {expected or 'not configured'}), "
        f"or add a working mirror or file:// path to sources.{name}.{key}"
    )


def _fetch(name, key, url, archive, expected):
    """Download ``url`` to ``archive`` and return its sha256; :class:`_MirrorFailed` if not."""
    scheme = _scheme(url)
    archive.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # atomic_path deletes the temp file on any error, so no partial archive survives.
    with atomic_path(archive) as tmp:
        try:
            if scheme in ("http", "https"):
                request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                opened = urllib.request.urlopen(request, timeout=TIMEOUT_S)
            else:
                local = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
                opened = open(local if scheme else url, "rb")
            with opened as src, open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
                # http.client ends a body the server cut short without complaint; its
                # count of the promised bytes still to come says so.
                short = getattr(src, "length", None)
            if short:
                raise ConnectionError(f"the server hung up {short} bytes short of the whole file")
        except (OSError, http.client.HTTPException) as exc:
            verb = "reach" if scheme.startswith("http") else "read"
            raise _MirrorFailed(
                f"could not {verb} it: {exc}",
                f"could not {verb} {url} ({exc}). To place the archive by hand: download {url} "
                f"on a machine with access and copy it to {archive} "
                f"(sha256 {expected or 'not configured'}), or set sources.{name}.{key} "
                "to a local mirror or file:// path",
            ) from None
        actual = digest.hexdigest()
        if expected and actual != expected:
            raise _MirrorFailed(
                f"it served a file with sha256 {actual}; expected {expected} "
                f"(sources.{name}.sha256)",
                f"archive downloaded from {url} has sha256 {actual}; expected {expected} "
                f"(sources.{name}.sha256); the download was discarded",
            )
    return actual


# Which mirror the cached archive came from, kept beside it for source.json on later
# runs; it counts only while its sha256 matches the archive's.
def _note_path(archive):
    return archive.with_name(archive.name + ".origin.json")


def _note_url(archive, url, sha):
    write_json(_note_path(archive), {"url": url, "sha256": sha})


def _noted_url(archive, sha):
    try:
        note = json.loads(_note_path(archive).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # placed by hand, or the note is unreadable: say nothing rather than guess
    if isinstance(note, dict) and note.get("sha256") == sha:
        return note.get("url")
    return None


def _discard(archive):
    archive.unlink(missing_ok=True)
    _note_path(archive).unlink(missing_ok=True)


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
    _discard(archive)
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
