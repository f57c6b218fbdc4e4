"""The asyncio edges: broker, MQTT bus, aggregator node, runs. Imports the libraries the core must not."""
