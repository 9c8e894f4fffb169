"""OpenAI-compatible servers for evaluation: vLLM with many LoRA adapters, or a stand-in.

One vLLM server per base model serves the base (as ``base``) and, one after another, every
LoRA adapter of that model: adapters are loaded at run time (``/v1/load_lora_adapter``)
by name, evaluated, and unloaded again. The accelerator holds ``max_loras`` adapter slots
(each sized for ``--max-lora-rank``, the largest rank served) and host memory
``max_cpu_loras`` adapters, however many adapters the sweep has: evaluation asks one
adapter at a time, so one slot is enough (``lora_slot_bytes`` says what a slot costs). An
adapter the server refuses is reported by name; the others are still evaluated.
Full fine-tunes are whole models and get a server of their own.

vLLM lives in its own environment (``.venv-vllm`` here, ``/opt/vllm`` in the evaluation
image; ``LORA_REGRET_VLLM_PYTHON`` names another) and is started as
``python -m vllm.entrypoints.openai.api_server`` (the CPU wheel's ``vllm`` script does
not start). Runtime adapter loading is vLLM's unauthenticated development API, so the
server listens on 127.0.0.1 only, next to the job that started it.

``ManagedServer`` starts any such command, waits for ``/health``, stops its whole process
group, and turns a server that died (at start-up or mid-run) into a ``ServerError`` holding
the server's last log lines; ``transformers serve`` runs through it where a stand-in is
enough.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
from pydantic import BaseModel, ConfigDict, Field

from contracts.safe import SafeName, SafePath, check_path

# vLLM's accepted --max-lora-rank values (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_PYTHON_ENV = "LORA_REGRET_VLLM_PYTHON"
REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_VLLM_ENV = REPO_ROOT / ".venv-vllm"
BASE_NAME = "base"
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def vllm_python() -> str:
    """The Python of the serving environment: $LORA_REGRET_VLLM_PYTHON, else .venv-vllm."""
    named = os.environ.get(VLLM_PYTHON_ENV)
    if named:
        return named
    local = LOCAL_VLLM_ENV / "bin" / "python"
    if local.exists():
        return str(local)
    raise ServerError(f"no vLLM environment: {local} is missing (scripts/bootstrap-env.sh "
                      f"creates it) and {VLLM_PYTHON_ENV} is not set")


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest vLLM-accepted rank that covers every adapter served."""
    largest = max(ranks)
    for allowed in VLLM_LORA_RANKS:
        if allowed >= largest:
            return allowed
    raise ValueError(f"rank {largest} exceeds vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def lora_slot_bytes(lora_params_per_rank: int, rank: int, dtype: str = "bfloat16") -> int:
    """Accelerator memory of one vLLM LoRA slot: A and B of every adapted layer at ``rank``.

    vLLM stacks ``max_loras`` slots of ``rank x in`` (A) and ``out x rank`` (B) per adapted
    projection, in the model's dtype; ``lora_params_per_rank`` (configs/models.yaml) is
    the sum of ``in + out`` over those projections.
    """
    return lora_params_per_rank * rank * DTYPE_BYTES[dtype]


class VllmServerConfig(BaseModel):
    """One vLLM OpenAI-compatible server for a base model (and its adapters, if any)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: SafePath
    served_name: SafeName = BASE_NAME
    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)
    tensor_parallel_size: int = Field(default=1, gt=0, le=64)
    max_model_len: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    dtype: str = Field(default="bfloat16", pattern=r"^(auto|bfloat16|float16|float32)$")
    max_logprobs: int = Field(default=20, gt=0)
    # LoRA: None serves the base model only.
    max_lora_rank: int | None = Field(default=None, description="Largest adapter rank.")
    max_loras: int = Field(default=1, gt=0, le=256,
                           description="Adapter slots on the accelerator.")
    max_cpu_loras: int = Field(default=2, gt=0, le=4096,
                               description="Adapters kept in host memory (>= max_loras).")
    cpu_kvcache_gib: int = Field(default=1, gt=0, le=1024,
                                 description="KV cache of the CPU build (VLLM_CPU_KVCACHE_SPACE).")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self, python: str | None = None) -> list[str]:
        """The argument list (no shell involved) that starts the server."""
        cmd = [
            python or vllm_python(), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--host", self.host, "--port", str(self.port),
            "--served-model-name", self.served_name,
            "--dtype", self.dtype,
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}",
            "--max-logprobs", str(self.max_logprobs),
        ]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.max_lora_rank is not None:
            cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank([self.max_lora_rank])),
                    "--max-loras", str(self.max_loras),
                    "--max-cpu-loras", str(max(self.max_cpu_loras, self.max_loras))]
        return cmd

    def env(self) -> dict[str, str]:
        """Environment the server needs on top of the job's."""
        env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE",
                                                        str(self.cpu_kvcache_gib))}
        if self.max_lora_rank is not None:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return env


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


class AdapterError(RuntimeError):
    """The server refused one adapter; the message names it and says why."""


def load_adapter(base_url: str, name: str, path: str | Path, timeout_s: float = 600.0) -> None:
    """Register a LoRA adapter under ``name`` on a running vLLM server."""
    response = httpx.post(f"{base_url}/v1/load_lora_adapter", timeout=timeout_s,
                          json={"lora_name": name, "lora_path": str(path)})
    if response.status_code != 200:
        raise AdapterError(f"adapter {name} ({path}) did not load: "
                           f"{_error_message(response)}")


def unload_adapter(base_url: str, name: str, timeout_s: float = 120.0) -> None:
    """Free the adapter's host memory and slot; an adapter already gone is fine."""
    httpx.post(f"{base_url}/v1/unload_lora_adapter", timeout=timeout_s,
               json={"lora_name": name})


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:500]}"


# Lines that name what went wrong: vLLM's ERROR records and Python exception lines.
_ERROR_LINE = re.compile(r"\bERROR\b|^\S*(Error|Exception)\b[^\n]*:|\b\w+(Error|Exception): ")
MAX_CAUSE_LINES = 12


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

    def tail(self, lines: int = 40) -> str:
        """The server's first error lines (the root cause vLLM refers to as "above"),
        then its last log lines."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        last = text[-lines:]
        causes = [line for line in text[:-lines] if _ERROR_LINE.search(line)]
        causes = list(dict.fromkeys(causes))[:MAX_CAUSE_LINES]
        head = [*causes, "..."] if causes else []
        return "\n".join(head + last)

    def start(self) -> ManagedServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        print(f"[evaluation] starting server: {' '.join(self.command)}", file=sys.stderr)
        started = time.monotonic()
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                        env=self.env, start_new_session=True)
        log.close()
        deadline = started + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"server exited with {self.process.returncode} while "
                                  f"starting; its last lines ({self.log_path}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    print(f"[evaluation] server healthy at {self.base_url} after "
                          f"{time.monotonic() - started:.0f} s", file=sys.stderr)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"server not healthy after {self.startup_timeout_s:.0f} s; its last "
                          f"lines ({self.log_path}):\n{self.tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Raise ``ServerError`` with the server's last lines if it is no longer running."""
        if self.process is not None and not self.alive():
            raise ServerError(f"server exited with {self.process.returncode} during the "
                              f"evaluation; its last lines ({self.log_path}):\n{self.tail()}")

    def stop(self) -> None:
        """Stop the server and everything it started (its own process group)."""
        if self.process is None:
            return
        try:  # also when the server itself is gone: its engine processes may not be
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
