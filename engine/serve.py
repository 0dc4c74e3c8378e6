"""The web demo as a service (app.py): its flags, checked before the model loads; the files it writes;
its life as a server. Imports neither torch nor gradio at module level (`app.py --help` stays instant).

    cfg = ServeConfig.from_args(args)   # --max_upload_mb, --port, --examples checked: one line each
    cfg.check_address()                 # before the model loads: a taken --port is one line naming it
    files = SessionFiles.create()       # a private temporary folder, Gradio's for this server too
    demo = ...                          # the page (Gradio copies the examples into the folder now)
    files.seal()                        # what the page itself wrote stays until shutdown
    url, share_url = start(demo, cfg)   # launch in the background; wait(demo); then demo.close(), files.close()

Files. Everything the server writes lives in one folder of its own (GRADIO_TEMP_DIR while it runs), removed
whole at shutdown. Gradio names an upload by its content (`<folder>/<sha256>/<name>`): two sessions that
send the same video get the same path, and the copy of a page's example is such a path too. So an upload
belongs to the sessions that hold it (a page as soon as its upload arrives, an API client when it asks):
it is deleted when the last of them ends, never while another holds it, never if it is the page's own,
and not if another upload has replaced it since (a client that sent it but has not asked yet). A refused
upload (not a video, too big, unreadable) is deleted at once. The frames an answer shows are written by the app into a fresh folder per answer and
never rewritten: Gradio's own gallery cache names images by content and rewrites such a file in place
(`write_bytes`) while another client may be downloading it, which cut those downloads short under rapid
requests ("Too little data for declared Content-Length"). A session ends when its page closes (Gradio's
heartbeat stops) or, for an API client that keeps no heartbeat (gradio_client), after `idle_s` seconds
without a request.
"""
import hashlib
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from util.errors import ConfigError, MissingFileError
from util.settings import from_flags, setting

IDLE_S = 3600.0   # an API client's session ends after an hour without a request


# ---------------------------------------------------------------- flags

@dataclass
class ServeConfig:
    """app.py's own settings (the model's are QAConfig's and ModelConfig's, engine/config.py)."""
    GROUP = "server"

    toy: bool = setting(False, "serve a random tiny model (and example videos) written to a temporary folder")
    host: str = setting("127.0.0.1", "the address to listen on; 0.0.0.0 serves other machines too")
    port: int = setting(7860, "the port to listen on (tried before the model loads)")
    share: bool = setting(False, "also a public gradio.live link (off unless given)")
    examples: List[str] = setting(help="example videos shown with a default question (default: none; --toy adds "
                                       "its own)", factory=list, nargs="*", metavar="VIDEO")
    max_upload_mb: float = setting(200.0, "largest accepted upload in megabytes (fractions allowed)")

    def __post_init__(self):
        from video.frames import VIDEO_EXTS
        if not (math.isfinite(self.max_upload_mb) and self.max_upload_mb > 0):
            raise ConfigError(f"--max_upload_mb must be a positive number of megabytes, got {self.max_upload_mb:g}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")
        for e in self.examples:
            if not os.path.isfile(e):
                raise MissingFileError(f"--examples {e}: not found")
            if Path(e).suffix.lower() not in VIDEO_EXTS:
                raise ConfigError(f"--examples {e}: not a video file ({', '.join(VIDEO_EXTS)})")

    @classmethod
    def from_args(cls, a) -> "ServeConfig":
        return from_flags(cls, a)

    @property
    def max_upload_bytes(self) -> int:
        return max(1, int(self.max_upload_mb * 2 ** 20))

    def check_address(self):
        """ConfigError now if the server could not listen on --host:--port (taken, not this machine's,
        not allowed), so that nobody waits for the model to load to learn it."""
        try:
            family, _, _, _, addr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as e:
            raise ConfigError(f"--host {self.host}: not an address of this machine ({e.strerror})") from None
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server binds it
            try:
                s.bind(addr)
            except OSError as e:
                raise ConfigError(self.port_error(e.strerror or str(e))) from None

    def port_error(self, why: str) -> str:
        return f"--port {self.port}: cannot listen on {self.host}:{self.port} ({why}); choose another --port"


# ---------------------------------------------------------------- files

def _inode(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class SessionFiles:
    """The server's temporary folder and which session holds which file in it (module docstring)."""

    def __init__(self, root, idle_s: float = IDLE_S):
        self.root = os.path.realpath(root)
        self.idle_s = idle_s
        self.keep: Set[str] = set()                      # the page's own files (example copies)
        self.holders: Dict[str, Set[str]] = {}           # upload -> the sessions that asked about it
        self.seen: Dict[str, Tuple[int, int]] = {}       # upload -> its inode when last held
        self.uploads: Dict[str, Set[str]] = {}           # session -> its uploads
        self.active: Dict[str, float] = {}               # session -> time of its last request
        self._count = 0
        self._lock = threading.Lock()
        self._env: Optional[str] = None

    @classmethod
    def create(cls, idle_s: float = IDLE_S) -> "SessionFiles":
        """A fresh folder under the system's temporary folder, made Gradio's (GRADIO_TEMP_DIR) until close()."""
        files = cls(tempfile.mkdtemp(prefix="topa_demo_"), idle_s)
        files._env = os.environ.get("GRADIO_TEMP_DIR")
        os.environ["GRADIO_TEMP_DIR"] = files.root
        return files

    def seal(self):
        """Every file now in the folder is the page's own (Gradio's copies of the examples): kept."""
        self.keep = {os.path.join(d, f) for d, _, fs in os.walk(self.root) for f in fs}

    def owns(self, path: str) -> bool:
        """An upload this server may delete: in its folder, not the page's own."""
        path = os.path.realpath(path)
        return path.startswith(self.root + os.sep) and path not in self.keep

    # ---- sessions ----
    def hold(self, session: Optional[str], path: str):
        """`session` asked about `path`: it stays while the session lives."""
        self.expire()
        if session is None:
            return
        with self._lock:
            self.active[session] = time.monotonic()
            path = os.path.realpath(path)
            if self.owns(path):
                self.holders.setdefault(path, set()).add(session)
                self.uploads.setdefault(session, set()).add(path)
                self.seen[path] = _inode(path)

    def reject(self, session: Optional[str], path: str):
        """A refused upload: deleted now, unless another session holds it or it is the page's own."""
        path = os.path.realpath(path)
        with self._lock:
            others = self.holders.get(path, set()) - {session}
            if session in self.holders.get(path, set()):
                self._drop(session, path)
            if not others and self.owns(path):
                _remove(path)

    def frames_folder(self, session: Optional[str]) -> Path:
        """A new folder for the frames of one answer (never written again), under the session's folder."""
        with self._lock:
            self._count += 1
            n = self._count
        folder = self.session_folder(session) / f"{n:06d}"
        folder.mkdir(parents=True)
        return folder

    def session_folder(self, session: Optional[str]) -> Path:
        """Where the frames shown to `session` go (its id is the client's choice: never part of a path)."""
        return Path(self.root) / "frames" / hashlib.sha256((session or "-").encode()).hexdigest()[:24]

    def end(self, session: Optional[str]):
        """The session ended: its uploads no other session holds, and its frames, are deleted."""
        if session is None:
            return
        with self._lock:
            self.active.pop(session, None)
            for path in list(self.uploads.get(session, ())):
                self._drop(session, path)
                if not self.holders.get(path) and self.seen.pop(path, None) == _inode(path) and self.owns(path):
                    _remove(path)
            self.uploads.pop(session, None)
        shutil.rmtree(self.session_folder(session), ignore_errors=True)

    def expire(self, now: Optional[float] = None):
        """End the sessions without a request for `idle_s` seconds (API clients keep no heartbeat)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [s for s, t in self.active.items() if now - t > self.idle_s]
        for s in idle:
            self.end(s)

    def _drop(self, session: str, path: str):
        self.holders.get(path, set()).discard(session)
        if not self.holders.get(path):
            self.holders.pop(path, None)
        self.uploads.get(session, set()).discard(path)

    def close(self):
        """Shutdown: the whole folder is deleted, GRADIO_TEMP_DIR restored."""
        shutil.rmtree(self.root, ignore_errors=True)
        if os.environ.get("GRADIO_TEMP_DIR") == self.root:
            if self._env is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = self._env


def _remove(path: str):
    """Delete a file, then its folder (Gradio's per-content folder) if that is now empty."""
    try:
        os.remove(path)
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass


# ---------------------------------------------------------------- the server

def start(demo, cfg: ServeConfig, **page) -> Tuple[str, Optional[str]]:
    """Launch `demo` in the background -> (local URL, public URL or None). `page`: launch()'s page options
    (theme, css, allowed_paths)."""
    try:
        _, local_url, share_url = demo.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share,
                                              max_file_size=cfg.max_upload_bytes, prevent_thread_lock=True,
                                              quiet=True, **page)
    except OSError as e:   # taken between check_address and now
        raise ConfigError(cfg.port_error(str(e).splitlines()[0])) from None
    return local_url, share_url


def wait(demo):
    """Until the server is closed; SIGTERM and Ctrl-C reach the caller as SystemExit (util/errors.py)."""
    while demo.is_running:
        time.sleep(0.2)
