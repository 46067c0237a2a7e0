"""One module per `primesvt` subcommand (see cli.py)."""
