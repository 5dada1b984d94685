"""One module per ``rac`` subcommand; each has ``add_parser(subparsers)`` setting ``func`` (args -> exit code)."""
