"""kliko-async: run chains of Kliko containers as a concurrent DAG with a content-addressed cache."""

__version__ = "0.1.0"
