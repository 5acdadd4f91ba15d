"""Task suites, one module each (the format: tasks.py). --suite NAME loads suites/NAME.py."""
