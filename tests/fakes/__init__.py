"""Fakes for the I/O seams: scripted stand-ins that tests drive and inspect (no sockets)."""
