"""`python -m service` as it served before service/edge/server.py: the same app and settings
under uvicorn's own httptools protocol, with none of service/edge/server.py's limits (the size
and time of a request's headers, the connections) nor its shutdown delay.
bench/http_bench.py --servers ours,stock measures what they cost, side by side.
Run: MCDROPOUT_MODEL_PATH=checkpoints .venv/bin/python bench/stock_server.py
"""

import uvicorn

from service.app import create_app
from service.edge.observability import configure_logging
from service.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http="httptools",
        timeout_keep_alive=settings.keep_alive_seconds,
        log_config=None,
        access_log=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
