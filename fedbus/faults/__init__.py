"""The fault plan: what happens to each client's messages and when it fails. Pure and seeded."""
