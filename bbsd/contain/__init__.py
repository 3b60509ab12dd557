"""The supervised child processes that contain what may crash or hang: their start, their pipes and messages.

Invariant: a child is handed the settings the daemon validated; a crash, hang or OOM in it costs one photo,
never the service.
"""
