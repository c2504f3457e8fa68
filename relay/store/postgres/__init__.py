"""The scale-out PostgreSQL backend: any number of relay processes and machines on one database."""
