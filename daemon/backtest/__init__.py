"""The backtester: replay prices through the engine the daemon runs, on simulated pools."""
