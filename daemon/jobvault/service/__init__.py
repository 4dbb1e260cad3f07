"""The daemon's lifecycle (start-up, schedule, signals, shutdown), systemd and launchd."""
