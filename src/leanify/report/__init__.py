"""Reports: the terminal view now; HTML and JSON records as commands grow."""
