"""fetch_model against a local HTTP server: checksums, interrupted downloads, no network,
--from-file, unsafe archives. The archives hold a SavedModel-shaped folder (the command
never loads TensorFlow; tests/vision/extractors/test_delg.py runs real tiny models)."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.delg_models import fake_saved_model, tar_gz, tar_with_member


@pytest.fixture
def models(settings, tmp_path: Path) -> Path:
    settings.MODEL_DIR = tmp_path / "models"
    return settings.MODEL_DIR


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    folder = fake_saved_model(tmp_path / "export" / "r50delg_tiny_20200914")
    return tar_gz(folder, tmp_path / "r50delg_tiny_20200914.tar.gz", arcname="r50delg_tiny_20200914")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = self.server.files.get(self.path.split("?")[0])  # type: ignore[attr-defined]
        if body is None:
            self.send_error(404)
            return
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/short"):  # the connection drops half-way
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(archive: Path) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    data = archive.read_bytes()
    httpd.files = {"/model.tar.gz": data, "/short.tar.gz": data, "/slow.tar.gz": data}  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _nothing_installed(models: Path) -> bool:
    leftovers = [p for p in models.rglob("*") if p.is_file()] if models.exists() else []
    return leftovers == []


def test_it_downloads_verifies_and_installs(models: Path, server: str, archive: Path, capsys) -> None:
    call_command("fetch_model", "tiny", url=f"{server}/model.tar.gz", kind="delg", sha256=_sha256(archive))
    installed = models / "installed" / "tiny"
    assert (installed / "saved_model" / "saved_model.pb").is_file()
    assert (installed / "saved_model" / "variables" / "variables.index").is_file()
    record = json.loads((installed / "model.json").read_text())
    assert record["name"] == "tiny" and record["kind"] == "delg"
    assert record["source"] == f"{server}/model.tar.gz" and record["sha256"] == _sha256(archive)
    assert record["installed_at"] and len(record["model_sha256"]) == 64
    out = capsys.readouterr().out
    assert "sha256 verified" in out and "use it with: delg:tiny" in out
    assert sorted(p.name for p in (models / "installed").iterdir()) == ["tiny"]  # no staging folders left
    assert not any((models / "downloads").iterdir())  # the download is removed once installed


def test_a_wrong_checksum_installs_nothing(models: Path, server: str) -> None:
    with pytest.raises(CommandError, match="sha256 mismatch.*nothing installed"):
        call_command("fetch_model", "tiny", url=f"{server}/model.tar.gz", kind="delg", sha256="ab" * 32)
    assert _nothing_installed(models)


def test_an_interrupted_download_errors_and_leaves_no_partial_file(models: Path, server: str, archive: Path) -> None:
    with pytest.raises(CommandError, match=r"interrupted: received [\d,]+ of [\d,]+ bytes"):
        call_command("fetch_model", "tiny", url=f"{server}/short.tar.gz", kind="delg", sha256=_sha256(archive))
    assert _nothing_installed(models)


def test_no_network_says_to_use_from_file(models: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CommandError, match=r"No network here\?.*fetch_model tiny --from-file FILE"):
        call_command("fetch_model", "tiny", url=f"http://127.0.0.1:{port}/m.tar.gz", kind="delg", sha256="ab" * 32)
    assert _nothing_installed(models)


def test_a_server_that_does_not_answer_times_out(models: Path, server: str, archive: Path) -> None:
    with pytest.raises(CommandError, match="no answer in 0.3 s.*--from-file"):
        call_command(
            "fetch_model", "tiny", url=f"{server}/slow.tar.gz", kind="delg", sha256=_sha256(archive), timeout=0.3
        )
    assert _nothing_installed(models)


def test_an_official_model_without_a_known_checksum_is_not_downloaded(models: Path, monkeypatch) -> None:
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(CommandError, match="no checksum is known for delg-r50-gldv2.*--sha256"):
        call_command("fetch_model", "delg-r50-gldv2")
    assert _nothing_installed(models)


def test_an_official_model_with_a_given_checksum_gets_its_official_settings(
    models: Path, server: str, archive: Path
) -> None:
    call_command("fetch_model", "delg-r50-gldv2", url=f"{server}/model.tar.gz", sha256=_sha256(archive).upper())
    record = json.loads((models / "installed" / "delg-r50-gldv2" / "model.json").read_text())
    assert record["kind"] == "delg"
    assert record["settings"]["score_threshold"] == 454.6 and record["settings"]["global_scales_ind"] == [3, 4, 5]


def test_from_file_installs_an_archive_a_zip_or_a_folder(models: Path, archive: Path, tmp_path: Path, capsys) -> None:
    call_command("fetch_model", "from-tar", from_file=archive, kind="delg")
    err = capsys.readouterr().err
    assert "no known checksum" in err and "unverified (sha256 " in err
    zipped = tmp_path / "model.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for path in (tmp_path / "export").rglob("*"):
            zf.write(path, path.relative_to(tmp_path / "export").as_posix())
    call_command("fetch_model", "from-zip", from_file=zipped, kind="delf", sha256=_sha256(zipped))
    call_command("fetch_model", "from-folder", from_file=tmp_path / "export", kind="delg")
    for name in ("from-tar", "from-zip", "from-folder"):
        assert (models / "installed" / name / "saved_model" / "saved_model.pb").is_file()
    records = [json.loads((models / "installed" / n / "model.json").read_text()) for n in ("from-tar", "from-folder")]
    assert records[0]["source"] == f"file:{archive.resolve()}"
    assert records[0]["model_sha256"] == records[1]["model_sha256"]  # same files, same model version


def test_from_file_with_a_wrong_checksum_installs_nothing(models: Path, archive: Path) -> None:
    with pytest.raises(CommandError, match="sha256 mismatch"):
        call_command("fetch_model", "tiny", from_file=archive, kind="delg", sha256="cd" * 32)
    assert _nothing_installed(models)


def test_delf_pca_files_are_installed_next_to_the_model(models: Path, tmp_path: Path) -> None:
    root = tmp_path / "delf_gld_20190411"
    fake_saved_model(root / "model")
    (root / "pca").mkdir()
    for name in ("mean.datum", "pca_proj_mat.datum", "pca_vars.datum"):
        (root / "pca" / name).write_bytes(b"datum")
    call_command("fetch_model", "delf-gld", from_file=tar_gz(root, tmp_path / "delf.tar.gz", arcname=root.name))
    installed = models / "installed" / "delf-gld"
    assert sorted(p.name for p in (installed / "pca").iterdir()) == ["mean.datum", "pca_proj_mat.datum", "pca_vars.datum"]
    assert json.loads((installed / "model.json").read_text())["kind"] == "delf"


@pytest.mark.parametrize(
    ("member", "link"), [("../escape.txt", None), ("/tmp/absolute.txt", None), ("model/evil", "/etc/passwd"), ("model/up", "../../x")]
)
def test_unsafe_archives_are_refused(models: Path, tmp_path: Path, member: str, link: str | None) -> None:
    hostile = tar_with_member(tmp_path / "hostile.tar.gz", member, symlink_to=link)
    with pytest.raises(CommandError, match="outside the target folder"):
        call_command("fetch_model", "tiny", from_file=hostile, kind="delg")
    assert _nothing_installed(models)
    assert not (tmp_path / "escape.txt").exists() and not (models / "escape.txt").exists()


def test_an_archive_without_a_saved_model_is_refused(models: Path, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README").write_text("hello")
    with pytest.raises(CommandError, match="no SavedModel"):
        call_command("fetch_model", "tiny", from_file=tar_gz(tmp_path / "notes", tmp_path / "n.tar.gz", arcname="n"), kind="delg")
    assert _nothing_installed(models)


def test_an_installed_model_is_replaced_only_with_force(models: Path, archive: Path, tmp_path: Path) -> None:
    call_command("fetch_model", "tiny", from_file=archive, kind="delg")
    first = json.loads((models / "installed" / "tiny" / "model.json").read_text())
    other = fake_saved_model(tmp_path / "other")
    (other / "variables" / "variables.data-00000-of-00001").write_bytes(b"new weights")
    with pytest.raises(CommandError, match="already installed.*--force"):
        call_command("fetch_model", "tiny", from_file=other, kind="delg")
    call_command("fetch_model", "tiny", from_file=other, kind="delg", force=True)
    second = json.loads((models / "installed" / "tiny" / "model.json").read_text())
    assert second["model_sha256"] != first["model_sha256"]
    assert sorted(p.name for p in (models / "installed").iterdir()) == ["tiny"]


def test_unknown_names_need_a_kind(models: Path, archive: Path) -> None:
    with pytest.raises(CommandError, match="not an official model.*--kind"):
        call_command("fetch_model", "mine", from_file=archive)
    with pytest.raises(CommandError, match="invalid model name"):
        call_command("fetch_model", "../mine", from_file=archive, kind="delg")


def test_list_shows_official_and_installed_models(models: Path, archive: Path, capsys) -> None:
    call_command("fetch_model", "tiny", from_file=archive, kind="delg")
    capsys.readouterr()
    call_command("fetch_model", list=True)
    out = capsys.readouterr().out
    assert "delg-r50-gldv2" in out and "r50delg_gldv2clean_20200914.tar.gz" in out and "unknown (pass --sha256)" in out
    assert "delg:tiny" in out


@pytest.mark.django_db
def test_catalog_selects_the_installed_model_and_queues_a_reindex(models: Path, archive: Path, capsys) -> None:
    from retrieval.models import Catalog, ReindexJob

    Catalog.objects.create(name="demo")
    call_command("fetch_model", "tiny", from_file=archive, kind="delg", catalog="demo", no_wait=True)
    assert Catalog.objects.get(name="demo").extractor_spec == "delg:tiny"
    job = ReindexJob.objects.get()
    assert job.stale_only and job.status == "pending"
    assert f"reindex job {job.pk} queued" in capsys.readouterr().out


def test_fetching_and_checking_specs_never_load_tensorflow(tmp_path: Path, archive: Path) -> None:
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import sys, django
        django.setup()
        from django.core.management import call_command
        from retrieval.vision.extractors import check_spec
        call_command("fetch_model", "tiny", from_file={str(archive)!r}, kind="delg", verbosity=0)
        check_spec("delg:tiny", cache_dir={str(tmp_path / "models")!r})
        print(",".join(m for m in ("tensorflow", "keras") if m in sys.modules) or "none")
        """
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "searchsite.settings", "LANDMARKS_MODEL_DIR": str(tmp_path / "models")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "none", result.stderr
