"""Herald's worker: consumes producer events, stores them, publishes live frames, answers requests."""
