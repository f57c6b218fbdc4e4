"""What a run leaves behind: events.jsonl, summary.json, the progress table, and comparisons of runs."""
