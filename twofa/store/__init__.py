"""The SQL store: typed models, the engine, migrations and every query, in one package."""
