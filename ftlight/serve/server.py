"""``llama-server`` as a subprocess on a free local port: greedy completions of raw prompts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from ftlight.errors import ModelError
from ftlight.serve import llama_cpp

#: loading a GGUF from a cold disk; past it the server is taken for hung
START_TIMEOUT_S = 300
#: one completion; past it the server is taken for hung
REQUEST_TIMEOUT_S = 600


class LlamaServer:
    """A ``llama-server`` serving one GGUF for the length of a ``with`` block."""

    def __init__(self, gguf: Path, context: int = 4096, threads: int | None = None) -> None:
        self.gguf = Path(gguf)
        self.binary = llama_cpp.need_program("llama-server", f"scoring {self.gguf.name}")
        self.context = context
        self.threads = threads or max(1, len(os.sched_getaffinity(0)))
        self.process: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> LlamaServer:
        self.port = _free_port()
        self._log = tempfile.TemporaryFile(mode="w+")
        command = [str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "-c", str(self.context), "-t", str(self.threads)]
        command += ["-np", "1", "--no-webui"]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def complete(self, prompt: str, max_tokens: int) -> str:
        """The greedy continuation of ``prompt`` (special tokens in it parsed as such), up to
        ``max_tokens`` tokens or an end-of-generation token, which is not included."""
        body = {
            "prompt": prompt,
            "n_predict": max_tokens,
            "temperature": 0.0,
            "top_k": 1,
            "cache_prompt": True,  # the shared opening (system, instruction) is read once
            "stream": False,
        }
        return str(self._post("/completion", body)["content"])

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ModelError(f"llama-server failed on {path}: {err}\n{self._tail()}") from None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ModelError(
                    f"llama-server stopped (exit {self.process.returncode}) while loading "
                    f"{self.gguf}:\n{self._tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ModelError(f"llama-server did not load {self.gguf} in {START_TIMEOUT_S} s")

    def _tail(self, lines: int = 8) -> str:
        self._log.seek(0)
        return "\n".join(self._log.read().strip().splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
