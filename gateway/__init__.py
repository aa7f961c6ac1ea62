"""Offline-tolerant mobile sync gateway in front of Apache Kafka."""

__version__ = "0.1.0"
