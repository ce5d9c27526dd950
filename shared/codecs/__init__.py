"""Sans-I/O codecs: client dialects and provider protocols <-> canonical events."""
