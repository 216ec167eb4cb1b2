"""HTTP layer: ``create_app(settings)`` builds the FastAPI application."""
