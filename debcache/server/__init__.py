"""The HTTP server: app factory and routes (app.py), live serving (live.py), admin (admin.py)."""
