"""The web chat page served at ``/`` (static files in ``static/``)."""
