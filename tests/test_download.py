"""download_corpus against real archive layouts served by local HTTP servers."""

import copy
import functools
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import urllib.error
import urllib.request
import zipfile
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO, TINY_CONFIG
from mosbench import __version__
from mosbench.config import load_config, validate_config
from mosbench.data import download
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
    assert info["url"] == f"{base}/simple-examples.tgz"  # where the cached copy came from
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


# --- mirrors: an archive source with `urls`, tried in order ----------------------------

GOOD_ZIP = "wikitext-2-v1.zip"
PICKY_AGENTS = ("Python-urllib",)  # the default that wikitext.smerity.com turns away


class MirrorHandler(QuietHandler):
    """Serves its folder, or misbehaves the way ``server.behaviour`` says; records User-Agents."""

    def do_GET(self):
        server = self.server
        agent = self.headers.get("User-Agent", "")
        server.user_agents.append(agent)
        if server.behaviour == "stall":  # answers nothing until the test ends
            server.release.wait(30)
        elif server.behaviour == "error":
            self.send_error(500, "Internal Server Error")
        elif server.behaviour == "picky" and (not agent or agent.startswith(PICKY_AGENTS)):
            self.send_error(403, "Forbidden")
        elif server.behaviour == "redirect":
            self.send_response(301)
            self.send_header("Location", server.redirect_to + self.path)
            self.end_headers()
        elif server.behaviour == "cut":  # promises the whole file, sends half, hangs up
            data = (server.root / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
        else:
            super().do_GET()


@pytest.fixture
def mirrors(tmp_path):
    """start(behaviour) -> a running local HTTP server: .root (its folder), .base, .url."""
    release, started = threading.Event(), []

    def start(behaviour="serve", redirect_to=None):
        root = tmp_path / f"mirror{len(started)}"
        root.mkdir()
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(MirrorHandler, directory=str(root)))
        server.behaviour, server.redirect_to, server.release = behaviour, redirect_to, release
        server.root, server.user_agents = root, []
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((server, thread))
        base = f"http://127.0.0.1:{server.server_address[1]}"
        return SimpleNamespace(root=root, base=base, url=f"{base}/{GOOD_ZIP}",
                               user_agents=server.user_agents)

    yield start
    release.set()  # lets stalled handlers return before the servers stop
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join()


def mirrored(urls, files, archive_sha=None):
    source = source_for(urls[0], files, archive_sha)
    del source["url"]
    source["urls"] = list(urls)
    return source


def good_zip(folder):
    return write_zip(folder / GOOD_ZIP, WIKI)


def other_wiki():
    """A zip of the same layout whose valid split differs: another release, say."""
    return {**WIKI, "wikitext-2/wiki.valid.tokens": b" = Other = \n" * 50}


def files_in(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# How a first mirror can fail, and what the log line must say about it.
def _not_found(start, good):
    return start().url, "HTTP Error 404"


def _server_error(start, good):
    return start("error").url, "HTTP Error 500"


def _refused(start, good):
    return f"http://127.0.0.1:{closed_port()}/{GOOD_ZIP}", "Connection refused"


def _stalls(start, good):
    return start("stall").url, "timed out"


def _cut_short(start, good):
    bad = start("cut")
    good_zip(bad.root)
    return bad.url, "bytes short of the whole file"


def _corrupt(start, good):  # caught by the archive's sha256 before it is opened
    bad = start()
    data = good.read_bytes()
    (bad.root / GOOD_ZIP).write_bytes(data[: len(data) // 2])
    return bad.url, "sha256"


@pytest.mark.parametrize("fail", [_not_found, _server_error, _refused, _stalls, _cut_short,
                                  _corrupt], ids=lambda f: f.__name__.strip("_"))
def test_a_failing_first_mirror_is_logged_and_the_next_one_used(
        mirrors, dirs, tmp_path, monkeypatch, capsys, fail):
    if fail is _stalls:  # two seconds, not 60; only here: a good mirror on a loaded machine
        monkeypatch.setattr(download, "TIMEOUT_S", 2.0)  # once missed half a second
    raw, cache = dirs
    second = mirrors()
    good = good_zip(second.root)
    first_url, reason = fail(mirrors, good)
    source = mirrored([first_url, second.url], WIKI, archive_sha=sha256_file(good))

    info = download_corpus("corpus", source, raw, cache)

    assert_outputs(raw, WIKI, source, second.url)  # source.json names the mirror that served it
    assert info["archive_sha256"] == sha256_file(good)
    assert (cache / GOOD_ZIP).read_bytes() == good.read_bytes()
    log = capsys.readouterr().err.strip().splitlines()
    assert len(log) == 1 and log[0].startswith(f"mosbench: download: mirror {first_url} failed")
    assert reason in log[0] and log[0].endswith(f"trying {second.url}")
    assert files_in(cache) == [GOOD_ZIP, f"{GOOD_ZIP}.origin.json"]  # no partial download left


def test_an_unverified_archive_from_the_wrong_release_is_rejected_by_its_members(
        mirrors, dirs, capsys):
    """No archive sha256 (like PTB's): the members' sha256 reject the first mirror's file."""
    raw, cache = dirs
    first, second = mirrors(), mirrors()
    write_zip(first.root / GOOD_ZIP, other_wiki())
    good_zip(second.root)
    source = mirrored([first.url, second.url], WIKI)  # members' sha256 from the real files
    download_corpus("corpus", source, raw, cache)
    assert_outputs(raw, WIKI, source, second.url)
    err = capsys.readouterr().err
    assert f"mirror {first.url} failed (member 'wikitext-2/wiki.valid.tokens'" in err


def test_every_mirror_failing_is_one_error_that_names_each(mirrors, dirs, monkeypatch, capsys):
    monkeypatch.setattr(download, "TIMEOUT_S", 0.5)
    raw, cache = dirs
    good = good_zip(raw.parent)
    missing, corrupt, stalled, cut = mirrors(), mirrors(), mirrors("stall"), mirrors("cut")
    (corrupt.root / GOOD_ZIP).write_bytes(b"<html>a captive portal</html>")
    good_zip(cut.root)
    refused = f"http://127.0.0.1:{closed_port()}/{GOOD_ZIP}"
    urls = [missing.url, corrupt.url, stalled.url, cut.url, refused]
    source = mirrored(urls, WIKI, archive_sha=sha256_file(good))
    raw.mkdir()  # a previous run's corpus: a failed rerun must not leave it looking current
    for name in ("train.txt", "valid.txt", "test.txt", "source.json"):
        (raw / name).write_text("old\n")

    with pytest.raises(MosbenchError) as err:
        download_corpus("wikitext2", source, raw, cache)

    message = str(err.value)
    assert "\n" not in message
    assert "no mirror of sources.wikitext2 gave a verified archive, 5 tried: (1) " in message
    expected = {missing.url: "HTTP Error 404", corrupt.url: "sha256", stalled.url: "timed out",
                cut.url: "bytes short", refused: "Connection refused"}
    for n, (url, reason) in enumerate(expected.items(), 1):
        part = message.split(f"({n}) {url}: ", 1)[1].split(f"; ({n + 1}) ")[0]
        assert reason in part, (url, part)
    assert f"copy it to {cache / GOOD_ZIP} (sha256 {sha256_file(good)})" in message
    assert "sources.wikitext2.urls" in message
    assert_no_outputs(raw)
    assert files_in(cache) == []  # no archive, no temporary file, no origin note
    # each failure but the last was logged as it happened, with the mirror tried next
    log = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" failed ")[0] for line in log] == [
        f"mosbench: download: mirror {url}" for url in urls[:-1]]


def test_the_user_agent_names_mosbench_and_reaches_a_picky_server(mirrors, dirs):
    raw, cache = dirs
    picky = mirrors("picky")
    good_zip(picky.root)
    # The server really turns Python's default User-Agent away, as some mirrors do ...
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(picky.url, timeout=5)
    # ... and the download, sent through a redirect first, gets the archive all the same.
    redirect = mirrors("redirect", redirect_to=picky.base)
    source = mirrored([redirect.url], WIKI, archive_sha=sha256_file(picky.root / GOOD_ZIP))
    download_corpus("corpus", source, raw, cache)
    agent = f"mosbench/{__version__} (corpus download)"
    assert redirect.user_agents == [agent]
    assert picky.user_agents[1:] == [agent]  # [0]: the refused default request above
    assert (raw / "valid.txt").read_bytes() == WIKI["wikitext-2/wiki.valid.tokens"]


def test_an_archive_placed_by_hand_is_used_without_a_mirror_and_said_to_be(dirs, tmp_path):
    raw, cache = dirs
    cache.mkdir()
    good = good_zip(cache)  # copied into the cache by hand: no note of where it came from
    dead = [f"http://127.0.0.1:{closed_port()}/{GOOD_ZIP}" for _ in range(2)]
    info = download_corpus("corpus", mirrored(dead, WIKI, sha256_file(good)), raw, cache)
    assert info["url"] is None and info["archive_sha256"] == sha256_file(good)
    assert files_in(cache) == [GOOD_ZIP]


def test_one_url_in_a_list_fails_with_the_one_address_message(dirs, capsys):
    raw, cache = dirs
    url = f"http://127.0.0.1:{closed_port()}/{GOOD_ZIP}"
    with pytest.raises(MosbenchError) as err:
        download_corpus("wikitext2", mirrored([url], WIKI), raw, cache)
    assert str(err.value).startswith(f"could not reach {url} (")
    assert "or set sources.wikitext2.urls to a local mirror" in str(err.value)
    assert capsys.readouterr().err == ""  # nothing to fall back to, so nothing logged


def test_a_mirror_list_is_checked_before_anything_is_fetched(mirrors, dirs):
    raw, cache = dirs
    served = mirrors()
    good_zip(served.root)
    source = mirrored([served.url, "ftp://example.org/wikitext-2-v1.zip"], WIKI)
    with pytest.raises(MosbenchError, match=r"sources\.corpus\.urls\[1\] 'ftp://.*"
                                            r"unsupported scheme 'ftp'"):
        download_corpus("corpus", source, raw, cache)
    assert served.user_agents == [] and files_in(cache) == []


def _archive_config(**source):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["sources"]["wt2"] = {"kind": "archive", **source, "members": {
        split: {"path": f"wikitext-2/wiki.{split}.tokens"} for split in ("train", "valid", "test")}}
    return config


@pytest.mark.parametrize(("source", "expected"), [
    ({"url": "a.zip", "urls": ["b.zip"]}, "config key 'sources.wt2.url'"),
    ({"urls": ["a.zip", "b.zip"], "url": "c.zip"}, "set either url or urls, not both"),
    ({}, "config key 'sources.wt2': 'url' is a required property"),
    ({"urls": []}, "config key 'sources.wt2.urls': [] should be non-empty"),
    ({"urls": ["a.zip", "a.zip"]}, "config key 'sources.wt2.urls'"),
    ({"urls": "a.zip"}, "config key 'sources.wt2.urls': 'a.zip' is not of type 'array'"),
])
def test_the_schema_takes_url_or_urls_but_not_both(source, expected):
    for good in ({"url": "a.zip"}, {"urls": ["a.zip", "b.zip"]}):
        validate_config(_archive_config(**good))
    with pytest.raises(MosbenchError) as err:
        validate_config(_archive_config(**source))
    assert expected in str(err.value)


def test_the_shipped_wikitext2_source_lists_https_mirrors_with_the_dead_s3_address_last():
    config = load_config(REPO / "config" / "config.yaml")
    wt2 = config["sources"]["wikitext2"]
    assert "url" not in wt2 and len(wt2["urls"]) >= 3
    assert all(u.startswith("https://") and u.endswith("/wikitext-2-v1.zip") for u in wt2["urls"])
    assert wt2["urls"][-1] == "https://s3.amazonaws.com/research.metamind.io/wikitext/" \
        "wikitext-2-v1.zip"
    assert wt2["sha256"] and all(m["sha256"] for m in wt2["members"].values())
    # the same file from every mirror: the first names the cache, and it matches the old name
    assert download._archive_name("wikitext2", "urls", wt2["urls"][0]) == GOOD_ZIP
    validate_config(copy.deepcopy(config))
