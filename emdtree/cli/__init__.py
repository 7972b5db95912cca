"""The emdtree command line (``python -m emdtree``, the ``emdtree`` script)."""
