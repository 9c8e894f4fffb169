"""OpenAI-compatible servers for evaluation: vLLM with many LoRA adapters, or a stand-in.

One vLLM server per base model serves the base (as ``base``) and every LoRA adapter of
that model (``--enable-lora --lora-modules name=path ...``); requests pick one by name.
``--max-lora-rank`` is the largest rank served, rounded up to a value vLLM accepts.
Full fine-tunes are whole models and get a server of their own.

``ManagedServer`` starts any such command, waits for ``/health``, and stops it again; the
same code runs ``transformers serve`` where vLLM cannot (CPU machines, tests).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.safe import SafeName, SafePath, check_path

# vLLM's accepted --max-lora-rank values.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class LoraModule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: SafeName
    path: SafePath
    rank: int = Field(gt=0, le=4096)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value == "base":
            raise ValueError("'base' is the base model's served name, not an adapter name")
        return value


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest vLLM-accepted rank that covers every adapter served."""
    largest = max(ranks)
    for allowed in VLLM_LORA_RANKS:
        if allowed >= largest:
            return allowed
    raise ValueError(f"rank {largest} exceeds vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


class VllmServerConfig(BaseModel):
    """One vLLM OpenAI-compatible server: a base model and the LoRA adapters on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: SafePath
    served_name: str = "base"
    adapters: tuple[LoraModule, ...] = ()
    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)
    tensor_parallel_size: int = Field(default=1, gt=0, le=64)
    max_model_len: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    dtype: str = "bfloat16"
    max_logprobs: int = Field(default=20, gt=0)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self, executable: str = "vllm") -> list[str]:
        """The argument list (no shell involved) that starts the server."""
        cmd = [
            executable, "serve", self.model,
            "--host", self.host, "--port", str(self.port),
            "--served-model-name", self.served_name,
            "--dtype", self.dtype,
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}",
            "--max-logprobs", str(self.max_logprobs),
        ]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.adapters:
            cmd += ["--enable-lora", "--max-loras", str(len(self.adapters)),
                    "--max-lora-rank", str(max_lora_rank([a.rank for a in self.adapters])),
                    "--lora-modules", *[f"{a.name}={a.path}" for a in self.adapters]]
        return cmd


def transformers_serve_command(model: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """A CPU stand-in with the same API: ``transformers serve`` preloading one model."""
    exe = Path(sys.executable).with_name("transformers")
    return [str(exe), "serve", check_path(model), "--host", host, "--port", str(port),
            "--device", "cpu", "--log-level", "warning"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerError(RuntimeError):
    """The server died or never became healthy; the message holds its last output."""


class ManagedServer:
    """Start a server command, wait until ``/health`` answers, stop it on exit."""

    def __init__(self, command: list[str], base_url: str, log_path: str | Path,
                 startup_timeout_s: float = 900.0, env: dict[str, str] | None = None) -> None:
        self.command = command
        self.base_url = base_url.rstrip("/")
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def start(self) -> ManagedServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        print(f"[evaluation] starting server: {' '.join(self.command)}", file=sys.stderr)
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                        env=self.env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"server exited with {self.process.returncode}:\n"
                                  f"{self._tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    print(f"[evaluation] server healthy at {self.base_url}", file=sys.stderr)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"server not healthy after {self.startup_timeout_s:.0f} s:\n"
                          f"{self._tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
