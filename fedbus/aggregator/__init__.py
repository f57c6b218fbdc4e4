"""The aggregator: a synchronous state machine and the aggregation strategies. Pure: no I/O."""
