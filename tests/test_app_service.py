"""app.py run as a user runs it (a process, its own TMPDIR: whatever it writes lands there) and the toy
world's command line: flags checked before the model loads (a taken port, a bad --max_upload_mb: one
line), refusals as one line without a traceback in the server's output, a fractional upload limit, each
session's files deleted when it ends (an upload another session still uses stays), 40 rapid requests all
answered, SIGINT and SIGTERM: one line, nothing left behind; `python -m toyworld.demo --out` and the
commands it prints.

Needs `pip install -e ".[demo]"` (.ci/run installs it); no download."""
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")   # under TOPA_CI=1 a skip fails the run (tests/conftest.py)
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from test_app import ask as ask_app  # noqa: E402  (the name `ask` is ask.py's below)
from test_app import free_port, on_server  # noqa: E402

from toyworld.videos import write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def env_for(tmp: Path) -> dict:
    return dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                GRADIO_HEARTBEAT_INTERVAL="1", GRADIO_ANALYTICS_ENABLED="False")


def run_python(tmp: Path, *argv):
    """`python *argv` in the repository with TMPDIR = `tmp`, its output captured."""
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env_for(tmp), capture_output=True, text=True,
                          timeout=600)


def files_in(folder: Path):
    """The files under `folder` (relative paths), while the server may be deleting some."""
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


class Server:
    """`python <argv> --port P` with TMPDIR = `tmp` (empty), its output in `log`."""

    def __init__(self, tmp: Path, argv, port=None):
        self.tmp, self.port = tmp, port or free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp.parent / f"{tmp.name}.log"
        self.url = f"http://127.0.0.1:{self.port}/"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, *argv, "--port", str(self.port)], cwd=REPO,
                                         env=env_for(tmp), stdout=log, stderr=subprocess.STDOUT, text=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_up(self, timeout=600):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"app.py ended with {self.proc.returncode}:\n{self.log}")
            try:
                urllib.request.urlopen(self.url, timeout=5).close()
                return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"app.py did not come up in {timeout} s:\n{self.log}")

    def stop(self, sig) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=120)


def wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


# ---------------------------------------------------------------- which files a session holds

def test_session_files_follow_their_sessions(tmp_path):
    """engine/serve.py's rules, file by file: an upload is deleted when the last session holding it ends,
    never the page's own, not when another upload has replaced it since, a refused one at once unless
    another session holds it; the frames a session was shown go with it; an idle API client's session
    ends; a session id is never a path; shutdown deletes the whole folder."""
    from engine.serve import SessionFiles

    def put(rel: str) -> Path:
        path = Path(files.root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(64))
        return path
    (tmp_path / "srv").mkdir()
    files = SessionFiles(tmp_path / "srv", idle_s=60)
    page = put("e0/example.mp4")
    files.seal()
    up = put("c1/clip.mp4")
    files.hold("A", str(up))
    files.hold("B", str(up))
    files.end("A")
    assert up.exists()
    files.end("B")
    assert not up.exists() and not up.parent.exists()
    files.hold("A", str(page))
    files.end("A")
    assert page.exists()
    up = put("c1/clip.mp4")
    files.hold("C", str(up))
    put("c1/.fresh")
    os.replace(Path(files.root) / "c1/.fresh", up)   # another client sent the same content since
    files.end("C")
    assert up.exists()
    files.hold("D", str(up))
    files.reject("E", str(up))
    assert up.exists()
    files.reject("D", str(up))
    assert not up.exists()
    shown = files.frames_folder("F")
    (shown / "000.webp").write_bytes(b"x")
    files.end("F")
    assert not shown.exists()
    idle = put("c2/idle.mp4")
    files.hold("G", str(idle))
    files.expire(now=time.monotonic() + 61)
    assert not idle.exists() and "G" not in files.active
    assert files.session_folder("../../etc").parent == Path(files.root) / "frames"
    files.close()
    assert not (tmp_path / "srv").exists()


# ---------------------------------------------------------------- before the model loads

def run_app(tmp: Path, *flags):
    tmp.mkdir(parents=True, exist_ok=True)
    return run_python(tmp, "app.py", *flags)


def test_a_taken_port_and_bad_flags_are_one_line_before_loading(tmp_path):
    """Nothing is built (the toy world would be written to TMPDIR first): one line naming the flag."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        cases = [(["--port", port], f"--port {port}: cannot listen on 127.0.0.1:{port}"),
                 (["--max_upload_mb", "0"], "--max_upload_mb must be a positive number of megabytes, got 0"),
                 (["--max_upload_mb", "-2.5"], "--max_upload_mb must be a positive number of megabytes, got -2.5"),
                 (["--max_upload_mb", "nan"], "--max_upload_mb must be a positive number of megabytes, got nan"),
                 (["--examples", str(tmp_path / "missing.mp4")], "--examples"),
                 (["--host", "no-such-host.invalid"], "--host no-such-host.invalid")]
        for k, (flags, message) in enumerate(cases):
            tmp = tmp_path / f"case{k}"
            r = run_app(tmp, "--toy", "--device", "cpu", *flags)
            assert r.returncode == 1, (flags, r.stderr[-3000:])
            assert r.stderr.strip().splitlines() == [f"app.py: error: {r.stderr.strip()[len('app.py: error: '):]}"]
            assert r.stderr.startswith(f"app.py: error: {message}"), (flags, r.stderr)
            assert files_in(tmp) == [], (flags, files_in(tmp))


# ---------------------------------------------------------------- the service

@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`app.py --toy` with a fractional upload limit (0.5 MB)."""
    root = tmp_path_factory.mktemp("service")
    server = Server(root / "tmp", ["app.py", "--toy", "--device", "cpu", "--max_upload_mb", "0.5"]).wait_up()
    yield server
    if server.proc.poll() is None:
        server.stop(signal.SIGKILL)


def test_refusals_are_one_line_without_a_traceback(service, tmp_path):
    """Each refusal reaches the client as its one line, the server's output has no traceback, and a
    refused upload is gone from the server at once."""
    broken, notes, big = tmp_path / "broken.mp4", tmp_path / "notes.txt", tmp_path / "big.mp4"
    broken.write_bytes(b"this is not a video")
    notes.write_text("hello")
    big.write_bytes(os.urandom(600 * 1024))
    client = Client(service.url, verbose=False)
    try:
        example = next(service.tmp.rglob("red_ball.mp4"))
        for args, message in ((("Open question", "   "), "Type a question."),
                              (("Multiple choice", "What?", ["only"]), "Multiple choice needs at least two options.")):
            with pytest.raises(AppError) as e:
                ask_app(client, example, *args)
            assert str(e.value).strip() == message
        with pytest.raises(AppError, match="broken.mp4: unreadable"):
            ask_app(client, broken, "Describe")
        with pytest.raises(AppError, match="notes.txt is a '.txt' file, not a video"):
            ask_app(client, notes, "Describe")
        with pytest.raises(Exception, match="(?i)maximum allowed size|too large|exceeds"):   # over --max_upload_mb 0.5
            ask_app(client, big, "Describe")
    finally:
        client.close()
    assert "Traceback" not in service.log, service.log
    for name in ("broken.mp4", "notes.txt", "big.mp4"):
        assert not list(service.tmp.rglob(name)), name


def test_a_session_end_deletes_its_files_only(service, tmp_path):
    """Two sessions send the same video (Gradio names uploads by content: one path). When the first ends,
    the second still asks about it; when both have ended, only the page's own files are left."""
    shared = write_video(tmp_path / "shared_clip.mp4", 30, 10, (96, 72))
    before = set(files_in(service.tmp))
    first, second = Client(service.url, verbose=False), Client(service.url, verbose=False)
    try:
        ask_app(first, shared, "Describe")
        ask_app(second, shared, "Open question", "What is it?")
        (path,) = list(service.tmp.rglob("shared_clip.mp4"))
        first.close()

        def sessions_shown_frames():   # the per-session folders of the frames the answers showed
            return {f.split("/frames/")[1].split("/")[0] for f in set(files_in(service.tmp)) - before
                    if "/frames/" in f}
        time.sleep(5)   # the heartbeat (1 s here) tells the server the first session ended
        assert wait_for(lambda: len(sessions_shown_frames()) <= 1), files_in(service.tmp)
        assert path.exists(), "the first session's end deleted an upload the second one uses"
        ask_app(second, on_server(path), "Describe")   # the second session's follow-up still answers
    finally:
        first.close()
        second.close()
    assert wait_for(lambda: set(files_in(service.tmp)) <= before), sorted(set(files_in(service.tmp)) - before)
    assert "Traceback" not in service.log, service.log


def test_40_rapid_requests_are_all_answered(service, tmp_path):
    """10 clients x 4 requests at once on the same uploaded video: every request is answered, every frame
    image downloads whole (a short response was "peer closed connection" / "Too little data for declared
    Content-Length"), and the server's output is clean."""
    video = write_video(tmp_path / "rapid.mp4", 40, 10, (96, 72))
    answers, failures = [], []

    def one_client():
        client = Client(service.url, verbose=False)
        try:
            for _ in range(4):
                _, text, _, gallery = ask_app(client, video, "Describe")
                answers.append((text, [os.path.getsize(g["image"]) for g in gallery]))
        except Exception as e:  # noqa: BLE001 (collected and reported below)
            failures.append(f"{type(e).__name__}: {e}")
        finally:
            client.close()
    threads = [threading.Thread(target=one_client) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert failures == [] and len(answers) == 40, failures
    assert len({a for a, _ in answers}) == 1
    assert len({tuple(sizes) for _, sizes in answers}) == 1 and min(answers[0][1]) > 0
    assert "Traceback" not in service.log and "Content-Length" not in service.log, service.log


def test_sigint_stops_the_server_and_leaves_nothing(service):
    """The last test of the service: Ctrl-C ends it with one line that says it stopped; its folder (uploads,
    frames, the toy world) is gone."""
    assert service.stop(signal.SIGINT) == 130, service.log
    last = service.log.strip().splitlines()[-1]
    assert last.startswith("app.py: stopped by SIGINT") and "resume" not in last, service.log
    assert "Traceback" not in service.log, service.log
    # (torch makes an empty torchinductor_<user>/ in TMPDIR when transformers is imported: torch's, not the app's)
    assert files_in(service.tmp) == [] and [p for p in service.tmp.iterdir()
                                            if not p.name.startswith("torchinductor_")] == []


# ---------------------------------------------------------------- the toy world's command line

def test_toy_world_command_line_and_the_commands_it_prints(tmp_path):
    """`python -m toyworld.demo --out DIR` writes the world and prints ask.py and app.py commands; each
    runs: ask.py prints what the API answers on that world, app.py serves it and SIGTERM leaves nothing."""
    out = tmp_path / "toy"
    r = run_python(tmp_path, "-m", "toyworld.demo", "--out", str(out))
    assert r.returncode == 0, r.stderr
    cmds = [shlex.split(line) for line in r.stdout.splitlines() if line.strip().startswith("python ")]
    assert [c[1] for c in cmds] == ["ask.py", "ask.py", "ask.py", "app.py"], r.stdout
    import ask
    from engine.api import QAConfig, TOPAVideoQA
    from engine.asking import mc_line
    first = ask.get_args(cmds[0][2:])
    qa = TOPAVideoQA(QAConfig.from_args(first), warn=lambda m: None)
    video = first.video
    want = [mc_line(first.options, qa.mvbench(video, first.question, first.options)), qa.describe(video).text,
            qa.answer(video, ask.get_args(cmds[2][2:]).question).text]
    for cmd, line in zip(cmds[:3], want):
        done = run_python(tmp_path, *cmd[1:])
        assert done.returncode == 0, (cmd, done.stderr)
        assert done.stdout.rstrip("\n").splitlines()[-1] == line, (cmd, done.stdout)
    tmp = tmp_path / "app_tmp"
    server = Server(tmp, cmds[3][1:]).wait_up()
    try:
        client = Client(server.url, verbose=False)
        _, text, _, _ = ask_app(client, cmds[3][3], "Open question", "What is happening in the video?")
        client.close()
        assert text == qa.answer(cmds[3][3], "What is happening in the video?").text
    finally:
        rc = server.stop(signal.SIGTERM)
    assert rc == 143, server.log
    assert server.log.strip().splitlines()[-1].startswith("app.py: stopped by SIGTERM"), server.log
    assert files_in(tmp) == [], files_in(tmp)
