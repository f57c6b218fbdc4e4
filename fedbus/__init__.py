"""fedbus: federated textual-gradient prompt optimization over a real MQTT bus."""

__version__ = "0.1.0"
