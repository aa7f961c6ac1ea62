"""
Testing toolkit: real Kafka and Redis servers on loopback, for tests, benchmarks and `make run`.
"""
