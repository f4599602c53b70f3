"""What a report measures: the checkpoint, the test images, the MC passes and their seeds."""

from dataclasses import dataclass
from pathlib import Path

from training.mc import BLOCK


@dataclass(frozen=True)
class ReportConfig:
    checkpoint: Path
    out: Path | None = None  # default: <checkpoint stem>.report/ beside the checkpoint
    data_dir: Path | None = None
    limit: int | None = None  # the first N test images (and at most N of each OOD set)
    samples: tuple[int, ...] = (10, 30, 100, 300)
    seed: int = 0
    block: int = BLOCK  # images per seeded MC request (training.mc)

    def __post_init__(self) -> None:
        if not self.samples or any(n < 1 for n in self.samples):
            raise ValueError(f"samples must be positive integers, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")

    @property
    def folder(self) -> Path:
        return self.out or self.checkpoint.with_name(self.checkpoint.stem + ".report")

    @property
    def reference_samples(self) -> int:
        """N for error detection, shift and OOD: 100 if asked for, else the largest."""
        return 100 if 100 in self.samples else max(self.samples)
