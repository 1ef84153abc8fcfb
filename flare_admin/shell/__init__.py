"""``flare admin``: the interactive admin shell and one-shot admin CLI over the Session.

Layers, each in its own module: :mod:`params` (a command's grammar and parsing),
:mod:`registry` (the one table of commands), :mod:`commands` (every command, wrapping a
Session method), :mod:`context` (what a command can reach), :mod:`dispatch` (run a line,
print a table or a JSON document, map failures to exit codes), :mod:`render` and
:mod:`theme` (rich renderables), :mod:`live` (the live job view), :mod:`completion` and
:mod:`repl` (the prompt_toolkit loop), :mod:`reference` (help and docs/shell.md), and
:mod:`cli` (``main(argv)``). Nothing here talks to the server except through the Session.
"""
