"""The client role: its core (decisions), its session (the protocol side) and its local optimizers. Pure."""
