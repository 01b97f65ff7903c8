"""Local stand-ins for external services, speaking their real wire formats over 127.0.0.1."""
