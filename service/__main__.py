"""python -m service: serve the checkpoint(s) named by the MCDROPOUT_* settings with uvicorn."""

import uvicorn

from service.settings import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
    )


if __name__ == "__main__":
    main()
