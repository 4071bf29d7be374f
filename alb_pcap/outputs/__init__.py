"""Outputs: the terminal report, the HTML report, JSON/NDJSON/CSV records, pcap excerpts."""
