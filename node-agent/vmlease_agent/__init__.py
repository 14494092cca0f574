"""vmlease node agent: the lease engine, the daemon around it, its local API and CLI."""

__version__ = "0.1.0"
