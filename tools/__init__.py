"""The project's training and data scripts (scenes for the demo model and the drag benchmark); not part of the pack."""
