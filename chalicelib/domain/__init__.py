"""The domain: records and the rules on them, and the ports (repository Protocols, the unit of work)
that services depend on instead of a database."""
