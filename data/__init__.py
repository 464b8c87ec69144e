"""Dialogue datasets: framework YAML files, topics, readers and writers for every format."""
