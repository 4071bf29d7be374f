"""alb-pcap: explain load-balancer 502/504/460 errors from packet captures."""

from . import _compiled

__version__ = "0.1.0"
_compiled.install()
