"""structlog, configured once from the CLI: a console renderer on a TTY, JSON lines otherwise.

Stdlib loggers (aiomqtt logs to "mqtt") go through the same processors. Context (run, round,
client) is bound with contextvars.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any


def _load_structlog() -> Any:
    """structlog, loaded without rich: structlog.dev imports rich, when it is installed (Flower, textual and many ML
    setups bring it), to format exceptions in its console renderer, which is ~80 modules and a tenth of a
    `fedbus client` process's start; without it a logged exception on a terminal is a plain traceback. rich is
    hidden only while structlog loads; anyone importing it later gets it. Loaded here, where the CLI and the worker
    processes first import structlog (a library user who imports another fedbus module first loads it as usual)."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog as loaded
        return loaded
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError meanwhile
    try:
        import structlog as loaded
    finally:
        del sys.modules["rich"]
    return loaded


if TYPE_CHECKING:
    import structlog
else:
    structlog = _load_structlog()


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def configure(level: str = "INFO", json_lines: bool | None = None) -> None:
    """Configure structlog and stdlib logging, to stderr."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiomqtt warns "There are N pending publish calls" for every pipelined publish past 10. A filter, not a
    # level: importing aiomqtt (after this, in most processes) sets its logger's level back to WARNING.
    mqtt = logging.getLogger("mqtt")
    for old in [f for f in mqtt.filters if isinstance(f, _ErrorsOnly)]:
        mqtt.removeFilter(old)
    mqtt.addFilter(_ErrorsOnly())


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR
