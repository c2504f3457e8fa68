"""The embedded SQLite backend: one writer thread with group commit, a reader beside it."""
