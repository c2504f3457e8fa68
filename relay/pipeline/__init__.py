"""Sans-IO decisions: derive events, route them, build what is sent, decide what comes next."""
