"""The deterministic simulator: the real aggregator core and client logic in virtual time.

``fedbus run --simulate`` drives the same :class:`~fedbus.aggregator.rounds.RoundAggregator` /
:class:`~fedbus.aggregator.stream.StreamAggregator` and the same :class:`~fedbus.client.core.ClientCore`
as a run over MQTT, through the same codec and the same link fault plan, but with a discrete-event
loop instead of asyncio and an in-memory broker instead of rumqttd or mosquitto. Nothing reads a
clock or a global random source, so the same scenario and seed give a byte-identical events.jsonl.
"""
