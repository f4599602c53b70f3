"""The models a server holds: loaded once, off the event loop, then read by every request."""

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from models.engine import Engine, engine_for
from service.observability import Metrics
from service.pixels import FEATURES, SIDE
from service.schemas import Architecture, Calibration, InputSpec, ModelCard, SampleLimits
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    name: str
    checkpoint: Checkpoint
    engine: Engine
    card: ModelCard

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def labels(self) -> tuple[str, ...]:
        return self.checkpoint.labels

    @property
    def abstain_below(self) -> float | None:
        return self.card.calibration.abstain_below_agreement if self.card.calibration else None


def model_card(name: str, ckpt: Checkpoint, settings: Settings) -> ModelCard:
    meta = ckpt.metadata
    return ModelCard(
        name=name,
        version=ckpt.version,
        architecture=Architecture(
            layer_sizes=list(ckpt.config.sizes),
            dropout=list(ckpt.config.dropout),
            variant=ckpt.config.variant,
        ),
        labels=list(ckpt.labels),
        input=InputSpec(
            shape=[FEATURES],
            also_accepts=[SIDE, SIDE],
            range=[0.0, 1.0],
            description=str(meta.get("preprocessing", {}).get("scaling", "")),
        ),
        metrics=dict(meta.get("metrics", {})),
        sha256=ckpt.sha256,
        created_at=str(meta.get("created_at", "")),
        samples=SampleLimits(default=settings.default_samples, maximum=settings.max_samples),
        calibration=Calibration.model_validate(meta["calibration"])
        if "calibration" in meta
        else None,
    )


def checkpoint_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.glob("*.safetensors"))
    return [path] if path.is_file() else []


class Registry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.reason = "loading models"
        self._loaded = threading.Event()
        self._draining = False

    @property
    def serving(self) -> bool:
        """Models are loaded: requests are answered, while draining too."""
        return self._loaded.is_set() and bool(self.models)

    @property
    def ready(self) -> bool:
        """For readiness probes: serving, and not shutting down."""
        return self.serving and not self._draining

    def drain(self) -> None:
        """Shutting down: readiness says 503 so that load balancers stop sending requests;
        requests already in flight are still served."""
        self._draining = True
        self.reason = "shutting down"

    def load(self) -> None:
        """Load every checkpoint; a bad one is refused and logged, the good ones are served."""
        files = checkpoint_files(self.settings.model_path)
        if not files:
            log.error("no checkpoint (*.safetensors) at %s", self.settings.model_path)
        for file in files:
            try:
                ckpt = load_checkpoint(file)
                engine = engine_for(ckpt, self.settings.mc_chunk_rows)
                card = model_card(file.stem, ckpt, self.settings)
            except CheckpointError as e:
                log.error("refused checkpoint %s: %s", file, e)
                self.metrics.load_failures.inc()
                continue
            except Exception:  # a bug, not a bad file: keep serving the others, keep the trace
                log.exception("could not load checkpoint %s", file)
                self.metrics.load_failures.inc()
                continue
            self.models[file.stem] = ServedModel(file.stem, ckpt, engine, card)
            self.metrics.model_info.labels(file.stem, ckpt.version).set(1)
            log.info("serving %s version %s from %s", file.stem, ckpt.version, file)
        # Clients see why, never where: no file paths in the reason.
        if not self._draining:
            self.reason = (
                "" if self.models else "no valid checkpoint could be loaded (see server log)"
            )
        self._loaded.set()
