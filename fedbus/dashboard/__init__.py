"""The live dashboard: a pure view model folded from the run's event records, and its web server.

``state`` and ``metrics`` are pure (stdlib only); ``web`` is the one module that imports aiohttp; ``live``
feeds a running ``fedbus run`` into it, ``observer`` a run hosted elsewhere (read-only MQTT).
"""
