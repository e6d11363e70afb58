"""Qt widgets: they build the view and wire events; the engine does the work."""
