"""structlog, configured once from the CLI: a console renderer on a TTY, JSON lines otherwise.

Stdlib loggers (aiomqtt logs to "mqtt") go through the same processors. Context (run, round,
client) is bound with contextvars.
"""

from __future__ import annotations

import functools
import importlib.machinery
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any


def _load_structlog() -> Any:
    """structlog, loaded without rich: structlog.dev imports rich, when it is installed (Flower, textual and many ML
    setups bring it), to format exceptions in its console renderer, which is ~80 modules and a tenth of a
    `fedbus client` process's start; without it a logged exception on a terminal is a plain traceback. rich is
    hidden only while structlog loads; anyone importing it later gets it. Loaded here, where the CLI and the worker
    processes first import structlog (a library user who imports another fedbus module first loads it as usual)."""
    if "structlog" in sys.modules:  # someone else (the app, a library) loaded it first: theirs to set up
        _State.found_loaded = True
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog as loaded
        return loaded
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError meanwhile
    try:
        import structlog as loaded
    finally:
        del sys.modules["rich"]
    return loaded


class _State:
    module: Any = None  # structlog, once something needed it
    pending: Callable[[Any], None] | None = None  # configure()'s settings, applied when structlog loads
    configured = False  # configure() was called (the CLI, a worker process, an app)
    found_loaded = False  # structlog was loaded before fedbus needed it: the app's (see as_library)


class _WhenImported:
    """Applies :func:`configure`'s settings the moment anyone imports structlog, not only through this module: a
    plugin (a scenario's ``module:function`` strategy) that does ``import structlog`` and logs gets fedbus's
    JSON lines on stderr, not structlog's defaults on stdout. Steps aside once structlog has loaded."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "structlog":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenConfigure(spec.loader)  # type: ignore[assignment]  # a loader by protocol
        return spec


class _ThenConfigure:
    """structlog's own loader, and then :func:`configure`'s settings. The module keeps its own loader (resources,
    source lines): this one only stands in for the one call that runs it."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _unhook()
        if _State.pending is not None and _State.module is None:
            _loaded()  # finds it in sys.modules, where the import system put it before running it


_HOOK = _WhenImported()


def _unhook() -> None:
    # a new list, not remove(): a thread importing meanwhile goes on through the list it is reading
    sys.meta_path = [finder for finder in sys.meta_path if finder is not _HOOK]


def _loaded() -> Any:
    """structlog, loaded (on first use) and configured as :func:`configure` last asked."""
    if _State.module is None:
        _State.module = _load_structlog()
    if _State.pending is not None:
        apply, _State.pending = _State.pending, None
        apply(_State.module)
    return _State.module


__all__ = ["configure", "get_logger", "structlog"]
if TYPE_CHECKING:
    import structlog
else:
    def __getattr__(name: str) -> Any:
        # `from fedbus.logs import structlog` (the runtime's modules): loaded and configured then. Nothing loads it
        # before something logs: structlog brings asyncio, ssl and ~60 other modules, a few hundredths of a second
        # of every command's start (`fedbus run --simulate` and `validate` never log through it)
        if name == "structlog":
            return _loaded()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _LazyLogger:
    """A structlog logger that loads structlog when first used."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(_loaded().get_logger(self._name), attr)


def get_logger(name: str) -> Any:
    return _LazyLogger(name) if _State.module is None else _State.module.get_logger(name)


def _shared(structlog: Any) -> list[Any]:
    return [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True)]


def _renderer(structlog: Any, json_lines: bool) -> Any:
    return structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)


def _configure_structlog(json_lines: bool, structlog: Any) -> None:
    structlog.configure(
        processors=[*_shared(structlog), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class _Formatter(logging.Formatter):
    """structlog's ProcessorFormatter (JSON lines or the console renderer), made when the first record is
    formatted: a process that never logs never loads structlog."""

    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self._json_lines = json_lines
        self._formatter: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self._formatter is None:
            structlog = _loaded()
            self._formatter = structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_shared(structlog),
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                            _renderer(structlog, self._json_lines)])
        return self._formatter.format(record)


def as_library() -> None:
    """fedbus called as a library (``fedbus.run``) by an app that set nothing up through :func:`configure`: unless
    the app uses structlog itself, fedbus's records go to the standard ``logging`` tree (loggers ``fedbus.*``:
    the app's handlers and levels decide; without any, Python prints warnings and errors to stderr), not to
    structlog's default printer, which writes every level to stdout."""
    if _State.configured:  # configure() ran: the CLI's (or the app's own call of it) settings stand
        return
    if _State.found_loaded or ("structlog" in sys.modules and _State.module is None):  # the app's own structlog,
        return  # configured or not: its set-up is the process's (fedbus's records then go where the app's go)
    _State.pending = _configure_library
    if _State.module is not None or "structlog" in sys.modules:
        _loaded()
    elif _HOOK not in sys.meta_path:
        sys.meta_path = [_HOOK, *sys.meta_path]


def _configure_library(structlog: Any) -> None:
    if structlog.is_configured():  # the app's own set-up
        return
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.stdlib.filter_by_level,
                    structlog.dev.ConsoleRenderer(colors=False, pad_event=0)],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure(level: str = "INFO", json_lines: bool | None = None) -> None:
    """Configure structlog and stdlib logging, to stderr. structlog itself is configured when it loads (at once
    if it already has)."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    _State.configured = True
    _State.pending = functools.partial(_configure_structlog, json_lines)
    if _State.module is not None or "structlog" in sys.modules:
        _loaded()
    elif _HOOK not in sys.meta_path:
        sys.meta_path = [_HOOK, *sys.meta_path]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(json_lines))
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
    """aiomqtt's errors, but not paho's socket failures: a connection that drops (a modelled crash, a broker
    restart) is fedbus's to report, in events.jsonl and in its own warning, and `--quiet` promises one line."""

    SAID_BY_FEDBUS = ("failed to receive on socket", "timeout on socket")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR and not str(record.msg).startswith(self.SAID_BY_FEDBUS)
