"""The `audiofind` command line: one small module per command group, each thin over the Python API.

`main` holds the library commands (index, search, similar, tags, info) and assembles the app, `failures`
how they fail (one line, an exit status);
`data`, `evaluate`, `train` and `serve` register the research and server commands. Heavy imports
happen inside commands, so `audiofind --help` stays quick. The CLI may import every other package;
nothing imports the CLI. The console script is `audiofind.cli.main:app`; this file imports nothing, so
`python -m audiofind.cli.evaluate` and friends run without a second import of themselves.
"""
