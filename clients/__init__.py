"""The client side of fedbus: the worker that joins a federation and optimizes its prompt locally.

Run it on any machine that reaches the broker: ``fedbus client --broker mqtt://host:1883 --run RUN``
or ``python -m clients --broker ... --run ...``.
"""
