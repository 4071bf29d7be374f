"""The capture lab: real proxies misbehaving in network namespaces, mirrored like AWS Traffic Mirroring.

See README.md in this directory.
"""
