"""The models a server holds: loaded once, off the event loop, then read by every request."""

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from models.cnn import CNNConfig
from models.engine import Engine, engine_for
from models.networks import Config
from service.api.schemas import Architecture, Calibration, InputSpec, ModelCard, SampleLimits
from service.edge.observability import Metrics
from service.inputs.pixels import FEATURES, SIDE
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


def architecture(config: Config) -> Architecture:
    sizes, dropout = list(config.sizes), list(config.dropout)
    if isinstance(config, CNNConfig):
        return Architecture(
            kind=config.kind,
            layer_sizes=sizes,
            dropout=dropout,
            variant=None,
            conv_channels=list(config.channels),
            convs_per_block=config.convs_per_block,
        )
    return Architecture(
        kind=config.kind,
        layer_sizes=sizes,
        dropout=dropout,
        variant=config.variant,
        conv_channels=[],
        convs_per_block=None,
    )


def model_card(name: str, ckpt: Checkpoint, settings: Settings) -> ModelCard:
    meta = ckpt.metadata
    return ModelCard(
        name=name,
        version=ckpt.version,
        architecture=architecture(ckpt.config),
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


@dataclass(frozen=True)
class LoadReport:
    loaded: list[str]  # new models, or new versions of served ones
    unchanged: list[str]  # the same bytes as the version already served
    refused: dict[str, str]  # name -> why; a served version of it keeps serving
    removed: list[str]  # served, but their file is gone


class Registry:
    """The served models. A load swaps in a new dict at once: a request that already holds a
    model finishes on it, and the next one gets the new version."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.reason = "loading models"
        self._loaded = threading.Event()
        self._lock = threading.Lock()  # one load at a time
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

    def load(self) -> LoadReport:
        """(Re)load the checkpoints of the configured path, and nothing else. A checkpoint that
        fails verification is refused and logged, and the version it would replace keeps
        serving; a model whose file is gone stops being served."""
        with self._lock:
            current, models = self.models, {}
            loaded, unchanged, refused = [], [], {}
            files = checkpoint_files(self.settings.model_path)
            if not files:
                log.error("no checkpoint (*.safetensors) at %s", self.settings.model_path)
            for file in files:
                name, old = file.stem, current.get(file.stem)
                try:
                    served = self._load_one(file)
                except Exception as e:
                    refused[name] = str(e) if isinstance(e, CheckpointError) else "failed to load"
                    self.metrics.load_failures.inc()
                    if old is not None:
                        models[name] = old
                    continue
                if old is not None and old.checkpoint.sha256 == served.checkpoint.sha256:
                    models[name] = old
                    unchanged.append(name)
                    continue
                models[name] = served
                loaded.append(name)
                log.info("serving %s version %s from %s", name, served.version, file)
            self.models = models
            self._publish(current, models)
            # Clients see why, never where: no file paths in the reason.
            if not self._draining:
                failed = "no valid checkpoint could be loaded (see server log)"
                self.reason = "" if models else failed
            self._loaded.set()
            removed = sorted(current.keys() - models.keys())
            return LoadReport(loaded, unchanged, refused, removed)

    def _load_one(self, file: Path) -> ServedModel:
        try:
            ckpt = load_checkpoint(file)
            if ckpt.config.num_inputs != FEATURES:
                # The routes' input rule is the 28x28 gray image's (service/inputs/pixels.py).
                raise CheckpointError(
                    f"{file.name}: takes {ckpt.config.num_inputs} inputs; this service "
                    f"serves models of {FEATURES} pixels ({SIDE}x{SIDE}, gray)"
                )
            # With an inference process, the engine is a CPU copy that the child moves.
            device = "cpu" if self.settings.inference == "process" else self.settings.device
            engine = engine_for(ckpt, self.settings.mc_chunk_rows, device)
            card = model_card(file.stem, ckpt, self.settings)
        except CheckpointError as e:
            log.error("refused checkpoint %s: %s", file, e)
            raise
        except Exception:  # a bug, not a bad file: keep serving the others, keep the trace
            log.exception("could not load checkpoint %s", file)
            raise
        return ServedModel(file.stem, ckpt, engine, card)

    def _publish(self, before: dict[str, ServedModel], after: dict[str, ServedModel]) -> None:
        for name, served in before.items():
            if after.get(name) is not served:
                self.metrics.model_info.remove(name, served.version)
        for name, served in after.items():
            self.metrics.model_info.labels(name, served.version).set(1)
