"""alb-pcap: explain load-balancer 502/504/460 errors from packet captures."""

__version__ = "0.1.0"
