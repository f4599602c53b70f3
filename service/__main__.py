"""python -m service: serve the checkpoint(s) named by the MCDROPOUT_* settings with uvicorn."""

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from service.observability import configure_logging
from service.settings import Settings


class Server(uvicorn.Server):
    """uvicorn's server, but SIGTERM first turns readiness to 503, and a graceful stop exits 0
    (uvicorn re-raises the signal once it has stopped, which ends the process with 143)."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None]) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C stops without waiting
        else:
            self.should_exit = True


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # keep the JSON logging set up above
        "access_log": False,  # service.access logs each request, with its id
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
    if settings.workers > 1:
        # Several processes: uvicorn's supervisor imports the app in each of them.
        uvicorn.run("service.app:create_app", factory=True, workers=settings.workers, **options)
        return
    from service.app import create_app  # here: the multi-worker supervisor never loads torch

    app = create_app(settings)
    registry = app.state.registry

    def reload_on_sighup(sig: int, frame: FrameType | None) -> None:
        # Off the signal handler: loading reads and verifies files.
        threading.Thread(target=registry.load, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, reload_on_sighup)
    Server(uvicorn.Config(app, **options), registry.drain).run()


if __name__ == "__main__":
    main()
