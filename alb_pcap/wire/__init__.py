"""Wire decoding: capture files, TCP reassembly, HTTP/1.x, clocks, and the pipeline that wires them."""
