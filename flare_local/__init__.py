"""flare_local: a whole project on this machine, for trying jobs and the tools.

``flare poc`` (:mod:`flare_local.poc`) provisions a throw-away project and runs its server
and sites on 127.0.0.1 until Ctrl-C; ``flare simulate`` (:mod:`flare_local.simulate`) runs
one job end to end on such a project and stops everything. Both compose the other
packages: provisioning, the ``flare server`` and ``flare site`` processes, and the admin
Session with the shell's renderers; nothing in the server, site or admin packages imports
this one.
"""
