"""The long fuzz run of the property tests (run.py); only its smoke mode runs under pytest."""
