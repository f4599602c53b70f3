from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting can be given as an environment variable MCDROPOUT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="MCDROPOUT_", frozen=True)

    # A checkpoint file, or a folder whose *.safetensors files are served by file name (stem).
    model_path: Path = Path("checkpoints")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    # None: torch's default (a thread per core), but the inference process takes one core less.
    torch_threads: int | None = Field(None, ge=1)
    log_level: str = "info"
    # When set, model routes need `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    api_key: SecretStr | None = None
    # When set, POST /admin/reload (with `X-Admin-Token: TOKEN`) reloads the model path.
    admin_token: SecretStr | None = None
    # On SIGTERM or SIGINT: readiness turns 503 at once and the server keeps listening (and
    # answering) this long, so that load balancers stop sending; then requests in flight get
    # shutdown_grace_seconds to finish (service/edge/server.py).
    shutdown_delay_seconds: float = Field(2.0, ge=0)
    shutdown_grace_seconds: float = Field(30.0, gt=0)

    # The HTTP edge (service/edge/server.py): what one connection may hold, and for how long. The
    # request line and headers within max_header_bytes (else 431) and header_timeout_seconds of
    # the connection or the request's first byte (else 408); an idle connection between requests
    # closed after keep_alive_seconds; past max_connections, 503.
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    header_timeout_seconds: float = Field(10.0, gt=0)
    keep_alive_seconds: int = Field(5, ge=1)
    max_connections: int = Field(1024, ge=1)
    # Bodies (service/edge/body.py): at most max_body_bytes each, counted once inflated (gzip,
    # deflate); body_timeout_seconds waiting for their bytes (else 408); max_body_bytes_in_flight
    # held at once, all requests together, counted as they arrive: past it, a request waits
    # unread.
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    body_timeout_seconds: float = Field(30.0, gt=0)
    max_body_bytes_in_flight: int = Field(16 * 1024 * 1024, ge=1024)
    max_instances: int = Field(256, ge=1)
    default_samples: int = Field(100, ge=1)
    max_samples: int = Field(1000, ge=1)
    max_total_samples: int = Field(100_000, ge=1)  # instances x samples in one request
    mc_chunk_rows: int = Field(8192, ge=1)  # bounds the engine's memory, see models/engine.py
    # Where the engines run: "cpu", or "cuda" / "cuda:N" when torch sees a GPU.
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$")
    # The image routes (service/api/images.py): the upload's bytes, and the pixels its header
    # declares, checked before anything is decoded, so that a decompression bomb is refused (413).
    # A side bounds the work per pixel row or column (a 1 x 16,777,216 image costs what a square
    # one of the same pixels does not).
    max_image_bytes: int = Field(5 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    max_image_side: int = Field(8192, ge=1)

    # "process": the engines run in a child process, so that the server's event loop and the
    # engines use a core each (service/inference/process.py); "thread": in a thread of this
    # process.
    inference: Literal["process", "thread"] = "process"
    # Batching (service/inference/batcher.py): concurrent requests share engine calls, up to this
    # many instances, waiting at most this long for more; a full queue answers 503 with
    # Retry-After.
    batch_max_instances: int = Field(256, ge=1)
    batch_max_delay_ms: float = Field(0.0, ge=0, le=1000)
    queue_max_requests: int = Field(256, ge=1)
    # Waiting and computing together; past it, 504 (and the server goes on serving).
    request_timeout_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.device.startswith("cuda"):
            import torch  # here: the multi-worker supervisor reads settings but needs no torch

            index = int(self.device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                found = torch.cuda.device_count()
                raise ValueError(
                    f"device {self.device!r}: torch sees {found} CUDA device(s) here; "
                    "use device 'cpu' or a CUDA build of torch on a GPU machine"
                )
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) must be at least "
                f"max_body_bytes ({self.max_body_bytes})"
            )
        if self.default_samples > self.max_samples:
            raise ValueError(
                f"default_samples ({self.default_samples}) must not exceed "
                f"max_samples ({self.max_samples})"
            )
        return self
