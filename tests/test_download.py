"""download_corpus against real archive layouts served by a local HTTP server."""

import functools
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import zipfile

import pytest

from mosbench.data.download import download_corpus, sha256_file
from mosbench.errors import MosbenchError

PTB = {
    "simple-examples/data/ptb.train.txt": b" the cat sat on the mat \n" * 200,
    "simple-examples/data/ptb.valid.txt": b" a dog ran <unk> \n" * 50,
    "simple-examples/data/ptb.test.txt": b" N years ago \n" * 50,
    "simple-examples/README": b"unrelated member\n",
}
WIKI = {
    "wikitext-2/wiki.train.tokens": " = Café = \n naïve résumé \n".encode() * 200,
    "wikitext-2/wiki.valid.tokens": " = Über = \n".encode() * 50,
    "wikitext-2/wiki.test.tokens": " = 東京 = \n".encode() * 50,
}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def write_tar(path, files, symlinks=()):
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in symlinks:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def write_zip(path, files):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def source_for(url, files, archive_sha=None):
    """Config dict whose train/valid/test members are the files named like each split."""
    members = {}
    for split in ("train", "valid", "test"):
        path = next(n for n in files if f".{split}." in n)
        members[split] = {"path": path, "sha256": sha(files[path])}
    return {"kind": "archive", "url": url, "sha256": archive_sha, "members": members}


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def www(tmp_path):
    """(folder served over HTTP, base URL); the server stops when the test ends."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "raw", tmp_path / "cache"


def assert_outputs(raw, files, source, url):
    info = json.loads((raw / "source.json").read_text(encoding="utf-8"))
    assert info["url"] == url and info["kind"] == "archive" and info["name"] == "corpus"
    for split, member in source["members"].items():
        data = files[member["path"]]
        assert (raw / f"{split}.txt").read_bytes() == data
        assert info["files"][split] == {
            "sha256": sha(data), "bytes": len(data), "member": member["path"]}
    return info


def assert_no_outputs(raw):
    assert not raw.exists() or list(raw.iterdir()) == []


def test_tgz_over_http(www, dirs):
    root, base = www
    raw, cache = dirs
    archive = write_tar(root / "simple-examples.tgz", PTB)
    url = f"{base}/simple-examples.tgz"
    source = source_for(url, PTB, archive_sha=sha256_file(archive))
    result = download_corpus("corpus", source, raw, cache)
    info = assert_outputs(raw, PTB, source, url)
    assert result == info
    assert info["archive_sha256"] == sha(archive.read_bytes())
    assert (cache / "simple-examples.tgz").read_bytes() == archive.read_bytes()
    assert len(list(raw.iterdir())) == 4  # the README member is not extracted


def test_zip_over_http(www, dirs):
    root, base = www
    raw, cache = dirs
    write_zip(root / "wikitext-2-v1.zip", WIKI)
    url = f"{base}/wikitext-2-v1.zip"
    source = source_for(url, WIKI)
    download_corpus("corpus", source, raw, cache)
    assert_outputs(raw, WIKI, source, url)
    assert "Café" in (raw / "train.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("as_uri", [True, False])
def test_local_file_url_and_plain_path(tmp_path, dirs, as_uri):
    raw, cache = dirs
    archive = write_tar(tmp_path / "simple-examples.tgz", PTB)
    url = archive.as_uri() if as_uri else str(archive)
    source = source_for(url, PTB)
    download_corpus("corpus", source, raw, cache)
    assert_outputs(raw, PTB, source, url)
    assert (cache / "simple-examples.tgz").exists()


def test_second_call_reuses_cache(www, dirs):
    root, base = www
    raw, cache = dirs
    archive = write_tar(root / "simple-examples.tgz", PTB)
    digest = sha256_file(archive)
    download_corpus("corpus", source_for(f"{base}/simple-examples.tgz", PTB, digest), raw, cache)
    # Same file name but nobody listens there: success proves no network access.
    dead = f"http://127.0.0.1:{closed_port()}/simple-examples.tgz"
    raw2 = raw.parent / "raw2"
    info = download_corpus("corpus", source_for(dead, PTB, digest), raw2, cache)
    assert info["archive_sha256"] == digest
    assert (raw2 / "train.txt").read_bytes() == PTB["simple-examples/data/ptb.train.txt"]


def test_stale_cached_archive_is_refetched(www, dirs):
    root, base = www
    raw, cache = dirs
    archive = write_tar(root / "simple-examples.tgz", PTB)
    cache.mkdir()
    (cache / "simple-examples.tgz").write_bytes(b"an old, different file")
    source = source_for(f"{base}/simple-examples.tgz", PTB, sha256_file(archive))
    download_corpus("corpus", source, raw, cache)
    assert sha256_file(cache / "simple-examples.tgz") == sha256_file(archive)


def test_archive_checksum_mismatch(www, dirs):
    root, base = www
    raw, cache = dirs
    archive = write_tar(root / "simple-examples.tgz", PTB)
    source = source_for(f"{base}/simple-examples.tgz", PTB, archive_sha="0" * 64)
    with pytest.raises(MosbenchError) as err:
        download_corpus("corpus", source, raw, cache)
    assert "0" * 64 in str(err.value) and sha256_file(archive) in str(err.value)
    assert list(cache.iterdir()) == []
    assert_no_outputs(raw)


def test_member_checksum_mismatch(www, dirs):
    root, base = www
    raw, cache = dirs
    write_zip(root / "wikitext-2-v1.zip", WIKI)
    source = source_for(f"{base}/wikitext-2-v1.zip", WIKI)
    source["members"]["valid"]["sha256"] = "f" * 64
    with pytest.raises(MosbenchError, match="wikitext-2/wiki.valid.tokens") as err:
        download_corpus("corpus", source, raw, cache)
    assert "f" * 64 in str(err.value)
    assert_no_outputs(raw)


@pytest.mark.parametrize("name", ["simple-examples.tgz", "wikitext-2-v1.zip"])
def test_truncated_archive_is_deleted(www, dirs, tmp_path, name):
    root, base = www
    raw, cache = dirs
    files = PTB if name.endswith("tgz") else WIKI
    full = (write_tar if name.endswith("tgz") else write_zip)(tmp_path / name, files)
    data = full.read_bytes()
    (root / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(MosbenchError, match="truncated or corrupt.*fetched again"):
        download_corpus("corpus", source_for(f"{base}/{name}", files), raw, cache)
    assert not (cache / name).exists()
    assert_no_outputs(raw)


@pytest.mark.parametrize("kind, evil", [("tgz", "../evil.txt"), ("tgz", "ABS"),
                                        ("zip", "../evil.txt")])
def test_escaping_member_rejects_archive(tmp_path, dirs, kind, evil):
    raw, cache = dirs
    evil = str(tmp_path / "abs-evil.txt") if evil == "ABS" else evil
    files = {**PTB, evil: b"pwned\n"}
    build = write_tar if kind == "tgz" else write_zip
    archive = build(tmp_path / f"a.{kind}", files)
    with pytest.raises(MosbenchError, match="absolute or escaping") as err:
        download_corpus("corpus", source_for(str(archive), PTB), raw, cache)
    assert repr(evil) in str(err.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs-evil.txt").exists()
    assert not (raw.parent / "evil.txt").exists()
    assert_no_outputs(raw)


def test_symlink_member_rejects_archive(tmp_path, dirs):
    raw, cache = dirs
    archive = write_tar(tmp_path / "simple-examples.tgz", PTB,
                        symlinks=[("simple-examples/data/link", "/etc/passwd")])
    with pytest.raises(MosbenchError, match="link or special member 'simple-examples/data/link'"):
        download_corpus("corpus", source_for(str(archive), PTB), raw, cache)
    assert_no_outputs(raw)


def test_unreachable_url_explains_manual_placement(dirs):
    raw, cache = dirs
    url = f"http://127.0.0.1:{closed_port()}/simple-examples.tgz"
    with pytest.raises(MosbenchError) as err:
        download_corpus("ptb", source_for(url, PTB, archive_sha="a" * 64), raw, cache)
    message = str(err.value)
    assert "could not reach" in message and url in message
    assert f"copy it to {cache / 'simple-examples.tgz'}" in message
    assert "a" * 64 in message and "sources.ptb.url" in message
    assert not (cache / "simple-examples.tgz").exists()
    assert_no_outputs(raw)


def test_invalid_utf8_member(tmp_path, dirs):
    raw, cache = dirs
    files = {**PTB, "simple-examples/data/ptb.test.txt": b"ok\n\xff\xfe bad\n"}
    archive = write_tar(tmp_path / "simple-examples.tgz", files)
    with pytest.raises(MosbenchError, match=r"ptb\.test\.txt.*not valid UTF-8.*offset 3"):
        download_corpus("corpus", source_for(str(archive), files), raw, cache)
    assert_no_outputs(raw)


def test_not_an_archive(tmp_path, dirs):
    raw, cache = dirs
    page = tmp_path / "simple-examples.tgz"
    page.write_text("<html>captive portal</html>")
    with pytest.raises(MosbenchError, match="not a tar or zip archive"):
        download_corpus("corpus", source_for(str(page), PTB), raw, cache)
    assert not (cache / "simple-examples.tgz").exists()


def test_missing_member_lists_expected(tmp_path, dirs):
    raw, cache = dirs
    archive = write_zip(tmp_path / "wikitext-2-v1.zip", WIKI)
    source = source_for(str(archive), WIKI)
    source["members"]["test"]["path"] = "wikitext-2/wiki.test.missing"
    with pytest.raises(MosbenchError, match="no member 'wikitext-2/wiki.test.missing'.*expected"):
        download_corpus("corpus", source, raw, cache)
    assert_no_outputs(raw)
