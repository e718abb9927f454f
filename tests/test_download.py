"""The online path, offline: BEIR's download against a local HTTP server on 127.0.0.1 serving BEIR-layout zips."""
import http.server
import io
import threading
import zipfile

import pytest

from searchr3_eval.cli import main
from tests.conftest import write_beir_folder


def beir_zip(folder, name: str) -> bytes:
    """``folder``'s BEIR files as BEIR ships them: ``<name>/corpus.jsonl``, ``<name>/qrels/test.tsv``, ..."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, f"{name}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local server; ``files`` maps a path to (bytes, bytes actually sent before the connection closes)."""
    files: dict[str, tuple[bytes, int]] = {}
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path not in files:
                self.send_error(404)
                return
            body, sent = files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:sent])
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SEARCHR3_BEIR_URL", f"http://127.0.0.1:{httpd.server_port}/datasets")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield files, requests
    httpd.shutdown()
    httpd.server_close()


def error_lines(capsys) -> list[str]:
    """What stderr holds besides the download's progress bar."""
    return [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
            if line.strip() and not line.startswith("download ")]


def run_scifact(data, out):
    data.mkdir(exist_ok=True)
    return main(["run", "--tasks", "SciFact", "--models", "bm25", "--data-dir", str(data), "--output-dir", str(out),
                 "--quiet"])


def test_a_beir_set_is_downloaded_unzipped_and_reused(server, tmp_path, capsys):
    files, requests = server
    files["/datasets/scifact.zip"] = (body := beir_zip(write_beir_folder(tmp_path / "src", 40), "scifact"), len(body))
    data = tmp_path / "data"
    assert run_scifact(data, tmp_path / "r") == 0
    assert requests == ["/datasets/scifact.zip"] and (data / "scifact" / "qrels" / "test.tsv").is_file()
    assert sorted(p.name for p in data.iterdir()) == ["scifact"]  # no zip or staging folder left
    assert "nDCG@10" in capsys.readouterr().out
    assert run_scifact(data, tmp_path / "r2") == 0 and len(requests) == 1  # the unzipped folder is reused


def test_an_interrupted_download_is_never_data_and_is_redone(server, tmp_path, capsys):
    files, requests = server
    body = beir_zip(write_beir_folder(tmp_path / "src", 40), "scifact")
    files["/datasets/scifact.zip"] = (body, len(body) // 2)
    data = tmp_path / "data"
    assert run_scifact(data, tmp_path / "r") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "could not download" in err[0] and f"after {len(body) // 2} of {len(body)} bytes" in err[0]
    assert not any(data.iterdir())  # no half zip, no half folder
    files["/datasets/scifact.zip"] = (body, len(body))
    assert run_scifact(data, tmp_path / "r") == 0 and len(requests) == 2


@pytest.mark.parametrize("content, message", [(b"PK\x03\x04 this is not a zip", "is not a readable zip"),
                                              (None, "HTTP Error 404")])
def test_a_corrupt_zip_or_a_missing_file_is_one_line(server, tmp_path, capsys, content, message):
    files, _ = server
    if content is not None:
        files["/datasets/scifact.zip"] = (content, len(content))
    data = tmp_path / "data"
    assert run_scifact(data, tmp_path / "r") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and message in err[0] and "scifact" in err[0]
    assert not any(data.iterdir())
