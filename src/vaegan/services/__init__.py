"""Servers the project starts and stops itself: detached daemons, a PostgreSQL cluster."""
