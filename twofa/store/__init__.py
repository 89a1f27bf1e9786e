"""The SQL store: typed models, the engine, migrations and every query (one <what>_queries.py
per concern), in one package."""
