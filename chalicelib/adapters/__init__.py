"""Adapters behind the domain ports: the SQL database (SQLite or MySQL), its repositories and migrations."""
