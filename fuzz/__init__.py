"""Fuzzing harness for vpncrypt (see fuzz/README.md). Not part of the installed package."""
