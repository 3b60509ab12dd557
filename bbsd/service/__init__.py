"""Running backstage: the daemon, its status file, systemd notifications, the unit, and the journal of photos in
hand.
"""
