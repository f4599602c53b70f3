"""python -m service: serve the checkpoints of the MCDROPOUT_* settings (service/edge/server.py)."""

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

from uvicorn.supervisors import Multiprocess

from service.edge.observability import configure_logging
from service.edge.server import Config, Server
from service.settings import Settings

if TYPE_CHECKING:
    from service.inference.batcher import Runner


def main(runner: "Runner | None" = None) -> None:
    """Serves; one worker computes its batches with `runner` if given (bench/gil_handoffs.py)."""
    settings = Settings()
    configure_logging(settings.log_level)
    if settings.workers > 1:
        # Several processes, each building the app from the same settings (the environment).
        config = Config("service.app:create_app", settings, factory=True)
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    from service.app import create_app  # here: the multi-worker supervisor never loads torch

    app = create_app(settings, runner)
    registry = app.state.registry

    def reload_on_sighup(sig: int, frame: FrameType | None) -> None:
        # Off the signal handler: loading reads and verifies files.
        threading.Thread(target=registry.load, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, reload_on_sighup)
    Server(Config(app, settings), registry.drain).run()


if __name__ == "__main__":
    main()
